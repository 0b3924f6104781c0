"""The built-in `arith` dataset: seeded, disjoint splits, correct worked solutions, difficulty."""

from __future__ import annotations

import ast
import hashlib
import json
import operator
import re

import pytest

from treerpo.errors import BadInputError
from treerpo.problems.arith import generate_arith, load_arith_split
from treerpo.problems.sources import load_problems
from treerpo.scoring.answers import extract_boxed
from treerpo.scoring.verify import is_correct

_STEP_LINE = re.compile(r"^(\d+) ([-+*]) (\d+) = (\d+)$")
_OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_AST_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _solution_steps(solution: str) -> list[tuple[int, str, int, int]]:
    """The `left op operand = result` lines of a worked solution, checked to be well formed."""
    *lines, boxed_line = solution.split("\n")
    assert boxed_line == f"\\boxed{{{extract_boxed(solution)}}}"
    steps = []
    for line in lines:
        match = _STEP_LINE.match(line)
        assert match, f"malformed solution line {line!r}"
        left, op, operand, result = match.groups()
        steps.append((int(left), op, int(operand), int(result)))
    return steps


def _evaluate_expression(expression: str) -> int:
    """The value of an integer expression of + - * and parentheses, by Python's precedence."""

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPERATORS:
            return _AST_OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise AssertionError(f"unexpected expression part {ast.dump(node)}")

    return value(ast.parse(expression, mode="eval").body)


def _numbers(text: str) -> list[int]:
    return [int(number) for number in re.findall(r"\d+", text)]


def test_generation_is_deterministic_under_a_seed():
    first = generate_arith(split="test", num_problems=50, seed=7)
    assert generate_arith(split="test", num_problems=50, seed=7) == first
    assert generate_arith(split="test", num_problems=50, seed=8) != first
    # More rows of a split extend fewer: a prefix does not depend on the size asked for.
    assert generate_arith(split="test", num_problems=80, seed=7)[:50] == first


def test_builtin_rows_are_pinned():
    # The shipped arith-tiny policy and every recorded result were made on these rows: a change
    # of the generator's random streams (e.g. for another dataset) must leave them as they are.
    assert load_arith_split("test")[0] == {
        "problem": "Tom has 8 apples. He finds 2 more. He loses 1. He buys 3 more. He gives away "
        "4. How many apples does he have now?",
        "solution": "8 + 2 = 10\n10 - 1 = 9\n9 + 3 = 12\n12 - 4 = 8\n\\boxed{8}",
        "answer": "8",
    }
    assert load_arith_split("train")[0] == {
        "problem": "Ana has 2 cards. She buys 4 more. She finds 9 more. Then she has 2 times as "
        "many. How many cards does she have now?",
        "solution": "2 + 4 = 6\n6 + 9 = 15\n15 * 2 = 30\n\\boxed{30}",
        "answer": "30",
    }
    # And every other row, by digest.
    digests = {
        split: hashlib.sha256(json.dumps(load_arith_split(split)).encode()).hexdigest()
        for split in ("train", "test")
    }
    assert digests == {
        "train": "b1db22f15d07b84db19470567842b2135c225592c1c6ae9916f2c7e358b17a97",
        "test": "bdc07c2f889cedcf629d3d3dc7908b48abbfbab3c1d1c58c91b6662fc05d9c4f",
    }


def test_builtin_splits_are_disjoint_and_sized():
    train_rows = load_arith_split("train")
    test_rows = load_arith_split("test")
    assert (len(train_rows), len(test_rows)) == (20_000, 1_000)
    assert not {row["problem"] for row in train_rows} & {row["problem"] for row in test_rows}
    # Same arithmetic told another way (a story instead of an expression) is excluded too: the
    # solution text is exactly the chain of operations.
    assert not {row["solution"] for row in train_rows} & {row["solution"] for row in test_rows}
    assert len({row["solution"] for row in train_rows}) == len(train_rows)


def test_train_excludes_test_even_where_chains_would_collide():
    # About 700 distinct chains exist at this difficulty: without the exclusion, 200 train
    # problems would repeat about 17 of the 60 test problems.
    difficulty = {"min_ops": 2, "max_ops": 2, "max_operand": 6, "max_multiplier": 3}
    test_rows = generate_arith(split="test", num_problems=60, seed=0, **difficulty)
    train_rows = generate_arith(
        split="train", num_problems=200, seed=0, num_test_problems=60, **difficulty
    )
    assert not {row["solution"] for row in train_rows} & {row["solution"] for row in test_rows}


def test_boxed_answer_is_the_answer_and_is_correct():
    rows = load_arith_split("test") + load_arith_split("train")[:1_000]
    for row in rows:
        assert extract_boxed(row["solution"]) == row["answer"]
        assert is_correct(row["solution"], row["answer"])
        assert not is_correct(row["solution"], str(int(row["answer"]) + 1))


def test_worked_solutions_compute_the_problem_correctly():
    rows = load_arith_split("test") + load_arith_split("train")[:1_000]
    num_expressions = num_stories = 0
    for row in rows:
        steps = _solution_steps(row["solution"])
        for index, (left, op, operand, result) in enumerate(steps):
            assert _OPERATORS[op](left, operand) == result, row["solution"]
            if index:
                assert left == steps[index - 1][3], "each line goes on from the last result"
        assert steps[-1][3] == int(row["answer"])
        # The solution starts from the problem's first number and uses its numbers in order.
        expected_numbers = [steps[0][0], *(operand for _, _, operand, _ in steps)]
        assert _numbers(row["problem"]) == expected_numbers, row["problem"]
        if row["problem"].startswith("Compute "):
            num_expressions += 1
            expression = row["problem"].removeprefix("Compute ").removesuffix(".")
            assert _evaluate_expression(expression) == int(row["answer"]), row["problem"]
        else:
            num_stories += 1
            assert row["problem"].endswith("have now?")
    assert num_expressions > 500 and num_stories > 500


@pytest.mark.parametrize("num_ops", [1, 3, 5])
def test_number_of_operations_follows_the_difficulty(num_ops):
    rows = generate_arith(split="test", num_problems=100, seed=0, min_ops=num_ops, max_ops=num_ops)
    assert {len(_solution_steps(row["solution"])) for row in rows} == {num_ops}


def test_default_difficulty_mixes_two_to_four_operations():
    counts = {len(_solution_steps(row["solution"])) for row in load_arith_split("test")}
    assert counts == {2, 3, 4}


def test_number_sizes_follow_the_difficulty():
    rows = generate_arith(split="test", num_problems=300, seed=0, max_operand=50, max_multiplier=3)
    steps = [step for row in rows for step in _solution_steps(row["solution"])]
    multipliers = {operand for _, op, operand, _ in steps if op == "*"}
    addends = {operand for _, op, operand, _ in steps if op != "*"}
    assert multipliers == {2, 3}
    assert max(addends) <= 50 and max(addends) > 20
    values = [value for left, _, _, result in steps for value in (left, result)]
    assert 1 <= min(values) and max(values) <= 50 * 3


def test_bad_difficulty_is_a_bad_input():
    with pytest.raises(BadInputError, match="min_ops"):
        generate_arith(split="test", num_problems=5, min_ops=3, max_ops=2)
    with pytest.raises(BadInputError, match="distinct"):
        generate_arith(
            split="test",
            num_problems=1_000,
            min_ops=1,
            max_ops=1,
            max_operand=2,
            max_multiplier=2,
        )


def test_load_problems_reads_the_builtin_dataset():
    problem_set = load_problems(dataset="arith", split="test", limit=5)
    assert problem_set.dataset == "arith"
    assert problem_set.total_rows == 1_000
    assert [problem.row_index for problem in problem_set.problems] == [0, 1, 2, 3, 4]
    test_rows = load_arith_split("test")
    for problem in problem_set.problems:
        assert problem.problem == test_rows[problem.row_index]["problem"]
        assert problem.reference == test_rows[problem.row_index]["answer"]


def test_unknown_split_is_a_bad_input():
    with pytest.raises(BadInputError, match="no split 'validation'"):
        load_problems(dataset="arith", split="validation", limit=5)
