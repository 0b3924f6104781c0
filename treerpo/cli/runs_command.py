"""`treerpo runs`: list the runs in the store (read-only)."""

from __future__ import annotations

from typing import Annotated, Literal

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from treerpo.cli.common import (
    DEFAULT_DB,
    DbOption,
    JsonOption,
    print_json,
    stdout_console,
    store_at,
)
from treerpo.store import repository

RunKind = Literal["generate", "train", "eval"]


def runs(
    kind: Annotated[RunKind | None, typer.Option(
        "--kind", help="Only runs of this kind: generate, train or eval.")] = None,
    db: DbOption = DEFAULT_DB,
    json_output: JsonOption = False,
) -> None:
    """List the runs in the store: name, kind, status, what it holds, started (UTC), model.

    Holds: the trees a run grew (generate, and chained train), the optimizer steps it recorded
    (train), the eval records it wrote (eval), its own count first.

    A run is what `--run` (generate, score, trees, train's replay sources), `--run-name`
    (train) and `eval show` take. Reads the store only: a missing store is an error, not
    created.

    `--json` prints a list of {"name", "kind", "model", "status", "trees", "steps", "records",
    "started_at", "finished_at"} (ISO 8601 times, finished_at null while running).

    Examples:

        treerpo runs

        treerpo runs --kind eval --json
    """
    with store_at(db, read_only=True) as store:
        summaries = repository.list_runs(store, kind=kind)
    if json_output:
        print_json([
            {"name": run.name, "kind": run.kind, "model": run.model, "status": run.status,
             "trees": run.trees, "steps": run.steps, "records": run.records,
             "started_at": run.started_at.isoformat(),
             "finished_at": run.finished_at.isoformat() if run.finished_at else None}
            for run in summaries
        ])
        return
    stdout_console().print(runs_table(summaries))


_STATUS_STYLE = {"finished": "green", "running": "yellow", "failed": "red"}


def run_contents(run: repository.RunSummary) -> str:
    """What the run holds, its main count first: `40 steps · 320 trees`, `2 trees`."""
    parts = [(run.steps, "steps"), (run.trees, "trees"), (run.records, "records")]
    if run.kind == "generate":
        parts.insert(0, parts.pop(1))
    elif run.kind == "eval":
        parts.insert(0, parts.pop(2))
    shown = [f"{count} {unit}" for index, (count, unit) in enumerate(parts)
             if count or index == 0]
    return " · ".join(shown)


def runs_table(summaries: list[repository.RunSummary]) -> Table:
    # Fits 80 columns: every column but the model (often a long path) keeps its cells whole.
    table = Table(title=f"{len(summaries)} run(s)", box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=(0, 1), collapse_padding=True)
    rows = [(run.name, run.kind, run.status, run_contents(run),
             run.started_at.strftime("%m-%d %H:%M"), run.model) for run in summaries]
    for index, column in enumerate(("name", "kind", "status", "holds", "started",
                                    "model")):
        if column == "model":
            table.add_column(column, overflow="fold", ratio=1)
            continue
        width = max([len(row[index]) for row in rows] + [len(column)])
        table.add_column(column, no_wrap=True, min_width=width)
    for name, kind, status, contents, started, model in rows:
        table.add_row(Text(name), kind, Text(status, style=_STATUS_STYLE.get(status, "")),
                      contents, started, Text(model))
    return table


def register(app: typer.Typer) -> None:
    app.command("runs")(runs)
