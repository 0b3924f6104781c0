"""Alembic environment for the tree store.

treerpo runs migrations programmatically (`treerpo.store.database`): the caller passes an open
connection in `config.attributes["connection"]`. Batch mode is on for SQLite from the first
revision, because SQLite cannot ALTER most constraints in place.
"""

from alembic import context

from treerpo.store.models import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("treerpo migrations need a connection: use `treerpo db upgrade`")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
run_migrations_online()
