"""Leases on batches of a run's problems, shared by every `treerpo generate` worker of the run.

A worker claims a batch with one atomic upsert: the row is inserted when the batch is free, or
taken over when its lease has run out (its worker was killed or hung), and left alone while
another worker's lease is live; `RETURNING` tells the caller whether the batch is now its own.
On PostgreSQL the upsert locks the row, so of two workers racing for one batch exactly one gets
it (the other's `WHERE` sees the winner's fresh lease); on SQLite the write transaction holds the
store's write lock (`treerpo.store.writes`). Nothing here guarantees one tree per problem: the
trees' unique key does (a batch grown twice after a lost lease is stored once).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from treerpo.store.database import Store
from treerpo.store.models import ClaimRow, TreeRow, utcnow
from treerpo.store.writes import write_transaction


def try_claim(store: Store, *, run_id: int, epoch: int, batch_index: int, worker: str,
              lease_seconds: float) -> bool:
    """Claim batch `batch_index` of the run for `worker` for `lease_seconds`; False when another
    worker holds a live lease on it."""
    now = utcnow()
    dialect = postgresql if store.engine.dialect.name == "postgresql" else sqlite
    insert = dialect.insert(ClaimRow).values(
        run_id=run_id, epoch=epoch, batch_index=batch_index, worker=worker,
        lease_until=now + timedelta(seconds=lease_seconds))
    statement = insert.on_conflict_do_update(
        index_elements=["run_id", "epoch", "batch_index"],
        set_={"worker": insert.excluded.worker, "lease_until": insert.excluded.lease_until},
        where=(ClaimRow.lease_until < now) | (ClaimRow.worker == worker),
    ).returning(ClaimRow.batch_index)
    with write_transaction(store) as session:
        return session.execute(statement).first() is not None


def renew_claims(store: Store, *, run_id: int, worker: str, lease_seconds: float) -> int:
    """Push back the lease of every claim `worker` holds in the run; returns how many."""
    with write_transaction(store) as session:
        result = session.execute(
            update(ClaimRow)
            .where(ClaimRow.run_id == run_id, ClaimRow.worker == worker)
            .values(lease_until=utcnow() + timedelta(seconds=lease_seconds)))
        return result.rowcount


def release_claim(store: Store, *, run_id: int, epoch: int, batch_index: int,
                  worker: str) -> None:
    """Drop `worker`'s claim on a batch (stored, or given up)."""
    with write_transaction(store) as session:
        session.execute(delete(ClaimRow).where(
            ClaimRow.run_id == run_id, ClaimRow.epoch == epoch,
            ClaimRow.batch_index == batch_index, ClaimRow.worker == worker))


def release_claims(store: Store, *, run_id: int, worker: str) -> None:
    """Drop every claim `worker` holds in the run (it stops: the others need not wait)."""
    with write_transaction(store) as session:
        session.execute(delete(ClaimRow).where(ClaimRow.run_id == run_id,
                                               ClaimRow.worker == worker))


def batches_in_flight(store: Store, *, run_id: int, other_than: str) -> int:
    """Batches of the run other workers hold a live lease on: being grown right now."""
    with store.session() as session:
        return session.scalar(select(func.count()).select_from(ClaimRow).where(
            ClaimRow.run_id == run_id, ClaimRow.worker != other_than,
            ClaimRow.lease_until >= utcnow())) or 0


def trees_per_worker(store: Store, *, run_id: int) -> dict[str, int]:
    """How many of the run's trees each worker grew (trees of unnamed workers under "")."""
    with store.session() as session:
        rows = session.execute(
            select(TreeRow.worker, func.count()).where(TreeRow.run_id == run_id)
            .group_by(TreeRow.worker))
        return {worker or "": count for worker, count in rows}
