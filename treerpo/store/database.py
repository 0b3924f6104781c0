"""Opening a tree store: URL checks, SQLite settings, and Alembic migrations to head.

Every command opens the store through `open_store`, which refuses bad input before writing a
byte (a malformed URL, a file that is not a SQLite database, a store whose revision this version
does not know) and then upgrades the schema to head. The CLI (`treerpo db ...`) and the tests call
the same few functions.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from treerpo.errors import BadInputError

DEFAULT_DB_URL = "sqlite:///data/treerpo.db"
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_BUSY_TIMEOUT_MS = 30_000


@dataclass
class Store:
    """An open store: the engine and a session factory. Use `repository` functions on it."""

    url: URL
    engine: Engine
    session_factory: sessionmaker[Session]

    def session(self) -> Session:
        return self.session_factory()

    def close(self) -> None:
        self.engine.dispose()


def parse_db_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise BadInputError(f"malformed --db URL {url!r}: expected e.g. sqlite:///data/treerpo.db "
                            "or postgresql+psycopg://user@host/db") from error
    if parsed.get_backend_name() not in {"sqlite", "postgresql"}:
        raise BadInputError(f"unsupported --db URL {url!r}: use sqlite:///PATH or postgresql://...")
    return parsed


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL, or None for an in-memory or non-SQLite store."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def display_url(url: str) -> str:
    """The store as a command announces it: a SQLite file by its absolute path (the default one
    is relative to the working folder), any other URL with its password masked."""
    parsed = parse_db_url(url)
    path = sqlite_path(parsed)
    if path is not None:
        return f"sqlite:///{path.absolute()}"
    if parsed.get_backend_name() == "sqlite":
        return "sqlite:// (in memory)"
    return parsed.render_as_string(hide_password=True)


def alembic_config(connection=None) -> Config:
    if not MIGRATIONS_DIR.is_dir():
        raise FileNotFoundError(f"Alembic migrations folder missing: {MIGRATIONS_DIR}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = script_directory().get_current_head()
    assert head is not None, "migrations have no revision"
    return head


def _check_sqlite_file(path: Path) -> str | None:
    """Refuse a file that is not a SQLite database; return its Alembic revision (read-only)."""
    if not path.exists():
        return None
    try:
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as error:
        raise BadInputError(f"cannot read store {path}: {error.strerror}") from error
    if path.stat().st_size == 0:
        return None
    if header != SQLITE_HEADER:
        raise BadInputError(f"{path} is not a SQLite database (refusing to touch it)")
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "alembic_version" not in tables:
                if tables:
                    raise BadInputError(f"{path} is a SQLite database but not a treerpo store "
                                        f"(tables: {', '.join(sorted(tables)[:5])})")
                return None
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            return row[0] if row else None
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        raise BadInputError(f"{path} is not a readable SQLite database: {error}") from error


def _set_sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL: readers (inspect, trees) never block the writer (generate); busy timeout: concurrent
    # writers wait instead of failing; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # A 64 MiB page cache (default 2 MiB): a batch of trees writes tens of MB of token arrays,
    # and with the small default SQLite spills and re-reads pages mid-transaction.
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()


def _create_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        kwargs: dict = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}}
        if sqlite_path(url) is None:
            kwargs["poolclass"] = StaticPool  # one shared in-memory database
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _set_sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _current_revision_of(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _refuse_unknown_revision(revision: str | None, where: str) -> None:
    if revision is None:
        return
    known = {script.revision for script in script_directory().walk_revisions()}
    if revision not in known:
        raise BadInputError(
            f"store {where} is at schema revision {revision}, unknown to this treerpo "
            f"(head {head_revision()}): it was written by a newer version; upgrade treerpo"
        )


def open_store(url: str, *, upgrade: bool = True, create: bool = True) -> Store:
    """Open (and by default migrate to head) the store at `url`.

    Bad input raises `BadInputError` before anything is written. With `create=False` (commands
    that only read) a store that does not exist yet is refused instead of created.
    """
    parsed = parse_db_url(url)
    path = sqlite_path(parsed)
    if path is not None:
        if path.is_dir():
            raise BadInputError(f"--db points at a folder, not a file: {path}")
        if not create and (not path.exists() or path.stat().st_size == 0):
            raise _missing_store(display_url(url))
        revision = _check_sqlite_file(path)
        _refuse_unknown_revision(revision, str(path))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BadInputError(f"cannot create the store folder {path.parent}: "
                                f"{error.strerror}") from error
    engine = _create_engine(parsed)
    try:
        if path is None:
            revision = _current_revision_of(engine)
            _refuse_unknown_revision(revision, parsed.render_as_string(hide_password=True))
            if not create and revision is None and parsed.get_backend_name() != "sqlite":
                raise _missing_store(display_url(url))
        if upgrade and revision != head_revision():
            upgrade_engine(engine)
    except OperationalError as error:
        engine.dispose()
        raise BadInputError(f"cannot open store {parsed.render_as_string(hide_password=True)}: "
                            f"{error.orig}") from error
    except BaseException:
        engine.dispose()
        raise
    return Store(url=parsed, engine=engine,
                 session_factory=sessionmaker(engine, expire_on_commit=False))


def _missing_store(where: str) -> BadInputError:
    return BadInputError(f"no store at {where}: nothing has been written there yet (generate, "
                         "train or `treerpo db upgrade` create it; --db or TREERPO_DB choose "
                         "another)")


def upgrade_engine(engine: Engine, revision: str = "head") -> None:
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)


def current_revision(url: str) -> str | None:
    """The store's revision id without migrating it (None for an empty store)."""
    parsed = parse_db_url(url)
    path = sqlite_path(parsed)
    if path is not None:
        return _check_sqlite_file(path)
    engine = _create_engine(parsed)
    try:
        return _current_revision_of(engine)
    except OperationalError as error:
        raise BadInputError(f"cannot open store: {error.orig}") from error
    finally:
        engine.dispose()
