"""Read-only queries behind the HTML pages and `treerpo serve`: the run a tree belongs to.
Everything else the pages show comes from `repository`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from treerpo.errors import BadInputError
from treerpo.store.database import Store
from treerpo.store.models import RunRow, TreeRow


@dataclass(frozen=True)
class TreeOrigin:
    """The run that grew a tree, the weights it was grown with, what scored it."""

    run_name: str
    run_kind: str
    model: str
    policy_version: str
    reward_fn: str | None  # None until scored


def tree_origin(store: Store, tree_id: int) -> TreeOrigin:
    with store.session() as session:
        row = session.execute(
            select(RunRow.name, RunRow.kind, RunRow.model, TreeRow.policy_version,
                   TreeRow.reward_fn)
            .join(TreeRow, TreeRow.run_id == RunRow.id).where(TreeRow.id == tree_id)
        ).one_or_none()
    if row is None:
        raise BadInputError(f"no tree with id {tree_id} in the store")
    return TreeOrigin(*row)
