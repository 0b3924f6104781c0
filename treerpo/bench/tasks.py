"""Task profiles: what `treerpo demo` and `treerpo bench learn` train and evaluate, per task.

A task is a built-in dataset and the shipped policy that starts on it. Its profile
(`TaskSettings`) scales DESIGN's tree and sampling settings, made for ~1,000-token math solutions,
down to the task's solutions, and fixes the update's schedule, so the demo and every arm of the
learning benchmark start from the same policy with the same settings. The branching mode and the
number of root children are left to `TreeSettings`' defaults (resample, 4 root children): the
benchmark's `tree-forced` arm changes the branching mode only.

- `arith`: 2-4 operations, worked solutions of ~25-60 tokens (budget 80), decided mostly at the
  first token (answer at once or work it out).
- `arith-long`: 10-14 operations, worked solutions of ~85-150 tokens (budget 256), failed by one
  wrong line somewhere in the middle: where trees should teach more per token than flat GRPO.

Both profiles split by position (threshold 0: at the first delimiter after `min_segment_len`
tokens), not by entropy; each profile's comment says why and what was measured.

A profile also holds the goal `bench learn` checks for it (DESIGN, "Learning").
"""

from __future__ import annotations

from dataclasses import dataclass

from treerpo.errors import BadInputError
from treerpo.growth.settings import SamplingConfig, TreeSettings

TASK_NAMES = ("arith", "arith-long")


@dataclass(frozen=True)
class LearnGoal:
    """The `tree` arm must reach flat GRPO's final mean accuracy within `max_token_fraction` of
    flat's decoded tokens and, when `max_accuracy_deficit` is set, end no lower than flat's final
    accuracy minus that much."""

    max_token_fraction: float
    max_accuracy_deficit: float | None


@dataclass(frozen=True)
class TaskSettings:
    task: str
    dataset: str  # a built-in dataset name: `train` is trained on, `test` evaluated
    policy: str  # folder of the shipped policy every run starts from
    # The completion budget of training (`tree.max_new_tokens`) is also greedy eval's.
    tree: TreeSettings
    sampling: SamplingConfig
    learning_rate: float
    steps: int
    problems_per_step: int
    eval_problems: int
    goal: LearnGoal
    seed: int = 0

    @property
    def max_new_tokens(self) -> int:
        return self.tree.max_new_tokens


def task_settings(task: str) -> TaskSettings:
    """The profile of `task` (one of `TASK_NAMES`); an unknown name is a BadInputError."""
    if task == "arith":
        return _arith()
    if task == "arith-long":
        return _arith_long()
    raise BadInputError(f"unknown task {task!r}; use one of {', '.join(TASK_NAMES)}")


def _sampling() -> SamplingConfig:
    # Plain sampling at 0.7: DESIGN's top_p/top_k/repetition penalty are made for a large
    # model's long tail; a tiny policy's digits repeat by right, and its tail is what it explores.
    return SamplingConfig(temperature=0.7, top_p=1.0, top_k=None, repetition_penalty=1.0)


def _arith() -> TaskSettings:
    from treerpo.policies import arith_policy_path

    # Positional splits, as on arith-long: threshold 0, so a node splits at the first "= " or
    # line break after 12 tokens, at depth < 3; a worked solution (~25-60 tokens) splits once or
    # twice, a bare answer not at all. No coverage children. Entropy would not place splits
    # here: the shipped policy is sure of itself after "= " (top-20 entropy 0.08 nats on
    # average), so at 1.0 entropy splits fired 0.03-0.11 times per tree and the root's children
    # and 8 coverage children (re-sampling the last ~2 lines) carried the signal, at ~2.5x the
    # tokens per tree for the same accuracy (README, "Learning").
    tree = TreeSettings(max_depth=3, min_segment_len=12, entropy_threshold=0.0, entropy_topk=20,
                        coverage_min_chars=40, coverage_children_max=1, max_new_tokens=80,
                        split_delimiters=["= ", "\n"])
    return TaskSettings(
        task="arith", dataset="arith", policy=str(arith_policy_path()), tree=tree,
        sampling=_sampling(), learning_rate=2e-4, steps=120, problems_per_step=16,
        eval_problems=200, goal=LearnGoal(max_token_fraction=0.90, max_accuracy_deficit=0.01))


def _arith_long() -> TaskSettings:
    from treerpo.policies import arith_long_policy_path

    # Positional splits in the middle of the chain, not entropy splits. Measured on the shipped
    # policy (README, "Learning"): 86% of entropy splits (threshold 0.3, segments >= 20 tokens,
    # depth < 5) fell after the chain had already gone wrong, where the policy is unsure because
    # it is lost, so only 9% of the groups below them had mixed rewards. With threshold 0 a
    # node splits at the first "= " or line break after `min_segment_len` tokens: every root
    # chain (~120 tokens) splits after ~40 tokens and each half again after ~40 more (depth < 3):
    # up to 16 leaves per tree that share their first lines. bench learn (3 seeds, 80 steps):
    # 35.7% against flat GRPO's 36.3% at 1.02x its tokens, where the entropy profile ended 3.5
    # points behind flat at equal tokens; the shapes tried are in README, "Learning". No coverage
    # children: a chain that went wrong in its middle cannot be saved by re-sampling its last
    # lines. Learning rate 5e-5: at 2e-4 every arm collapsed (26.5% -> 5-13% in 40 steps).
    tree = TreeSettings(max_depth=3, min_segment_len=40, entropy_threshold=0.0, entropy_topk=20,
                        coverage_min_chars=40, coverage_children_max=1, max_new_tokens=256,
                        split_delimiters=["= ", "\n"])
    return TaskSettings(
        task="arith-long", dataset="arith-long", policy=str(arith_long_policy_path()),
        tree=tree, sampling=_sampling(), learning_rate=5e-5, steps=80, problems_per_step=16,
        eval_problems=200, goal=LearnGoal(max_token_fraction=0.70, max_accuracy_deficit=None))
