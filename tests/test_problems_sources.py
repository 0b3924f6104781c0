"""`load_problems`: the real GSM8K files, NuminaMath-style rows in every file format, selection,
field overrides, and every input mistake as a one-line `BadInputError`."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from treerpo.errors import BadInputError
from treerpo.problems import sources
from treerpo.problems.sources import load_problems

NUMINA_ROWS = [
    {
        "problem": "Compute $1 + 1$.",
        "solution": "We add: $1 + 1 = \\boxed{3}$ is wrong, so the sum is $\\boxed{2}$.",
        "source": "synthetic",
    },
    {
        "problem": "Simplify $\\frac{2}{4}$.",
        "solution": "Divide both by 2: $\\boxed{\\frac{1}{2}}$.",
        "source": "synthetic",
    },
    {"problem": "A proof with no final answer.", "solution": "Obvious.", "source": "synthetic"},
    {"problem": "What is $3^2$?", "solution": "It is $\\boxed{9}$.", "source": "synthetic"},
]


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write `rows` in the format that `path`'s extension names."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        import pyarrow
        import pyarrow.parquet

        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    else:
        raise AssertionError(path.suffix)
    return path


def bad_input(**load_arguments) -> str:
    """The message of the BadInputError that `load_problems(**load_arguments)` raises."""
    with pytest.raises(BadInputError) as raised:
        load_problems(**load_arguments)
    message = str(raised.value)
    assert "\n" not in message and message.strip() == message and message
    return message


# --- the real GSM8K files


def test_gsm8k_test_split_gives_every_row_with_its_final_answer(gsm8k_dir):
    test_file = gsm8k_dir / "test.jsonl"
    problem_set = load_problems(dataset=str(test_file), split="test")

    assert problem_set.total_rows == 1319
    assert len(problem_set.problems) == 1319 and problem_set.skipped == 0
    assert (problem_set.problem_field, problem_set.reference_fields) == ("question", ("answer",))
    first = problem_set.problems[0]
    assert first.reference == "18"
    assert first.problem.startswith("Janet’s ducks lay 16 eggs per day.")
    assert (first.dataset, first.split, first.row_index) == (str(test_file.resolve()), "test", 0)
    assert [problem.row_index for problem in problem_set.problems] == list(range(1319))


def test_gsm8k_reference_drops_thousands_separators(gsm8k_dir):
    # Row 146 of the test split ends with "#### 2,125".
    problem_set = load_problems(dataset=str(gsm8k_dir / "test.jsonl"), offset=146, limit=1)
    assert problem_set.problems[0].reference == "2125"
    assert problem_set.problems[0].row_index == 146
    every_reference = load_problems(dataset=str(gsm8k_dir / "test.jsonl")).problems
    assert not [problem for problem in every_reference if "," in problem.reference]


def test_a_folder_of_split_files_picks_the_split(gsm8k_dir):
    train = load_problems(dataset=str(gsm8k_dir), split="train", limit=3)
    assert train.total_rows == 7473
    assert train.problems[0].dataset == str((gsm8k_dir / "train.jsonl").resolve())
    assert train.problems[0].split == "train"
    test = load_problems(dataset=str(gsm8k_dir), split="test", limit=1)
    assert test.problems[0].reference == "18"
    message = bad_input(dataset=str(gsm8k_dir), split="validation")
    assert "'validation'" in message and "test.jsonl" in message and "train.jsonl" in message


# --- NuminaMath-style rows in every format


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_solution_rows_give_the_last_boxed_answer_and_skip_rows_without_one(tmp_path, suffix):
    data_file = write_rows(tmp_path / f"numina{suffix}", NUMINA_ROWS)
    problem_set = load_problems(dataset=str(data_file))

    assert [problem.reference for problem in problem_set.problems] == ["2", "\\frac{1}{2}", "9"]
    assert [problem.row_index for problem in problem_set.problems] == [0, 1, 3]
    assert problem_set.problems[2].problem == "What is $3^2$?"
    assert (problem_set.skipped, problem_set.total_rows) == (1, 4)
    assert problem_set.problems[0].dataset == str(data_file.resolve())
    assert problem_set.problems[0].split == "train"


def test_final_answer_is_preferred_and_each_row_falls_back_to_the_next_column(tmp_path):
    rows = [
        {"problem": "p0", "final_answer": " 42 ", "answer": "7", "solution": "\\boxed{8}"},
        {"problem": "p1", "final_answer": "", "answer": "#### 1,000", "solution": "\\boxed{8}"},
        {"problem": "p2", "final_answer": None, "answer": None, "solution": "so \\boxed{x+1}"},
        {"problem": "p3", "final_answer": 12, "answer": None, "solution": None},
        {"problem": "p4", "final_answer": None, "answer": "", "solution": "no box"},
        {"problem": "  ", "final_answer": "5", "answer": None, "solution": None},
    ]
    problem_set = load_problems(dataset=str(write_rows(tmp_path / "mixed.jsonl", rows)))

    references = {problem.problem: problem.reference for problem in problem_set.problems}
    assert references == {"p0": "42", "p1": "1000", "p2": "x+1", "p3": "12"}
    assert problem_set.reference_fields == ("final_answer", "answer", "solution")
    assert problem_set.skipped == 2


def test_answer_without_hashes_is_used_as_written_and_boxed_braces_nest(tmp_path):
    rows = [
        {"question": "q0", "answer": "  (1, 2)  "},
        {"question": "q1", "answer": "3.50"},
    ]
    problem_set = load_problems(dataset=str(write_rows(tmp_path / "plain.csv", rows)))
    assert [problem.reference for problem in problem_set.problems] == ["(1, 2)", "3.50"]

    nested = [{"prompt": "p", "solution": "\\boxed{\\frac{\\sqrt{3}}{2}} then \\boxed{}"}]
    problem_set = load_problems(dataset=str(write_rows(tmp_path / "nested.jsonl", nested)))
    assert problem_set.problems[0].reference == "\\frac{\\sqrt{3}}{2}"
    assert problem_set.problem_field == "prompt"


# --- selection


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_offset_and_limit_select_rows_before_skipping(tmp_path, suffix):
    data_file = write_rows(tmp_path / f"numina{suffix}", NUMINA_ROWS)

    window = load_problems(dataset=str(data_file), offset=1, limit=2)
    assert [problem.row_index for problem in window.problems] == [1]
    assert (window.skipped, window.total_rows) == (1, 4)

    tail = load_problems(dataset=str(data_file), offset=3, limit=100)
    assert [problem.reference for problem in tail.problems] == ["9"]
    assert tail.problems[0].row_index == 3


def test_blank_jsonl_lines_are_not_rows(tmp_path):
    data_file = tmp_path / "gaps.jsonl"
    data_file.write_text('\n{"question": "a", "answer": "1"}\n\n{"question": "b", "answer": "2"}\n')
    problem_set = load_problems(dataset=str(data_file), offset=1)
    assert [(problem.row_index, problem.reference) for problem in problem_set.problems] == [
        (1, "2")
    ]
    assert problem_set.total_rows == 2


# --- field overrides


def test_field_overrides_replace_detection(tmp_path):
    rows = [
        {"question": "ignored", "text": "What is 2+2?", "answer": "5", "gold": "Thus #### 4,0"},
        {"question": "ignored", "text": "What is 1+1?", "answer": "5", "gold": " 2 "},
    ]
    data_file = write_rows(tmp_path / "custom.json", rows)
    problem_set = load_problems(dataset=str(data_file), problem_field="text", answer_field="gold")

    assert [(p.problem, p.reference) for p in problem_set.problems] == [
        ("What is 2+2?", "40"),
        ("What is 1+1?", "2"),
    ]
    assert (problem_set.problem_field, problem_set.reference_fields) == ("text", ("gold",))


def test_an_answer_field_named_solution_is_read_as_a_worked_solution(tmp_path):
    rows = [{"problem": "p", "answer": "", "solution": "Hence \\boxed{7}."}]
    data_file = write_rows(tmp_path / "override.parquet", rows)
    problem_set = load_problems(dataset=str(data_file), answer_field="solution")
    assert problem_set.problems[0].reference == "7"


# --- hub ids


def test_hub_id_offline_is_bad_input_quickly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    message = bad_input(dataset="AI-MO/NuminaMath-CoT", limit=5)
    assert time.monotonic() - started < 30
    assert "'AI-MO/NuminaMath-CoT'" in message and "hub" in message


def test_hub_dataset_rows_and_default_gsm8k_config(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, *, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(
            [{"question": f"q{index}", "answer": f"work\n#### {index},000"} for index in range(5)]
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    problem_set = load_problems(dataset="openai/gsm8k", split="test", offset=1, limit=2)

    assert calls == [("openai/gsm8k", "main", "test")]
    assert [(p.row_index, p.reference) for p in problem_set.problems] == [(1, "1000"), (2, "2000")]
    assert problem_set.problems[0].dataset == "openai/gsm8k"
    assert problem_set.total_rows == 5

    load_problems(dataset="someone/math", config="hard")
    load_problems(dataset="someone/math")
    assert calls[1:] == [("someone/math", "hard", "train"), ("someone/math", None, "train")]


def test_builtin_datasets_shadow_hub_ids(monkeypatch):
    def counting_rows(split: str) -> list[dict]:
        return [{"problem": f"{split} {n} + 1", "answer": str(n + 1)} for n in range(3)]

    monkeypatch.setitem(sources.BUILTIN_DATASETS, "counting", counting_rows)
    problem_set = load_problems(dataset="counting", split="test", limit=2)
    assert [(p.dataset, p.problem, p.reference) for p in problem_set.problems] == [
        ("counting", "test 0 + 1", "1"),
        ("counting", "test 1 + 1", "2"),
    ]


# --- input mistakes


def test_missing_file_is_bad_input(tmp_path):
    assert "not found" in bad_input(dataset=str(tmp_path / "nope.jsonl"))
    assert "not found" in bad_input(dataset="./data/problems.parquet")


def test_unsupported_extension_is_bad_input(tmp_path):
    text_file = tmp_path / "problems.txt"
    text_file.write_text("What is 1+1?\n")
    message = bad_input(dataset=str(text_file))
    assert "'.txt'" in message and ".jsonl" in message


@pytest.mark.parametrize(
    ("file_name", "content"),
    [
        ("broken.jsonl", '{"question": "a", "answer": "1"}\n{"question": "b", "answ'),
        ("array.jsonl", '["not", "an", "object"]\n'),
        ("broken.json", '[{"question": "a"'),
        ("scalar.json", "42"),
        ("broken.parquet", "PAR1 this is not parquet"),
        ("latin1.csv", b"question,answer\n\xe9t\xe9,1\n"),
    ],
)
def test_corrupt_file_is_bad_input(tmp_path, file_name, content):
    data_file = tmp_path / file_name
    if isinstance(content, bytes):
        data_file.write_bytes(content)
    else:
        data_file.write_text(content)
    assert str(data_file) in bad_input(dataset=str(data_file))


def test_json_lines_in_a_json_file_are_read(tmp_path):
    data_file = tmp_path / "lines.json"
    data_file.write_text('{"question": "a", "answer": "1"}\n{"question": "b", "answer": "2"}\n')
    assert len(load_problems(dataset=str(data_file)).problems) == 2


@pytest.mark.parametrize(
    ("file_name", "content"),
    [("empty.jsonl", ""), ("empty.json", "[]"), ("header_only.csv", "question,answer\n")],
)
def test_dataset_without_rows_is_bad_input(tmp_path, file_name, content):
    data_file = tmp_path / file_name
    data_file.write_text(content)
    assert "no rows" in bad_input(dataset=str(data_file))


def test_dataset_without_usable_problems_is_bad_input(tmp_path):
    rows = [{"problem": "p", "solution": "no box here"}, {"problem": "q", "solution": ""}]
    message = bad_input(dataset=str(write_rows(tmp_path / "unusable.jsonl", rows)))
    assert "no usable problems" in message


def test_offset_past_the_end_is_bad_input(tmp_path):
    data_file = write_rows(tmp_path / "numina.jsonl", NUMINA_ROWS)
    assert "past the end" in bad_input(dataset=str(data_file), offset=4)


def test_missing_problem_column_names_the_columns_found(tmp_path):
    rows = [{"text": "What is 1+1?", "answer": "2"}]
    message = bad_input(dataset=str(write_rows(tmp_path / "columns.jsonl", rows)))
    assert "no problem column" in message and "text, answer" in message


def test_missing_reference_column_is_bad_input(tmp_path):
    rows = [{"question": "What is 1+1?", "label": "2"}]
    message = bad_input(dataset=str(write_rows(tmp_path / "columns.csv", rows)))
    assert "question, label" in message and "--answer-field" in message


@pytest.mark.parametrize("override", ["problem_field", "answer_field"])
def test_unknown_field_override_is_bad_input(tmp_path, override):
    data_file = write_rows(tmp_path / "numina.parquet", NUMINA_ROWS)
    message = bad_input(dataset=str(data_file), **{override: "nonexistent"})
    assert "'nonexistent'" in message and "problem, solution, source" in message


@pytest.mark.parametrize(
    ("selection", "flag"),
    [({"limit": 0}, "--limit"), ({"limit": -3}, "--limit"), ({"offset": -1}, "--offset")],
)
def test_invalid_limit_or_offset_is_bad_input(gsm8k_dir, selection, flag):
    assert flag in bad_input(dataset=str(gsm8k_dir / "test.jsonl"), **selection)


def test_config_for_a_local_file_is_bad_input(gsm8k_dir):
    assert "--config" in bad_input(dataset=str(gsm8k_dir / "test.jsonl"), config="main")
