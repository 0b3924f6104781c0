"""Policies that ship inside the package, so treerpo runs end to end with no download.

`arith-tiny` is a small Qwen2 model with its own tokenizer, warm-started on the built-in `arith`
dataset and stopped half-trained (greedy accuracy in the 30-60% band on held-out problems), so
TreeRPO has something to improve on a CPU in minutes. `arith-tiny/MADE.md` records how it was
made (`scripts/warm_start_arith.py`) and what it scores.
"""

from __future__ import annotations

from pathlib import Path

ARITH_POLICY_NAME = "arith-tiny"


def arith_policy_path() -> Path:
    """The folder of the shipped `arith-tiny` policy: safetensors weights, tokenizer, configs."""
    return Path(__file__).resolve().parent / ARITH_POLICY_NAME
