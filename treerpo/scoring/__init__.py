"""Scoring: leaf rewards, node values and sibling advantages (DESIGN steps 7-9).

- `answers`: the final `\\boxed{}` answer of a completion, reference answers of datasets.
- `verify`: `is_correct` / `answers_equivalent` through math-verify, under a timeout.
- `rewards`: the default verified-answer reward and `MODULE:FUNCTION` plug-ins.
- `values`: pure functions from leaf rewards to node values and advantages.
- `scorer`: `score_trees`, the whole step over many trees, in worker processes.
"""

from treerpo.scoring.answers import extract_boxed, reference_from_gsm8k, reference_from_solution
from treerpo.scoring.rewards import (
    DEFAULT_REWARD_FN,
    CheckedRewardFn,
    load_reward_fn,
    resolve_reward_fn,
    verified_answer_reward,
)
from treerpo.scoring.scorer import ScoreStats, score_trees
from treerpo.scoring.values import apply_scores, compute_advantages, compute_values
from treerpo.scoring.verify import answers_equivalent, is_correct

__all__ = [
    "DEFAULT_REWARD_FN",
    "CheckedRewardFn",
    "ScoreStats",
    "answers_equivalent",
    "apply_scores",
    "compute_advantages",
    "compute_values",
    "extract_boxed",
    "is_correct",
    "load_reward_fn",
    "reference_from_gsm8k",
    "reference_from_solution",
    "resolve_reward_fn",
    "score_trees",
    "verified_answer_reward",
]
