"""`treerpo demo`: the whole pipeline, for real, at a small scale, on CPU with no hub.

1. Evaluate the shipped tiny arithmetic policy (greedy accuracy on held-out `arith` problems).
2. Train it with chained TreeRPO (each step grows trees with the current policy, stores and
   scores them, and updates) for a fixed number of steps.
3. Evaluate the trained policy on the same problems.

Everything lands in the store (the runs, every tree, every eval record), so the trees the demo
trained on can be looked at with `treerpo inspect`. The settings below are the tree and update
settings of the seed scaled to a ~100-token arithmetic solution; they are saved with the runs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from treerpo.config import DataConfig, EngineConfig, OptimizationConfig, TrainConfig
from treerpo.engines import create_engine_from_config
from treerpo.eval.gsm8k import EvalConfig, run_gsm8k_eval
from treerpo.growth.settings import SamplingConfig, TreeSettings
from treerpo.policies import arith_policy_path
from treerpo.store import repository
from treerpo.store.database import Store
from treerpo.training.trainer import TrainCallbacks, run_training

WORKED_LINE = re.compile(r"\d\s*[-+*]\s*\d+\s*=\s*-?\d")


@dataclass(frozen=True)
class DemoSettings:
    steps: int = 120
    eval_problems: int = 200
    problems_per_step: int = 16
    learning_rate: float = 2e-4
    seed: int = 0
    max_new_tokens: int = 80
    # Four children at the root, where the policy picks between answering at once and working
    # the problem out (about even odds for the shipped policy): most trees hold both. Deeper
    # splits where it is unsure: right after "= " (the result digits; its top-20 entropy there
    # reaches ~1-2 nats, elsewhere it is ~0) and at line starts. Coverage children re-sample the
    # last ~2 lines (40 characters), so they differ in the arithmetic, not only in `\boxed`.
    tree: TreeSettings = field(default_factory=lambda: TreeSettings(
        max_depth=5, min_segment_len=4, entropy_threshold=1.0, entropy_topk=20,
        coverage_min_chars=40, coverage_children_max=8, root_children=4, max_new_tokens=80,
        split_delimiters=["= ", "\n"]))
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(
        temperature=0.7, top_p=1.0, top_k=None, repetition_penalty=1.0))


@dataclass(frozen=True)
class GreedyOutcome:
    """Greedy accuracy on the held-out problems, and how many completions work it out."""

    accuracy: float
    # Completions with at least one worked line (`a op b = c`), not only a boxed answer: the
    # shipped policy was warm-started on both kinds (see its MADE.md), and which one it picks
    # decides most of its accuracy.
    worked_share: float


@dataclass
class DemoResult:
    accuracy_before: float
    accuracy_after: float
    worked_before: float | None  # None when the caller supplied `accuracy_before`
    worked_after: float
    steps: int
    seconds: float
    rewards_per_step: list[float]
    tree_ids: list[int]
    output_dir: str
    train_run: str
    tokens_generated: int  # completion tokens of every tree grown (each decoded once)


def is_worked(completion: str) -> bool:
    """Whether a completion shows a line of working (`4 + 9 = 13`) before its answer."""
    return WORKED_LINE.search(completion) is not None


def greedy_eval(
    *, store: Store, model: str, settings: DemoSettings, run_name: str
) -> GreedyOutcome:
    config = EvalConfig(
        run_name=run_name, mode="greedy", max_new_tokens=settings.max_new_tokens,
        batch_size=settings.eval_problems,
        data=DataConfig(dataset="arith", split="test", limit=settings.eval_problems),
        engine=EngineConfig(model=model, engine="hf", torch_dtype="float32", seed=settings.seed,
                            generation_batch_size=settings.eval_problems),
    )
    engine, tokenizer = create_engine_from_config(config.engine)
    summary = run_gsm8k_eval(store=store, engine=engine, tokenizer=tokenizer, config=config)
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


def run_demo(
    *,
    store: Store,
    output_dir: Path,
    settings: DemoSettings = DemoSettings(),
    on_message: Callable[[str], None] = lambda message: None,
    on_step: Callable[[int, float], None] = lambda step, reward: None,
    accuracy_before: float | None = None,
    tag: str | None = None,
) -> DemoResult:
    started = time.perf_counter()
    policy = str(arith_policy_path())
    tag = tag or f"demo-{int(time.time())}"
    worked_before = None
    if accuracy_before is None:
        on_message(f"evaluating the shipped policy on {settings.eval_problems} held-out problems")
        outcome = greedy_eval(store=store, model=policy, settings=settings,
                              run_name=f"{tag}-eval-before")
        before, worked_before = outcome.accuracy, outcome.worked_share
    else:
        before = accuracy_before
    on_message(f"greedy accuracy before: {before:.1%}; training {settings.steps} steps")
    config = TrainConfig(
        run_name=f"{tag}-train",
        output_dir=str(output_dir),
        engine=EngineConfig(model=policy, engine="hf", torch_dtype="float32", seed=settings.seed,
                            generation_batch_size=64),
        data=DataConfig(dataset="arith", split="train"),
        tree=settings.tree,
        sampling=settings.sampling,
        optimization=OptimizationConfig(
            per_device_train_batch_size=settings.problems_per_step, max_steps=settings.steps,
            learning_rate=settings.learning_rate, lr_scheduler_type="constant",
            max_grad_norm=1.0),
        # Bit-reproducible: RL turns the last-bit differences of multi-threaded CPU updates into
        # a different policy, and the demo's figures should come out the same on every run.
        full_determinism=True,
        save_steps=settings.steps,
        save_total_limit=1,
        logging_steps=1,
    )
    rewards: list[float] = []

    def record(metrics: dict) -> None:
        reward = float(metrics.get("mean_reward", 0.0))
        rewards.append(reward)
        on_step(int(metrics.get("step", len(rewards))), reward)

    summary = run_training(store=store, config=config,
                           callbacks=TrainCallbacks(on_message=on_message, on_step=record))
    on_message("evaluating the trained policy")
    after = greedy_eval(store=store, model=str(output_dir), settings=settings,
                        run_name=f"{tag}-eval-after")
    run = repository.find_run(store, config.resolved_run_name())
    trees = repository.list_trees(store, run_id=run.id)
    return DemoResult(
        accuracy_before=before,
        accuracy_after=after.accuracy,
        worked_before=worked_before,
        worked_after=after.worked_share,
        steps=summary.steps,
        seconds=time.perf_counter() - started,
        rewards_per_step=rewards,
        tree_ids=[tree.tree_id for tree in trees],
        output_dir=str(output_dir),
        train_run=config.resolved_run_name(),
        tokens_generated=sum(tree.num_tokens for tree in trees),
    )
