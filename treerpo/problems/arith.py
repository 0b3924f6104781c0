r"""The built-in dataset `arith`: seeded multi-step integer arithmetic with worked solutions.

Each problem is a chain of operations (+, -, *; 2-4 by default) on small positive integers,
applied left to right to a running value, and told either as an expression ("Compute (4 + 9) *
3 - 6.") or as a short story ("Tom has 4 apples. He buys 9 more. ..."). Its worked solution is
one line per operation and the final answer boxed:

    4 + 9 = 13
    13 * 3 = 39
    39 - 6 = 33
    \boxed{33}

It exists so that treerpo can be tried end to end on a CPU in minutes: the shipped tiny policy
(`treerpo.policies`) was warm-started on the `train` split, and a mistake in any one line makes a
wrong answer, so sampled solutions of one problem disagree and give TreeRPO a learning signal.

Difficulty is set by the number of operations (`min_ops`..`max_ops`, drawn uniformly), the size
of the added and subtracted numbers (1..`max_operand`, also the range of the starting value) and
of the multipliers (2..`max_multiplier`). Every intermediate value stays within
1..`max_operand * max_multiplier`: an operation that would leave that range is never drawn. The
defaults (2-4 operations, operands up to 10, multipliers up to 4, values up to 40) are what a
tiny model half-learns in a few CPU minutes, its mistakes mostly one wrong line of arithmetic.

Splits are disjoint: each split has its own random stream (seeded by the dataset name, the split
name and the seed), and the `train` split drops every chain of operations that the `test` split
of the same dataset, seed and difficulty holds, so no test problem appears in train, not even
told the other way (as a story instead of an expression). Within a split every chain appears
once. The dataset name is in the stream so that two built-in datasets of this generator
(`arith`, and `arith-long` in `treerpo.problems.arith_long`) draw different problems even where
their difficulties overlap.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any, Literal

from treerpo.errors import BadInputError

Operator = Literal["+", "-", "*"]

# The built-in `arith` loader's splits: name -> number of rows, at the default difficulty, seed 0.
ARITH_SPLIT_SIZES = {"train": 20_000, "test": 1_000}
ARITH_SEED = 0
# The stream name of `arith`: kept as the generator's default so that its rows never change.
ARITH_DATASET_NAME = "arith"
DEFAULT_MIN_OPS = 2
DEFAULT_MAX_OPS = 4
DEFAULT_MAX_OPERAND = 10
DEFAULT_MAX_MULTIPLIER = 4
# Draws per requested problem before giving up: a small difficulty has few distinct chains.
_MAX_DRAWS_PER_PROBLEM = 50

_NAMES = (
    ("Tom", "He"),
    ("Ana", "She"),
    ("Sam", "He"),
    ("Mia", "She"),
    ("Leo", "He"),
    ("Zoe", "She"),
)
# (one, several) of a kind of thing a story counts.
_ITEMS = (
    ("apple", "apples"),
    ("marble", "marbles"),
    ("coin", "coins"),
    ("sticker", "stickers"),
    ("book", "books"),
    ("card", "cards"),
)
_ADD_SENTENCES = ("{pronoun} buys {operand} more.", "{pronoun} finds {operand} more.")
_SUBTRACT_SENTENCES = ("{pronoun} gives away {operand}.", "{pronoun} loses {operand}.")
_MULTIPLY_SENTENCE = "Then {pronoun_lower} has {operand} times as many."


@dataclass(frozen=True)
class ArithStep:
    """One line of a worked solution: `left operator operand = result`."""

    left: int
    operator: Operator
    operand: int
    result: int

    def line(self) -> str:
        return f"{self.left} {self.operator} {self.operand} = {self.result}"


@dataclass(frozen=True)
class ArithProblem:
    """A chain of operations on a starting value, and how it is told."""

    start: int
    steps: tuple[ArithStep, ...]
    as_story: bool
    story_seed: int  # picks the name, items and sentences of a story

    @property
    def answer(self) -> int:
        return self.steps[-1].result

    @property
    def chain(self) -> tuple[int | str, ...]:
        """What the problem asks, whatever the telling: the start and each operator and operand."""
        return (
            self.start,
            *(part for step in self.steps for part in (step.operator, step.operand)),
        )

    def problem_text(self) -> str:
        return self._story() if self.as_story else f"Compute {self._expression()}."

    def solution_text(self) -> str:
        return "\n".join([*(step.line() for step in self.steps), f"\\boxed{{{self.answer}}}"])

    def _expression(self) -> str:
        """The chain as an expression that standard precedence evaluates left to right."""
        expression = str(self.start)
        previous_operator: Operator | None = None
        for step in self.steps:
            if step.operator == "*" and previous_operator in ("+", "-"):
                expression = f"({expression})"
            expression = f"{expression} {step.operator} {step.operand}"
            previous_operator = step.operator
        return expression

    def _story(self) -> str:
        story_random = random.Random(self.story_seed)
        name, pronoun = story_random.choice(_NAMES)
        item, items = story_random.choice(_ITEMS)
        sentences = [f"{name} has {self.start} {item if self.start == 1 else items}."]
        for step in self.steps:
            if step.operator == "+":
                template = story_random.choice(_ADD_SENTENCES)
            elif step.operator == "-":
                template = story_random.choice(_SUBTRACT_SENTENCES)
            else:
                template = _MULTIPLY_SENTENCE
            sentences.append(
                template.format(
                    pronoun=pronoun, pronoun_lower=pronoun.lower(), operand=step.operand
                )
            )
        sentences.append(f"How many {items} does {pronoun.lower()} have now?")
        return " ".join(sentences)


def generate_arith(
    *,
    split: str,
    num_problems: int,
    dataset: str = ARITH_DATASET_NAME,
    seed: int = ARITH_SEED,
    min_ops: int = DEFAULT_MIN_OPS,
    max_ops: int = DEFAULT_MAX_OPS,
    max_operand: int = DEFAULT_MAX_OPERAND,
    max_multiplier: int = DEFAULT_MAX_MULTIPLIER,
    num_test_problems: int = ARITH_SPLIT_SIZES["test"],
) -> list[dict[str, Any]]:
    """`num_problems` rows `{"problem", "solution", "answer"}` of `split` (see module doc).

    The same arguments give the same rows, and more rows of a split extend fewer (a split's
    first rows do not depend on `num_problems`). `dataset` names the random streams: another
    name draws other problems. `train` excludes every chain of the first `num_test_problems`
    rows of the `test` split of the same dataset, seed and difficulty; other split names are
    only disjoint from each other by chance.
    """
    if num_problems < 1:
        raise BadInputError(f"num_problems must be at least 1, got {num_problems}")
    if not 1 <= min_ops <= max_ops:
        raise BadInputError(f"need 1 <= min_ops <= max_ops, got {min_ops} and {max_ops}")
    if max_operand < 2 or max_multiplier < 2:
        raise BadInputError(
            f"max_operand and max_multiplier must be at least 2, got {max_operand} and "
            f"{max_multiplier}"
        )
    difficulty = {
        "min_ops": min_ops,
        "max_ops": max_ops,
        "max_operand": max_operand,
        "max_multiplier": max_multiplier,
    }
    excluded_chains: set[tuple[int | str, ...]] = set()
    if split == "train":
        excluded_chains = {
            problem.chain
            for problem in _draw_problems(
                dataset=dataset,
                split="test",
                num_problems=num_test_problems,
                seed=seed,
                excluded_chains=set(),
                **difficulty,
            )
        }
    problems = _draw_problems(
        dataset=dataset,
        split=split,
        num_problems=num_problems,
        seed=seed,
        excluded_chains=excluded_chains,
        **difficulty,
    )
    return [
        {
            "problem": problem.problem_text(),
            "solution": problem.solution_text(),
            "answer": str(problem.answer),
        }
        for problem in problems
    ]


@dataclass(frozen=True)
class ArithDataset:
    """A built-in dataset of `generate_arith` rows: its name, split sizes, seed and difficulty."""

    name: str  # what `--dataset` names; also the generator's stream name
    train_size: int
    test_size: int
    seed: int = ARITH_SEED
    min_ops: int = DEFAULT_MIN_OPS
    max_ops: int = DEFAULT_MAX_OPS
    max_operand: int = DEFAULT_MAX_OPERAND
    max_multiplier: int = DEFAULT_MAX_MULTIPLIER

    @property
    def split_sizes(self) -> dict[str, int]:
        return {"train": self.train_size, "test": self.test_size}

    def load_split(self, split: str) -> list[dict[str, Any]]:
        """The rows of `split`, fresh copies of the generated (and cached) ones."""
        if split not in self.split_sizes:
            raise BadInputError(
                f"built-in dataset {self.name!r} has no split {split!r}; "
                f"its splits are {', '.join(self.split_sizes)}"
            )
        # Copies: a caller may change its rows without changing the cached split.
        return [dict(row) for row in _generated_split(self, split)]


ARITH = ArithDataset(
    name=ARITH_DATASET_NAME,
    train_size=ARITH_SPLIT_SIZES["train"],
    test_size=ARITH_SPLIT_SIZES["test"],
)


def load_arith_split(split: str) -> list[dict[str, Any]]:
    """The built-in `arith` dataset's loader: `train` (20,000 rows) or `test` (1,000 rows)."""
    return ARITH.load_split(split)


# Two splits of each built-in dataset (`arith`, `arith-long`), with room for one more.
@functools.lru_cache(maxsize=6)
def _generated_split(dataset: ArithDataset, split: str) -> tuple[dict[str, Any], ...]:
    return tuple(
        generate_arith(
            split=split,
            num_problems=dataset.split_sizes[split],
            dataset=dataset.name,
            seed=dataset.seed,
            min_ops=dataset.min_ops,
            max_ops=dataset.max_ops,
            max_operand=dataset.max_operand,
            max_multiplier=dataset.max_multiplier,
            num_test_problems=dataset.test_size,
        )
    )


def _draw_problems(
    *,
    dataset: str,
    split: str,
    num_problems: int,
    seed: int,
    excluded_chains: set[tuple[int | str, ...]],
    min_ops: int,
    max_ops: int,
    max_operand: int,
    max_multiplier: int,
) -> list[ArithProblem]:
    # A string seed is hashed with SHA-512 by `random.Random`: stable across runs and platforms.
    split_random = random.Random(f"{dataset}:{split}:{seed}")
    max_value = max_operand * max_multiplier
    problems: list[ArithProblem] = []
    seen_chains = set(excluded_chains)
    for _ in range(num_problems * _MAX_DRAWS_PER_PROBLEM):
        problem = _draw_problem(
            split_random,
            num_ops=split_random.randint(min_ops, max_ops),
            max_operand=max_operand,
            max_multiplier=max_multiplier,
            max_value=max_value,
        )
        if problem.chain in seen_chains:
            continue
        seen_chains.add(problem.chain)
        problems.append(problem)
        if len(problems) == num_problems:
            return problems
    raise BadInputError(
        f"cannot draw {num_problems} distinct {dataset} problems for split {split!r} at this "
        f"difficulty (ops {min_ops}-{max_ops}, operands up to {max_operand}, multipliers up to "
        f"{max_multiplier}); ask for fewer or make it harder"
    )


def _draw_problem(
    split_random: random.Random,
    *,
    num_ops: int,
    max_operand: int,
    max_multiplier: int,
    max_value: int,
) -> ArithProblem:
    value = split_random.randint(1, max_operand)
    start = value
    steps: list[ArithStep] = []
    for _ in range(num_ops):
        operators: list[Operator] = []
        if value < max_value:
            operators.append("+")
        if value > 1:
            operators.append("-")
        if value * 2 <= max_value:
            operators.append("*")
        operator = split_random.choice(operators)
        if operator == "+":
            operand = split_random.randint(1, min(max_operand, max_value - value))
            result = value + operand
        elif operator == "-":
            operand = split_random.randint(1, min(max_operand, value - 1))
            result = value - operand
        else:
            operand = split_random.randint(2, min(max_multiplier, max_value // value))
            result = value * operand
        steps.append(ArithStep(left=value, operator=operator, operand=operand, result=result))
        value = result
    return ArithProblem(
        start=start,
        steps=tuple(steps),
        as_story=split_random.random() < 0.5,
        story_seed=split_random.getrandbits(32),
    )
