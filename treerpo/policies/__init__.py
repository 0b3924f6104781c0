"""Policies that ship inside the package, so treerpo runs end to end with no download.

Each is a small Qwen2 model with its own tokenizer, warm-started on one built-in dataset by
`scripts/warm_start_arith.py` and stopped half-trained (greedy accuracy inside a band on
held-out problems), so TreeRPO has something to improve on a CPU in minutes. `MADE.md` in each
folder records how it was made and what it scores.

- `arith-tiny`, for `arith`: 2-4 operations; half of its warm-start targets were the answer
  alone, so it answers some problems at once (mostly wrong) and works others out.
- `arith-long-tiny`, for `arith-long`: 10-14 operations, always worked out; it fails a problem
  by one wrong line somewhere in a long chain.
"""

from __future__ import annotations

from pathlib import Path

ARITH_POLICY_NAME = "arith-tiny"
ARITH_LONG_POLICY_NAME = "arith-long-tiny"


def policy_path(name: str) -> Path:
    """The folder of the shipped policy `name`: safetensors weights, tokenizer, configs."""
    return Path(__file__).resolve().parent / name


def arith_policy_path() -> Path:
    """The folder of the shipped `arith-tiny` policy."""
    return policy_path(ARITH_POLICY_NAME)


def arith_long_policy_path() -> Path:
    """The folder of the shipped `arith-long-tiny` policy."""
    return policy_path(ARITH_LONG_POLICY_NAME)
