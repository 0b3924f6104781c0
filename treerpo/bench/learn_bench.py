"""`treerpo bench learn`: TreeRPO against GRPO (`rollout=flat`) from the same start, on `arith`.

Both train the shipped tiny arithmetic policy with chained updates (the demo's settings) for the
same number of steps and problems per step, over several seeds. GRPO's samples per problem are
chosen so that both generate about the same number of tokens: a calibration run grows trees for
one step's problems and GRPO gets round(tree tokens per problem / tokens per flat sample) samples
(at least 2). Reported per method: greedy accuracy on the held-out problems after training (mean
and spread over seeds) against the tokens actually generated.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from treerpo.demo import DemoSettings, greedy_eval, run_demo
from treerpo.policies import arith_policy_path
from treerpo.store import repository
from treerpo.store.database import open_store


@dataclass
class MethodResult:
    method: str
    num_generations: int | None
    accuracies: list[float]
    tokens: list[int]
    worked_shares: list[float]  # greedy completions with worked lines, after training

    @property
    def mean_accuracy(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def spread(self) -> float:
        return statistics.pstdev(self.accuracies)

    @property
    def mean_tokens(self) -> float:
        return statistics.fmean(self.tokens)


@dataclass
class LearnBenchResult:
    accuracy_before: float
    worked_before: float
    steps: int
    problems_per_step: int
    seeds: list[int]
    methods: list[MethodResult]


def run_learn_bench(
    *,
    seeds: list[int],
    settings: DemoSettings,
    on_message: Callable[[str], None] = lambda message: None,
) -> LearnBenchResult:
    with tempfile.TemporaryDirectory(prefix="treerpo-learn-") as folder:
        store = open_store(f"sqlite:///{Path(folder) / 'learn.db'}")
        try:
            outcome = greedy_eval(store=store, model=str(arith_policy_path()),
                                  settings=settings, run_name="learn-eval-before")
            before = outcome.accuracy
            on_message(f"greedy accuracy before: {before:.1%}")
            calibration = run_demo(
                store=store, output_dir=Path(folder) / "calibration",
                settings=replace(settings, steps=1, learning_rate=0.0),
                accuracy_before=before, tag="learn-calibration")
            tree_tokens = calibration.tokens_generated / settings.problems_per_step
            sample_tokens = _mean_path_tokens(store, calibration.tree_ids)
            flat_generations = max(2, round(tree_tokens / sample_tokens))
            on_message(f"tree: {tree_tokens:.0f} tokens per problem → GRPO gets "
                       f"{flat_generations} samples per problem")
            methods = [MethodResult("TreeRPO", None, [], [], []),
                       MethodResult("GRPO (flat)", flat_generations, [], [], [])]
            for seed in seeds:
                for method in methods:
                    tree = settings.tree if method.num_generations is None else \
                        settings.tree.model_copy(update={"rollout": "flat",
                                                         "num_generations": flat_generations})
                    tag = f"learn-{'tree' if method.num_generations is None else 'flat'}-{seed}"
                    result = run_demo(store=store, output_dir=Path(folder) / tag,
                                      settings=replace(settings, seed=seed, tree=tree),
                                      accuracy_before=before, tag=tag)
                    method.accuracies.append(result.accuracy_after)
                    method.tokens.append(result.tokens_generated)
                    method.worked_shares.append(result.worked_after)
                    on_message(f"{method.method} seed {seed}: {result.accuracy_after:.1%} after "
                               f"{result.tokens_generated:,} tokens")
        finally:
            store.close()
    return LearnBenchResult(accuracy_before=before, worked_before=outcome.worked_share,
                            steps=settings.steps,
                            problems_per_step=settings.problems_per_step, seeds=seeds,
                            methods=methods)


def _mean_path_tokens(store, tree_ids: list[int]) -> float:
    """Tokens of one free sample from the root, estimated by the mean completion length of the
    calibration trees' root-to-leaf paths (each path is a complete sample)."""
    lengths = [sum(node.num_tokens for node in tree.path(leaf.index)[1:])
               for tree in repository.load_trees(store, tree_ids) for leaf in tree.leaves()]
    return max(1.0, statistics.fmean(lengths)) if lengths else 1.0
