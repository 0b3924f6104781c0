r"""The built-in dataset `arith-long`: `arith`'s problems as long chains, for mid-chain mistakes.

The same generator as `arith` (`treerpo.problems.arith`): a running value, operations applied
left to right, told as an expression or a story, a worked solution of one line per operation and
the final answer boxed. Only the difficulty differs: 10-14 operations, so a worked solution runs
84-149 tokens (median 121) of the shipped `arith-long-tiny` tokenizer (one token per digit), and
small numbers (operands up to 10, multipliers up to 4, so every value stays within 1..40; about
five operations in six add or subtract). Each line is easy and the chain is long: a policy gets
most lines right and fails a problem by one wrong line (a slip of arithmetic, or a value or an
operand copied wrongly) anywhere along the chain (the shipped policy's first wrong greedy line
falls in the first third of the lines for 43% of its wrong answers, later for the rest), so the
decisions that matter often lie deep in a long prefix, where TreeRPO's splits give credit and a
whole-answer reward does not.

Splits: `train` 20,000 rows and `test` 1,000, seed 0, disjoint as in `arith` (train drops every
chain of the test split). The dataset's name is part of the generator's random streams, so its
problems are drawn apart from `arith`'s.
"""

from __future__ import annotations

from typing import Any

from treerpo.problems.arith import ArithDataset

ARITH_LONG = ArithDataset(
    name="arith-long",
    train_size=20_000,
    test_size=1_000,
    seed=0,
    min_ops=10,
    max_ops=14,
    max_operand=10,
    max_multiplier=4,
)


def load_arith_long_split(split: str) -> list[dict[str, Any]]:
    """The built-in `arith-long` dataset's loader: `train` (20,000 rows) or `test` (1,000 rows)."""
    return ARITH_LONG.load_split(split)
