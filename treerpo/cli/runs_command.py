"""`treerpo runs`: list the runs in the store (read-only)."""

from __future__ import annotations

from typing import Annotated, Literal

import typer
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
    """List the runs in the store: name, kind, model, status, trees / steps / records, started.

    A run is what `--run` (generate, score, trees, train's replay sources), `--run-name`
    (train) and `eval show` take. Counts: trees grown (generate, and chained train), optimizer
    steps recorded (train), eval records (eval). Reads the store only: a missing store is an
    error, not created.

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


def runs_table(summaries: list[repository.RunSummary]) -> Table:
    table = Table(title=f"{len(summaries)} run(s)")
    for column, justify in [("name", "left"), ("kind", "left"), ("model", "left"),
                            ("status", "left"), ("trees", "right"), ("steps", "right"),
                            ("records", "right"), ("started", "left")]:
        table.add_column(column, justify=justify, overflow="fold")
    for run in summaries:
        table.add_row(
            Text(run.name), run.kind, Text(run.model),
            Text(run.status, style=_STATUS_STYLE.get(run.status, "")),
            str(run.trees), str(run.steps), str(run.records),
            run.started_at.strftime("%Y-%m-%d %H:%M"),
        )
    return table


def register(app: typer.Typer) -> None:
    app.command("runs")(runs)
