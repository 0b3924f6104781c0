"""The built-in `arith-long` dataset and its shipped `arith-long-tiny` policy."""

from __future__ import annotations

import statistics

import pytest
from test_arith_policy import greedy_results

from treerpo.engines.loading import load_policy, load_tokenizer
from treerpo.errors import BadInputError
from treerpo.policies import arith_long_policy_path
from treerpo.problems.arith import generate_arith, load_arith_split
from treerpo.problems.arith_long import ARITH_LONG, load_arith_long_split
from treerpo.problems.prompts import build_prompt
from treerpo.problems.sources import load_problems
from treerpo.scoring.answers import extract_boxed
from treerpo.scoring.verify import is_correct

# The difficulty arguments of `generate_arith` that `arith-long` sets.
DIFFICULTY = {
    "min_ops": ARITH_LONG.min_ops,
    "max_ops": ARITH_LONG.max_ops,
    "max_operand": ARITH_LONG.max_operand,
    "max_multiplier": ARITH_LONG.max_multiplier,
}


def _operation_lines(solution: str) -> list[str]:
    return solution.split("\n")[:-1]


@pytest.fixture(scope="module")
def shipped_tokenizer():
    return load_tokenizer(str(arith_long_policy_path()))


def test_splits_are_sized_and_disjoint():
    train_rows = load_arith_long_split("train")
    test_rows = load_arith_long_split("test")
    assert (len(train_rows), len(test_rows)) == (20_000, 1_000)
    # The solution is exactly the chain of operations, whichever way the problem is told.
    train_chains = {row["solution"] for row in train_rows}
    assert len(train_chains) == len(train_rows)
    assert not train_chains & {row["solution"] for row in test_rows}


def test_rows_are_seeded_and_pinned():
    # The loader's rows are `generate_arith`'s under the dataset's own stream name: a fresh
    # generation (no cache) gives the same, and the first test row is pinned.
    test_rows = load_arith_long_split("test")
    assert generate_arith(split="test", num_problems=20, dataset="arith-long", **DIFFICULTY) == (
        test_rows[:20]
    )
    assert test_rows[0] == {
        "problem": "Compute ((6 + 7 - 7 + 9 - 6 - 6 + 3 - 3 + 1) * 2 + 6) * 2 - 8 + 10.",
        "solution": "6 + 7 = 13\n13 - 7 = 6\n6 + 9 = 15\n15 - 6 = 9\n9 - 6 = 3\n3 + 3 = 6\n"
        "6 - 3 = 3\n3 + 1 = 4\n4 * 2 = 8\n8 + 6 = 14\n14 * 2 = 28\n28 - 8 = 20\n20 + 10 = 30\n"
        "\\boxed{30}",
        "answer": "30",
    }


def test_its_streams_differ_from_arith_at_the_same_difficulty():
    as_arith = generate_arith(split="test", num_problems=50, **DIFFICULTY)
    as_arith_long = generate_arith(
        split="test", num_problems=50, dataset="arith-long", **DIFFICULTY
    )
    assert not {row["solution"] for row in as_arith} & {row["solution"] for row in as_arith_long}


def test_loader_hands_out_copies():
    load_arith_long_split("test")[0]["answer"] = "changed"
    assert load_arith_long_split("test")[0]["answer"] == "30"


def test_chains_are_long_with_small_numbers_and_correct_answers():
    rows = load_arith_long_split("test")
    assert {len(_operation_lines(row["solution"])) for row in rows} == set(range(10, 15))
    for row in rows:
        assert extract_boxed(row["solution"]) == row["answer"]
        assert is_correct(row["solution"], row["answer"])
        for line in _operation_lines(row["solution"]):
            left, _, operand, _, result = line.split()
            assert 1 <= int(left) <= 40 and 1 <= int(result) <= 40
            assert 1 <= int(operand) <= 10
    operators = [line.split()[1] for row in rows for line in _operation_lines(row["solution"])]
    # Mostly additions and subtractions: each line is easy, the chain is what is long.
    assert operators.count("*") / len(operators) < 0.25


def test_solutions_are_80_to_250_tokens_of_the_shipped_tokenizer(shipped_tokenizer):
    rows = load_arith_long_split("train") + load_arith_long_split("test")
    lengths = [
        len(shipped_tokenizer.encode(row["solution"], add_special_tokens=False)) for row in rows
    ]
    assert 80 <= min(lengths) and max(lengths) <= 250
    assert 100 <= statistics.median(lengths) <= 150


def test_load_problems_reads_it_by_name():
    problem_set = load_problems(dataset="arith-long", split="test", limit=5, offset=3)
    assert problem_set.dataset == "arith-long"
    assert problem_set.total_rows == 1_000
    test_rows = load_arith_long_split("test")
    assert [
        (problem.row_index, problem.problem, problem.reference) for problem in problem_set.problems
    ] == [(index, test_rows[index]["problem"], test_rows[index]["answer"]) for index in range(3, 8)]
    # Not arith's problems under another name.
    assert problem_set.problems[0].problem != load_arith_split("test")[3]["problem"]
    with pytest.raises(BadInputError, match="'arith-long' has no split 'validation'"):
        load_problems(dataset="arith-long", split="validation")


def test_the_policy_ships_as_safetensors_with_its_record():
    policy_dir = arith_long_policy_path()
    file_names = {path.name for path in policy_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "MADE.md"} <= file_names
    assert {"tokenizer.json", "tokenizer_config.json"} <= file_names
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in file_names)
    made = (policy_dir / "MADE.md").read_text(encoding="utf-8")
    assert "scripts/warm_start_arith.py --dataset arith-long" in made and "--seed 0" in made
    assert (policy_dir / "model.safetensors").stat().st_size < 20_000_000


def test_the_tokenizer_round_trips_prompts_and_solutions(shipped_tokenizer):
    assert shipped_tokenizer.eos_token == "<|im_end|>"
    for row in load_arith_long_split("test")[:50]:
        for text in (row["problem"], row["solution"]):
            token_ids = shipped_tokenizer.encode(text, add_special_tokens=False)
            assert shipped_tokenizer.decode(token_ids) == text
        prompt = build_prompt(shipped_tokenizer, row["problem"])
        assert prompt.text.startswith("<|im_start|>user\n")
        assert shipped_tokenizer.decode(prompt.token_ids) == prompt.text


def test_the_policy_loads_and_works_problems_out_to_a_boxed_answer(shipped_tokenizer):
    policy = load_policy(str(arith_long_policy_path()), torch_dtype="float32", device="cpu")
    assert policy.config.model_type == "qwen2"
    test_rows = load_arith_long_split("test")[:10]
    results = greedy_results(policy, shipped_tokenizer, test_rows, max_new_tokens=256)
    assert all(result.finish_reason == "eos" for result in results)
    for result in results:
        completion = shipped_tokenizer.decode(result.token_ids.tolist(), skip_special_tokens=True)
        # Worked out, never answered at once: at least ten operation lines before the box.
        assert len(completion.split("\n")) >= 11 and extract_boxed(completion) is not None
