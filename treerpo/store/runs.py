"""Runs in the store: created or resumed by name, finished, listed, looked up with a suggestion.

A run is addressed by its name (unique); every stage finds or creates its run here. A mistyped
name is refused with the nearest existing names (difflib), wherever a name is looked up.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update

from treerpo.errors import BadInputError
from treerpo.store.database import Store
from treerpo.store.models import EvalResultRow, RunRow, TrainStepRow, TreeRow, utcnow
from treerpo.store.writes import insert_ignoring_conflicts, write_transaction


def refuse_run_of_other_kind(store: Store, *, name: str, kind: str) -> None:
    """BadInputError when a run called `name` exists with another kind (read-only: a command
    calls it before its first write)."""
    with store.session() as session:
        existing = session.scalar(select(RunRow.kind).where(RunRow.name == name))
    if existing is not None and existing != kind:
        raise BadInputError(f"run {name!r} already exists as a {existing} run; "
                            "choose another --run name")


def get_or_create_run(
    store: Store, *, name: str, kind: str, model: str, config: dict[str, Any]
) -> RunRow:
    """The run called `name`, created if new. An existing run keeps its first configuration
    (resuming); a run of another kind with the same name is refused. Two processes creating the
    same run at once both get the one row."""
    with write_transaction(store) as session:
        session.execute(
            insert_ignoring_conflicts(store, RunRow, unique_columns=["name"]),
            {"name": name, "kind": kind, "model": model, "config": config, "status": "running",
             "started_at": utcnow()})
        run = session.scalars(select(RunRow).where(RunRow.name == name)).one()
        if run.kind != kind:
            raise BadInputError(f"run {name!r} already exists as a {run.kind} run; "
                                "choose another --run name")
        run.status = "running"
        run.finished_at = None
        return run


def find_run(store: Store, name: str) -> RunRow:
    """The run called `name`; a wrong name is refused with the nearest existing names."""
    with store.session() as session:
        run = session.scalars(select(RunRow).where(RunRow.name == name)).one_or_none()
        if run is None:
            names = list(session.scalars(select(RunRow.name).order_by(RunRow.id)))
    if run is None:
        raise BadInputError(f"no run named {name!r} in the store; {nearest_names(name, names)}")
    return run


def nearest_names(name: str, names: Sequence[str]) -> str:
    """`did you mean: a, b` for the existing names closest to a mistyped one."""
    if not names:
        return "the store has no runs yet"
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    if not close:  # a prefix or a fragment: difflib's ratio undervalues it
        close = [candidate for candidate in names if name.lower() in candidate.lower()][:5]
    if close:
        return f"did you mean: {', '.join(close)}? (`treerpo runs` lists them)"
    return f"none is close among its {len(names)} runs (`treerpo runs` lists them)"


@dataclass(frozen=True)
class RunSummary:
    """A run as `treerpo runs` lists it; the count that matters depends on its kind."""

    name: str
    kind: str
    model: str
    status: str
    trees: int
    steps: int
    records: int
    started_at: datetime
    finished_at: datetime | None


def list_runs(store: Store, *, kind: str | None = None) -> list[RunSummary]:
    """Every run (or every run of one kind), oldest first, with its trees, train steps and eval
    records counted (three grouped counts, not one query per run)."""
    counted = {}
    with store.session() as session:
        for table in (TreeRow, TrainStepRow, EvalResultRow):
            counted[table] = dict(session.execute(
                select(table.run_id, func.count()).group_by(table.run_id)).all())
        query = select(RunRow).order_by(RunRow.id)
        if kind is not None:
            query = query.where(RunRow.kind == kind)
        runs = list(session.scalars(query))
    return [
        RunSummary(name=run.name, kind=run.kind, model=run.model, status=run.status,
                   trees=counted[TreeRow].get(run.id, 0),
                   steps=counted[TrainStepRow].get(run.id, 0),
                   records=counted[EvalResultRow].get(run.id, 0),
                   started_at=run.started_at, finished_at=run.finished_at)
        for run in runs
    ]


def stored_run_config(store: Store, *, name: str, kind: str) -> dict[str, Any] | None:
    """The configuration a run of `kind` called `name` was started with; None if there is no
    such run (another kind with that name is `get_or_create_run`'s to refuse)."""
    with store.session() as session:
        return session.scalars(select(RunRow.config).where(
            RunRow.name == name, RunRow.kind == kind)).one_or_none()


def finish_run(store: Store, run_id: int, *, status: str = "finished") -> None:
    with store.session() as session, session.begin():
        session.execute(
            update(RunRow).where(RunRow.id == run_id).values(status=status, finished_at=utcnow())
        )
