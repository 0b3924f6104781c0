"""Writes that several processes may race on: one transaction holding the write lock, and
inserts that leave an existing row alone.

Concurrent writers (several processes on one store) never crash on each other: runs, problems
and trees are inserted with `ON CONFLICT DO NOTHING` and then read back, so a process that loses
a race finds the winner's row ("already done") instead of an IntegrityError. On SQLite, a
transaction that reads before it writes takes the write lock first (`BEGIN IMMEDIATE`): a
deferred one that read a snapshot could not upgrade it once another writer committed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from treerpo.store.database import Store


@contextmanager
def write_transaction(store: Store) -> Iterator[Session]:
    """A session in one transaction that holds the store's write lock from its start (SQLite:
    `BEGIN IMMEDIATE`, which waits up to the busy timeout for another writer)."""
    with store.session() as session, session.begin():
        if store.engine.dialect.name == "sqlite":
            session.connection().exec_driver_sql("BEGIN IMMEDIATE")
        yield session


def insert_ignoring_conflicts(store: Store, table: Any, *, unique_columns: Sequence[str]):
    """`INSERT ... ON CONFLICT (unique_columns) DO NOTHING` in the store's dialect."""
    dialect = postgresql if store.engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing(index_elements=list(unique_columns))
