"""Evaluation: greedy and maj@k accuracy, every sample stored (`treerpo eval gsm8k|dataset`).

- `voting`: majority voting over extracted answers, grouped by mathematical equivalence.
- `runner`: the eval run itself (`run_eval`), its config and its summary.
"""

from treerpo.eval.runner import (
    GREEDY_SAMPLING,
    MAJORITY_SAMPLING,
    EvalConfig,
    EvalProgress,
    EvalSummary,
    ModeSummary,
    default_eval_data,
    load_eval_problems,
    run_eval,
)
from treerpo.eval.voting import AnswerGroup, group_answers, majority_vote

__all__ = [
    "GREEDY_SAMPLING",
    "MAJORITY_SAMPLING",
    "AnswerGroup",
    "EvalConfig",
    "EvalProgress",
    "EvalSummary",
    "ModeSummary",
    "default_eval_data",
    "group_answers",
    "load_eval_problems",
    "majority_vote",
    "run_eval",
]
