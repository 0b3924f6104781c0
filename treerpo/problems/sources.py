"""Problem sources: what `--dataset` names, read into problems with reference answers.

`generate`, `train --dataset` and `eval` all call `load_problems`. A dataset is one of, in the
order they are tried:

1. a **built-in** name registered in `BUILTIN_DATASETS` (`arith`: `treerpo.problems.arith`;
   `arith-long`: `treerpo.problems.arith_long`);
2. a **local file** (`.jsonl`, `.json`, `.parquet`, `.csv`) — the split is only a label then — or a
   **folder** holding one file per split (`test.jsonl`, `train.parquet`, ...): `--split` picks it;
3. otherwise a **Hugging Face hub id** loaded with `datasets.load_dataset` (`openai/gsm8k` and
   `gsm8k` get the config `main` unless one is given).

Every row gives at most one problem:

- the problem text is the first present column of `problem`, `question`, `prompt`, or
  `--problem-field`. A cell holding a list of `{"role", "content"}` messages (TRL's
  conversational format) is a conversation: the prompt is those messages through the chat
  template, and the problem text (stored, shown, given to reward plug-ins) is the content of its
  last user message;
- the reference answer is, row by row, the first usable value of `final_answer`, `answer`,
  `solution`, or of `--answer-field` alone. A value holding `####` is GSM8K style: the text after
  it, commas removed (`#### 2,125` -> `2125`). A column named `solution` is a worked solution: the
  content of its last `\\boxed{...}`. Any other value is used as it is, stripped.

Rows with no usable problem text or reference (missing, empty, no boxed answer) are skipped and
counted, never an error: hub datasets always hold a few. `offset` and `limit` select rows of the
split *before* skipping, so `row_index` is always the row's number in the source and the same
flags select the same rows whatever the detection does with them.

Every mistake in the input is a `BadInputError` with a one-line message.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treerpo.errors import BadInputError
from treerpo.problems.arith import load_arith_split
from treerpo.problems.arith_long import load_arith_long_split
from treerpo.scoring.answers import balanced_group

PROBLEM_FIELDS = ("problem", "question", "prompt")
REFERENCE_FIELDS = ("final_answer", "answer", "solution")
# A column of this name holds a worked solution; its last \boxed{} is the answer (NuminaMath, MATH).
SOLUTION_FIELD = "solution"
FILE_FORMATS = (".jsonl", ".json", ".parquet", ".csv")
# Hub datasets that have several configs but one obvious one for math training.
DEFAULT_HUB_CONFIGS = {"openai/gsm8k": "main", "gsm8k": "main"}

# Built-in datasets: name -> function(split) returning rows with problem/answer columns, read like
# any file. They shadow hub ids of the same name.
BuiltinDatasetLoader = Callable[[str], list[dict[str, Any]]]
BUILTIN_DATASETS: dict[str, BuiltinDatasetLoader] = {
    "arith": load_arith_split,
    "arith-long": load_arith_long_split,
}


@dataclass(frozen=True)
class Problem:
    """One problem and the reference answer its leaves are checked against."""

    dataset: str  # the hub id, the built-in name, or the resolved absolute path of the file
    split: str
    row_index: int  # the row's number in the source split (0-based; blank JSONL lines not counted)
    problem: str
    reference: str
    # Conversational rows: the (role, content) messages the prompt is rendered from.
    messages: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True)
class ProblemSet:
    """The problems of one selection of rows, and what was left out of it."""

    dataset: str
    split: str
    problems: list[Problem]
    skipped: int  # rows selected but without a usable problem text or reference
    total_rows: int  # rows in the whole split, before offset and limit
    problem_field: str
    reference_fields: tuple[str, ...]  # the columns tried for the reference, in order


@dataclass
class _RowWindow:
    """The rows `[start, start + num_rows)` of a split, read lazily column by column."""

    name: str
    where: str  # how messages name the source: a file's path, a hub id with its split
    total_rows: int
    start: int
    num_rows: int
    column_names: list[str]
    read_columns: Callable[[list[str]], list[dict[str, Any]]]


def load_problems(
    *,
    dataset: str,
    split: str = "train",
    config: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    problem_field: str | None = None,
    answer_field: str | None = None,
) -> ProblemSet:
    """Read rows `[offset, offset + limit)` of a dataset split into problems (see module doc)."""
    if limit is not None and limit <= 0:
        raise BadInputError(f"--limit must be a positive number of rows, got {limit}")
    if offset < 0:
        raise BadInputError(f"--offset must be 0 or more, got {offset}")
    window = _open_window(dataset=dataset, split=split, config=config, offset=offset, limit=limit)
    if window.total_rows == 0:
        raise BadInputError(f"dataset {window.where} has no rows")
    if window.num_rows == 0:
        raise BadInputError(
            f"--offset {offset} is past the end of {window.where}, "
            f"which has {window.total_rows} rows"
        )

    columns_found = ", ".join(window.column_names) or "none"
    chosen_problem_field = _choose_problem_field(window, problem_field, columns_found)
    reference_fields = _choose_reference_fields(window, answer_field, columns_found)
    rows = window.read_columns(list(dict.fromkeys([chosen_problem_field, *reference_fields])))

    problems: list[Problem] = []
    for row_offset, row in enumerate(rows):
        messages = _messages_value(row.get(chosen_problem_field))
        problem_text = (_last_user_content(messages) if messages is not None
                        else _text_value(row.get(chosen_problem_field)))
        reference = _first_reference(row, reference_fields)
        if problem_text is None or reference is None:
            continue
        problems.append(
            Problem(
                dataset=window.name,
                split=split,
                row_index=window.start + row_offset,
                problem=problem_text,
                reference=reference,
                messages=messages,
            )
        )
    if not problems:
        raise BadInputError(
            f"no usable problems in rows {window.start}-{window.start + window.num_rows - 1} of "
            f"{window.where}: none has both a {chosen_problem_field!r} text and a reference in "
            f"{' / '.join(reference_fields)}"
        )
    return ProblemSet(
        dataset=window.name,
        split=split,
        problems=problems,
        skipped=len(rows) - len(problems),
        total_rows=window.total_rows,
        problem_field=chosen_problem_field,
        reference_fields=tuple(reference_fields),
    )


def _choose_problem_field(window: _RowWindow, override: str | None, columns_found: str) -> str:
    if override is not None:
        if override not in window.column_names:
            raise BadInputError(
                f"--problem-field {override!r} is not a column of {window.where}; "
                f"columns found: {columns_found}"
            )
        return override
    for field in PROBLEM_FIELDS:
        if field in window.column_names:
            return field
    raise BadInputError(
        f"no problem column in {window.where} (looked for {', '.join(PROBLEM_FIELDS)}); "
        f"columns found: {columns_found}; pass --problem-field"
    )


def _choose_reference_fields(
    window: _RowWindow, override: str | None, columns_found: str
) -> list[str]:
    if override is not None:
        if override not in window.column_names:
            raise BadInputError(
                f"--answer-field {override!r} is not a column of {window.where}; "
                f"columns found: {columns_found}"
            )
        return [override]
    fields = [field for field in REFERENCE_FIELDS if field in window.column_names]
    if not fields:
        raise BadInputError(
            f"no reference answer column in {window.where} (looked for "
            f"{', '.join(REFERENCE_FIELDS)}); columns found: {columns_found}; pass --answer-field"
        )
    return fields


# --- reference answers -------------------------------------------------------------------------
# The same rules as `reference_from_gsm8k` and `reference_from_solution` of
# `treerpo.scoring.answers`, applied to dataset cells (which may be numbers, NaN or missing).


def _first_reference(row: dict[str, Any], fields: Iterable[str]) -> str | None:
    for field in fields:
        value = _text_value(row.get(field))
        if value is None:
            continue
        if "####" in value:
            reference = _reference_after_hashes(value)
        elif field == SOLUTION_FIELD:
            reference = _last_boxed_content(value)
        else:
            reference = value
        if reference:
            return reference
    return None


def _reference_after_hashes(answer_text: str) -> str:
    """GSM8K: the final answer follows `####`; its thousands separators are dropped."""
    return answer_text.rsplit("####", 1)[1].strip().replace(",", "")


_BOXED_OPENING = re.compile(r"\\boxed\s*\{")


def _last_boxed_content(solution: str) -> str | None:
    """The stripped content of the last non-empty, balanced `\\boxed{...}`, or None. Unlike
    `extract_boxed` (which judges completions by their last box only), an unbalanced or empty
    last box falls back to an earlier one: a reference should be found where there is one."""
    for opening in reversed(list(_BOXED_OPENING.finditer(solution))):
        content = balanced_group(solution, opening.end() - 1)
        if content is not None and content.strip():
            return content.strip()
    return None


def _messages_value(value: Any) -> tuple[tuple[str, str], ...] | None:
    """A cell holding a conversation (a non-empty list of {"role", "content"} with text
    content) as (role, content) pairs; None for anything else."""
    if hasattr(value, "tolist"):  # a numpy array from parquet / pandas
        value = value.tolist()
    if not isinstance(value, list | tuple) or not value:
        return None
    messages = []
    for message in value:
        if not isinstance(message, dict):
            return None
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            return None
        messages.append((role, content))
    return tuple(messages)


def _last_user_content(messages: tuple[tuple[str, str], ...]) -> str | None:
    contents = [content.strip() for role, content in messages if role == "user"]
    return contents[-1] if contents and contents[-1] else None


def _text_value(value: Any) -> str | None:
    """A cell as stripped text; None for missing, empty, NaN or non-scalar cells."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        if value.is_integer():
            return str(int(value))
    return str(value)


# --- opening a source --------------------------------------------------------------------------


def _open_window(
    *, dataset: str, split: str, config: str | None, offset: int, limit: int | None
) -> _RowWindow:
    if dataset in BUILTIN_DATASETS:
        _reject_config(config, dataset)
        rows = BUILTIN_DATASETS[dataset](split)
        where = f"built-in dataset {dataset!r} split {split!r}"
        return _window_of_rows(dataset, rows, offset=offset, limit=limit, where=where)
    path = Path(dataset).expanduser()
    if path.is_dir():
        _reject_config(config, dataset)
        return _open_file(_split_file_in_folder(path, split), offset=offset, limit=limit)
    if path.exists():
        if dataset.endswith(("/", "\\")):  # Path() drops the slash; the user meant a folder
            raise BadInputError(f"dataset {dataset} ends with a slash but {path} is a file, not "
                                "a folder: drop the slash")
        _reject_config(config, dataset)
        return _open_file(path, offset=offset, limit=limit)
    if _looks_like_local_path(dataset):
        raise BadInputError(f"dataset file not found: {path.resolve()}")
    return _open_hub_dataset(dataset, split=split, config=config, offset=offset, limit=limit)


def _reject_config(config: str | None, dataset: str) -> None:
    if config is not None:
        raise BadInputError(f"--config {config!r} applies to hub datasets only, not {dataset}")


def _looks_like_local_path(dataset: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else that names no file is a missing file."""
    return (
        dataset.lower().endswith(FILE_FORMATS)
        or dataset.startswith(("/", ".", "~"))
        or dataset.count("/") > 1
        or "\\" in dataset
    )


def _split_file_in_folder(folder: Path, split: str) -> Path:
    for suffix in FILE_FORMATS:
        candidate = folder / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    found = ", ".join(sorted(p.name for p in folder.iterdir() if p.suffix in FILE_FORMATS))
    raise BadInputError(
        f"no file for split {split!r} in {folder.resolve()} (expected {split}.jsonl, .json, "
        f".parquet or .csv; data files found: {found or 'none'})"
    )


def _window_bounds(total_rows: int, offset: int, limit: int | None) -> tuple[int, int]:
    start = min(offset, total_rows)
    stop = total_rows if limit is None else min(total_rows, offset + limit)
    return start, stop


def _window_of_rows(
    name: str,
    rows: list[dict[str, Any]],
    *,
    offset: int,
    limit: int | None,
    where: str | None = None,
) -> _RowWindow:
    """A window over a whole split already in memory."""
    start, stop = _window_bounds(len(rows), offset, limit)
    return _window_of_selected_rows(
        name, rows[start:stop], start=start, total_rows=len(rows), where=where
    )


def _window_of_selected_rows(
    name: str,
    selected_rows: list[dict[str, Any]],
    *,
    start: int,
    total_rows: int,
    where: str | None = None,
) -> _RowWindow:
    return _RowWindow(
        name=name,
        where=where or name,
        total_rows=total_rows,
        start=start,
        num_rows=len(selected_rows),
        column_names=list(dict.fromkeys(key for row in selected_rows for key in row)),
        read_columns=lambda columns: selected_rows,
    )


def _open_file(path: Path, *, offset: int, limit: int | None) -> _RowWindow:
    path = path.resolve()
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        file_type = repr(suffix) if suffix else "(no extension)"
        raise BadInputError(
            f"unsupported dataset file type {file_type}: {path}; "
            "use .jsonl, .json, .parquet or .csv"
        )
    if not path.is_file():
        raise BadInputError(f"dataset path is not a file: {path}")
    name = str(path)
    try:
        if suffix == ".parquet":
            return _open_parquet(path, offset=offset, limit=limit)
        if suffix == ".jsonl":
            return _open_jsonl(path, offset=offset, limit=limit)
        if suffix == ".json":
            return _window_of_rows(name, _read_json(path), offset=offset, limit=limit)
        return _window_of_rows(name, _read_csv(path), offset=offset, limit=limit)
    except UnicodeDecodeError as exc:
        raise BadInputError(f"cannot read {path}: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {_one_line(exc.strerror or str(exc))}") from exc


def _open_jsonl(path: Path, *, offset: int, limit: int | None) -> _RowWindow:
    """Streams the file: only the window's lines are parsed, so a huge file costs one pass."""
    stop = None if limit is None else offset + limit
    rows: list[dict[str, Any]] = []
    row_count = 0
    with path.open(encoding="utf-8-sig") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            if row_count >= offset and (stop is None or row_count < stop):
                rows.append(_parse_json_object(line, path, line_number))
            row_count += 1
    return _window_of_selected_rows(
        str(path), rows, start=min(offset, row_count), total_rows=row_count
    )


def _parse_json_object(line: str, path: Path, line_number: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{path} line {line_number} is not valid JSON: {exc.msg}") from exc
    if not isinstance(row, dict):
        raise BadInputError(f"{path} line {line_number} is not a JSON object")
    return row


def _read_json(path: Path) -> list[dict[str, Any]]:
    """A list of row objects, an object of equal-length column lists, or JSON Lines in `.json`."""
    text = path.read_text(encoding="utf-8-sig")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            numbered_lines = enumerate(text.splitlines(), start=1)
            return [
                _parse_json_object(line, path, number)
                for number, line in numbered_lines
                if line.strip()
            ]
        raise BadInputError(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno})") from exc
    if isinstance(document, list) and all(isinstance(row, dict) for row in document):
        return document
    if (
        isinstance(document, dict)
        and document
        and all(isinstance(column, list) for column in document.values())
    ):
        lengths = {len(column) for column in document.values()}
        if len(lengths) == 1:
            names = list(document)
            columns = document.values()
            return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
    raise BadInputError(
        f"{path} holds no rows: expected a list of JSON objects or an object of equal-length "
        "column lists"
    )


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        try:
            reader = csv.DictReader(handle)
            # A row with more cells than the header puts the extra ones under the key None.
            return [{key: value for key, value in row.items() if key is not None} for row in reader]
        except csv.Error as exc:
            raise BadInputError(f"{path} is not valid CSV: {_one_line(str(exc))}") from exc


def _open_parquet(path: Path, *, offset: int, limit: int | None) -> _RowWindow:
    import pyarrow
    import pyarrow.parquet

    try:
        parquet_file = pyarrow.parquet.ParquetFile(path)
    except (pyarrow.ArrowException, ValueError) as exc:
        reason = _one_line(str(exc))
        raise BadInputError(f"{path} is not a readable Parquet file: {reason}") from exc
    total_rows = parquet_file.metadata.num_rows
    start, stop = _window_bounds(total_rows, offset, limit)

    def read_columns(columns: list[str]) -> list[dict[str, Any]]:
        try:
            table = parquet_file.read(columns=columns)
        except (pyarrow.ArrowException, OSError, ValueError) as exc:
            raise BadInputError(f"cannot read {path}: {_one_line(str(exc))}") from exc
        return table.slice(start, stop - start).to_pylist()

    return _RowWindow(
        name=str(path),
        where=str(path),
        total_rows=total_rows,
        start=start,
        num_rows=stop - start,
        column_names=list(parquet_file.schema_arrow.names),
        read_columns=read_columns,
    )


def _open_hub_dataset(
    dataset: str, *, split: str, config: str | None, offset: int, limit: int | None
) -> _RowWindow:
    import datasets
    from datasets.exceptions import DatasetsError

    config = config if config is not None else DEFAULT_HUB_CONFIGS.get(dataset)
    try:
        hub_split = datasets.load_dataset(dataset, config, split=split)
    except (OSError, ValueError, DatasetsError) as exc:
        # OSError covers offline mode and unknown ids; ValueError an unknown split or config.
        config_note = f" (config {config!r})" if config else ""
        raise BadInputError(
            f"cannot load dataset {dataset!r}{config_note} split {split!r} from the Hugging Face "
            f"hub: {_one_line(str(exc))}; if it is a local file, check the path"
        ) from exc
    start, stop = _window_bounds(hub_split.num_rows, offset, limit)
    selected_rows = hub_split.select(range(start, stop))
    return _RowWindow(
        name=dataset,
        where=f"{dataset!r} split {split!r}",
        total_rows=hub_split.num_rows,
        start=start,
        num_rows=stop - start,
        column_names=list(hub_split.column_names),
        read_columns=lambda columns: selected_rows.select_columns(columns).to_list(),
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())
