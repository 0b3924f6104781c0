"""`treerpo demo`: the whole pipeline, for real, at a small scale, on CPU with no hub.

1. Evaluate the shipped tiny policy of a task (greedy accuracy on held-out problems; the demo
   uses `arith`).
2. Train it with chained TreeRPO (each step grows trees with the current policy, stores and
   scores them, and updates) for a fixed number of steps.
3. Evaluate the trained policy on the same problems.

Everything lands in the store (the runs, every tree, every eval record), so the trees the demo
trained on can be looked at with `treerpo inspect`. The tree, sampling and update settings are the
task's profile (`treerpo.bench.tasks`); they are saved with the runs. `greedy_eval` and
`train_chained` are the two halves `treerpo bench learn` reuses for each of its runs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treerpo.bench.tasks import TaskSettings
from treerpo.config import DataConfig, EngineConfig, OptimizationConfig, TrainConfig
from treerpo.engines import create_engine_from_config
from treerpo.eval.runner import EvalConfig, run_eval
from treerpo.growth.settings import TreeSettings
from treerpo.store import repository
from treerpo.store.database import Store
from treerpo.training.trainer import TrainCallbacks, TrainSummary, run_training

WORKED_LINE = re.compile(r"\d\s*[-+*]\s*\d+\s*=\s*-?\d")


@dataclass(frozen=True)
class GreedyOutcome:
    """Greedy accuracy on the held-out problems, and how many completions work it out."""

    accuracy: float
    # Completions with at least one worked line (`a op b = c`), not only a boxed answer: the
    # shipped arith policy was warm-started on both kinds (see its MADE.md), and which one it
    # picks decides most of its accuracy.
    worked_share: float


@dataclass
class DemoResult:
    accuracy_before: float
    accuracy_after: float
    worked_before: float
    worked_after: float
    steps: int
    seconds: float
    # Mean reward of the leaves no forced alternative led to, per step: the policy's own success
    # rate on its training problems (with forced branching the mean over all leaves is lower).
    on_policy_rewards: list[float]
    tree_ids: list[int]
    output_dir: str
    train_run: str


def is_worked(completion: str) -> bool:
    """Whether a completion shows a line of working (`4 + 9 = 13`) before its answer."""
    return WORKED_LINE.search(completion) is not None


def greedy_eval(
    *, store: Store, model: str, settings: TaskSettings, run_name: str
) -> GreedyOutcome:
    """Greedy accuracy of `model` on the first `settings.eval_problems` test problems of the
    task's dataset, every completion stored under the eval run `run_name`."""
    config = EvalConfig(
        run_name=run_name, benchmark=settings.dataset, mode="greedy",
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.eval_problems,
        data=DataConfig(dataset=settings.dataset, split="test", limit=settings.eval_problems),
        engine=EngineConfig(model=model, engine="hf", torch_dtype="float32", seed=settings.seed,
                            generation_batch_size=settings.eval_problems),
    )
    engine, tokenizer = create_engine_from_config(config.engine)
    summary = run_eval(store=store, engine=engine, tokenizer=tokenizer, config=config)
    greedy = summary.greedy
    assert greedy is not None
    run = repository.find_run(store, config.resolved_run_name())
    completions = [
        completion
        for record in repository.list_eval_results(store, run_id=run.id, include_completions=True)
        for completion in record.completions or []
    ]
    worked = sum(map(is_worked, completions)) / len(completions) if completions else 0.0
    return GreedyOutcome(accuracy=greedy.accuracy, worked_share=worked)


def train_chained(
    *,
    store: Store,
    output_dir: Path,
    settings: TaskSettings,
    run_name: str,
    tree: TreeSettings | None = None,
    optimization: Mapping[str, Any] | None = None,
    engine: Mapping[str, Any] | None = None,
    save_steps: int | None = None,
    on_message: Callable[[str], None] = lambda message: None,
    on_step: Callable[[dict[str, Any]], None] = lambda metrics: None,
) -> TrainSummary:
    """Chained training of the task's shipped policy into `output_dir` (the final model there).
    `tree` replaces the task's tree settings, `optimization` and `engine` change fields of the
    update's and the engine's configuration (a benchmark arm); `save_steps` keeps a checkpoint
    every that many steps (default: one, at the last step)."""
    config = TrainConfig(
        run_name=run_name,
        output_dir=str(output_dir),
        engine=EngineConfig(model=settings.policy, engine="hf", torch_dtype="float32",
                            seed=settings.seed, generation_batch_size=64, **(engine or {})),
        data=DataConfig(dataset=settings.dataset, split="train"),
        tree=tree or settings.tree,
        sampling=settings.sampling,
        optimization=OptimizationConfig(
            per_device_train_batch_size=settings.problems_per_step, max_steps=settings.steps,
            learning_rate=settings.learning_rate, lr_scheduler_type="constant",
            max_grad_norm=1.0, **(optimization or {})),
        # Bit-reproducible: RL turns the last-bit differences of multi-threaded CPU updates into
        # a different policy, and the figures should come out the same on every run.
        full_determinism=True,
        save_steps=save_steps or settings.steps,
        save_total_limit=None if save_steps else 1,
        logging_steps=1,
    )
    return run_training(store=store, config=config,
                        callbacks=TrainCallbacks(on_message=on_message, on_step=on_step))


def run_demo(
    *,
    store: Store,
    output_dir: Path,
    settings: TaskSettings,
    on_message: Callable[[str], None] = lambda message: None,
    on_step: Callable[[int, float], None] = lambda step, on_policy_reward: None,
    tag: str | None = None,
) -> DemoResult:
    """Evaluate, train (`on_step` gets each step's on-policy reward), evaluate again."""
    started = time.perf_counter()
    tag = tag or f"demo-{int(time.time())}"
    on_message(f"evaluating the shipped policy on {settings.eval_problems} held-out "
               f"{settings.dataset} problems")
    before = greedy_eval(store=store, model=settings.policy, settings=settings,
                         run_name=f"{tag}-eval-before")
    on_message(f"greedy accuracy before: {before.accuracy:.1%}; training {settings.steps} steps")
    rewards: list[float] = []

    def record(metrics: dict[str, Any]) -> None:
        rewards.append(float(metrics["on_policy_reward"]))
        on_step(int(metrics["step"]), rewards[-1])

    summary = train_chained(store=store, output_dir=output_dir, settings=settings,
                              run_name=f"{tag}-train", on_message=on_message, on_step=record)
    on_message("evaluating the trained policy")
    after = greedy_eval(store=store, model=str(output_dir), settings=settings,
                        run_name=f"{tag}-eval-after")
    run = repository.find_run(store, summary.run_name)
    return DemoResult(
        accuracy_before=before.accuracy,
        accuracy_after=after.accuracy,
        worked_before=before.worked_share,
        worked_after=after.worked_share,
        steps=summary.steps,
        seconds=time.perf_counter() - started,
        on_policy_rewards=rewards,
        tree_ids=[tree.tree_id for tree in repository.list_trees(store, run_id=run.id)],
        output_dir=str(output_dir),
        train_run=summary.run_name,
    )
