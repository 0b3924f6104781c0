"""Evaluation: GSM8K greedy and maj@k accuracy, every sample stored (`treerpo eval gsm8k`).

- `voting`: majority voting over extracted answers, grouped by mathematical equivalence.
- `gsm8k`: the eval run itself (`run_gsm8k_eval`), its config and its summary.
"""

from treerpo.eval.gsm8k import (
    GREEDY_SAMPLING,
    MAJORITY_SAMPLING,
    EvalConfig,
    EvalProgress,
    EvalSummary,
    ModeSummary,
    default_eval_data,
    load_eval_problems,
    run_gsm8k_eval,
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
    "run_gsm8k_eval",
]
