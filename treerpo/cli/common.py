"""Conventions shared by every command: the `--db` option, consoles, validation, store opening.

The CLI stays thin: a command parses options, calls one library function and renders the result.
Errors are raised as `treerpo.errors` exceptions and turned into one line + exit code by `main`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from sqlalchemy.exc import DatabaseError

from treerpo.errors import BadInputError
from treerpo.store.database import (
    DEFAULT_DB_URL,
    Store,
    display_url,
    is_damaged_store_error,
    open_store,
    shown_url,
)

DbOption = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="TREERPO_DB",
        help="Store URL: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB. Commands that "
        "write create it and print it first; read-only ones refuse a missing store.",
        show_default=True,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

DEFAULT_DB = DEFAULT_DB_URL


def stdout_console() -> Console:
    return Console(highlight=False)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def progress_bar(
    *, label: str, unit: str, console: Console, disable: bool, field: str | None = None
) -> Progress:
    """The progress bar of a long command: label, bar, done/total UNIT, an optional live
    field (rate, running accuracy), elapsed time and ETA. Gone when the command finishes."""
    columns = [TextColumn(f"[bold]{label}"), BarColumn(),
               TextColumn(f"{{task.completed}}/{{task.total}} {unit}")]
    if field is not None:
        columns.append(TextColumn(f"{{task.fields[{field}]}}"))
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=console, disable=disable, transient=True)


def print_json(payload: Any) -> None:
    """One line of JSON on stdout (no rich formatting, so it is parseable)."""
    typer.echo(json.dumps(payload, ensure_ascii=False))


@contextmanager
def store_at(url: str, *, read_only: bool = False) -> Iterator[Store]:
    """Open (and migrate to head) the store for the duration of a command.

    A command that writes announces the resolved store first (`store: URL` on stderr, so
    `--json` output stays parseable). A read-only command refuses a store that does not exist
    yet (exit 2) instead of creating an empty one, and SQLite opens it `mode=ro`. A store found
    damaged on the way is one line, exit 2.
    """
    if not read_only:
        typer.echo(f"store: {display_url(url)}", err=True)
    store = open_store(url, read_only=read_only)
    try:
        yield store
    except DatabaseError as error:
        if not is_damaged_store_error(error):
            raise
        raise BadInputError(f"store {shown_url(store.url)} is damaged ({error.orig}); restore it "
                            "from a copy or use another --db") from error
    finally:
        store.close()


ModelT = TypeVar("ModelT", bound=BaseModel)


def validated(settings_class: type[ModelT], /, **values: Any) -> ModelT:
    """Build a pydantic settings object; an invalid value becomes a one-line BadInputError
    naming the flag, e.g. `--temperature: Input should be greater than 0`."""
    try:
        return settings_class(**values)
    except ValidationError as error:
        first = error.errors()[0]
        if not first["loc"]:  # a check across fields: its message names the flags itself
            reason = first.get("ctx", {}).get("error", first["msg"])
            raise BadInputError(str(reason)) from error
        field = ".".join(str(part) for part in first["loc"])
        flag = "--" + field.replace("_", "-")
        raise BadInputError(f"{flag}: {first['msg']} (got {first.get('input')!r})") from error
