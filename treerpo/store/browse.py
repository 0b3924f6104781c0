"""Read-only queries behind the HTML pages and `treerpo serve`: runs with their sizes, and the
run a tree belongs to. Everything else the pages show comes from `repository`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from treerpo.errors import BadInputError
from treerpo.store.database import Store
from treerpo.store.models import EvalResultRow, RunRow, TrainStepRow, TreeRow


@dataclass(frozen=True)
class RunSummary:
    name: str
    kind: str
    model: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    num_trees: int
    num_steps: int
    num_eval_records: int


def list_runs(store: Store) -> list[RunSummary]:
    """Every run, newest first, with how many trees, train steps and eval records it has."""
    trees = (select(TreeRow.run_id, func.count().label("n")).group_by(TreeRow.run_id)
             .subquery())
    steps = (select(TrainStepRow.run_id, func.count().label("n"))
             .group_by(TrainStepRow.run_id).subquery())
    records = (select(EvalResultRow.run_id, func.count().label("n"))
               .group_by(EvalResultRow.run_id).subquery())
    query = (
        select(RunRow.name, RunRow.kind, RunRow.model, RunRow.status, RunRow.started_at,
               RunRow.finished_at, func.coalesce(trees.c.n, 0), func.coalesce(steps.c.n, 0),
               func.coalesce(records.c.n, 0))
        .outerjoin(trees, trees.c.run_id == RunRow.id)
        .outerjoin(steps, steps.c.run_id == RunRow.id)
        .outerjoin(records, records.c.run_id == RunRow.id)
        .order_by(RunRow.id.desc())
    )
    with store.session() as session:
        return [RunSummary(*row) for row in session.execute(query)]


@dataclass(frozen=True)
class TreeOrigin:
    """The run that grew a tree, and the weights it was grown with."""

    run_name: str
    run_kind: str
    model: str
    policy_version: str


def tree_origin(store: Store, tree_id: int) -> TreeOrigin:
    with store.session() as session:
        row = session.execute(
            select(RunRow.name, RunRow.kind, RunRow.model, TreeRow.policy_version)
            .join(TreeRow, TreeRow.run_id == RunRow.id).where(TreeRow.id == tree_id)
        ).one_or_none()
    if row is None:
        raise BadInputError(f"no tree with id {tree_id} in the store")
    return TreeOrigin(*row)
