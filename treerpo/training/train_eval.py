"""Greedy evaluation during training (`train --eval-dataset D --eval-steps N --eval-limit K`).

Every N optimizer steps and after the last one, the main process evaluates the policy being
trained with `treerpo.eval.runner.run_eval`, the code `treerpo eval dataset --mode greedy` runs:
the first K problems of D, greedy decoding with the train run's prompt settings and path budget
(`--max-new-tokens`). Each evaluation is an eval run of its own in the store, named
`TRAIN_RUN-eval-step-S`, so `treerpo eval show` lists its records. The figures are logged as
TRL logs its eval metrics: a separate `metrics.jsonl` line per evaluation with `eval_`-prefixed
names (`eval_accuracy`, `eval_num_problems`, `eval_mean_completion_tokens`, `eval_seconds`)
beside `step` and `epoch`.

The engine is a Hugging Face engine over the trainer's own model object (no copy), or the chained
run's vLLM engine, whose weights follow every update already.
"""

from __future__ import annotations

from typing import Any

from treerpo.config import TrainConfig
from treerpo.eval.runner import EvalConfig, load_eval_problems, run_eval
from treerpo.problems.sources import ProblemSet
from treerpo.store.database import Store


class TrainEvaluator:
    """Evaluates the policy at the steps `config.eval` asks for; see the module docstring."""

    def __init__(self, *, config: TrainConfig, run_name: str) -> None:
        if config.eval is None:
            raise ValueError("TrainEvaluator needs config.eval")
        self.config = config
        self.run_name = run_name
        self.steps = config.eval.steps
        self.base = EvalConfig(
            run_name=run_name, benchmark=config.eval.data.dataset, mode="greedy",
            max_new_tokens=config.tree.max_new_tokens,
            batch_size=config.engine.generation_batch_size, data=config.eval.data,
            engine=config.engine, prompt=config.prompt)
        # Bad eval data fails here, before any model loads (exit 2).
        self.problem_set: ProblemSet = load_eval_problems(self.base)

    def due(self, *, step: int, total_steps: int) -> bool:
        return step % self.steps == 0 or step == total_steps

    def evaluate(self, *, store: Store, model, tokenizer, engine, step: int,
                 epoch: float) -> dict[str, Any]:
        """Greedy accuracy of the current policy; `engine` None means an HF engine over
        `model`. Returns the metrics line."""
        config = self.base.model_copy(update={"run_name": f"{self.run_name}-eval-step-{step}"})
        was_training = model.training
        if engine is None:
            from treerpo.engines.hf import HFEngine

            engine = HFEngine(model, tokenizer, seed=self.config.engine.seed,
                              batch_size=self.config.engine.generation_batch_size)
        try:
            summary = run_eval(store=store, engine=engine, tokenizer=tokenizer, config=config,
                               problem_set=self.problem_set)
        finally:
            model.train(was_training)
        greedy = summary.greedy
        assert greedy is not None  # mode "greedy"
        return {
            "step": step, "epoch": epoch, "eval_accuracy": greedy.accuracy,
            "eval_num_problems": greedy.num_problems,
            "eval_mean_completion_tokens": greedy.mean_completion_tokens,
            "eval_seconds": summary.seconds, "eval_run": summary.run_name,
        }
