"""Scoring: leaf rewards, node values and sibling advantages (DESIGN steps 7-9).

- `answers`: the final `\\boxed{}` answer of a completion, reference answers of datasets.
- `verify`: `is_correct` / `answers_equivalent` through math-verify, under a timeout.
- `rewards`: the default verified-answer reward and `MODULE:FUNCTION` plug-ins.
- `values`: pure functions from leaf rewards to node values and advantages.
- `scorer`: `score_trees`, the whole step over many trees, in worker processes.

The names below load their module on first use: `answers` is imported by problem loading (and so
by the CLI's startup), which should not pay for math-verify and sympy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from treerpo.scoring.answers import (
        extract_boxed,
        reference_from_gsm8k,
        reference_from_solution,
    )
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

_LAZY = {
    "extract_boxed": "answers", "reference_from_gsm8k": "answers",
    "reference_from_solution": "answers",
    "DEFAULT_REWARD_FN": "rewards", "CheckedRewardFn": "rewards", "load_reward_fn": "rewards",
    "resolve_reward_fn": "rewards", "verified_answer_reward": "rewards",
    "ScoreStats": "scorer", "score_trees": "scorer",
    "apply_scores": "values", "compute_advantages": "values", "compute_values": "values",
    "answers_equivalent": "verify", "is_correct": "verify",
}

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
