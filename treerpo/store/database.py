"""Opening a tree store: URL checks, SQLite settings, and Alembic migrations to head.

Every command opens the store through `open_store`, which refuses bad input before writing a
byte (a malformed URL or one whose driver is not installed, a FIFO or device, a file that is not a
SQLite database or not a treerpo store, a store whose revision this version does not know) and
then upgrades the schema to head. Commands that only read (`trees`, `inspect`) open with
`read_only=True`: a missing store is an error instead of a new file, and SQLite is opened with
`mode=ro`, so a store in a read-only folder can be listed. The CLI (`treerpo db ...`) and the
tests call the same few functions.

Concurrency: creating or migrating a store happens under a lock, so two processes opening a new
store at once never both run the migrations; the second waits and finds the store at head.
SQLite takes its write lock (`BEGIN IMMEDIATE`) around the Alembic upgrade; PostgreSQL takes a
transaction-level advisory lock. SQLite stores run in WAL mode (readers never block the writer)
with a 30 s busy timeout (a writer waits for another's transaction instead of failing).
"""

from __future__ import annotations

import re
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from treerpo.errors import BadInputError

DEFAULT_DB_URL = "sqlite:///data/treerpo.db"
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Stores up to this size get SQLite's `quick_check` before a command writes into them (a few
# hundred ms per GiB): a corrupt store is refused before the first write, not half-way.
QUICK_CHECK_MAX_BYTES = 1 << 30
# Any 64-bit number: every treerpo process that migrates a PostgreSQL store takes this lock.
_PG_MIGRATION_LOCK_KEY = 0x7472656572706F  # "treerpo"
# The password of a `scheme://user:password@host` URL, wherever it appears in a message.
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


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


def mask_password(text: str) -> str:
    """`text` with the password of every `scheme://user:password@host` in it replaced by ***."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def shown_url(url: URL) -> str:
    """A parsed store URL for messages: its password masked."""
    return url.render_as_string(hide_password=True)


def parse_db_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as error:  # ValueError: a port that is not a number
        raise BadInputError(f"malformed --db URL {mask_password(url)!r}: expected e.g. "
                            "sqlite:///data/treerpo.db or postgresql+psycopg://user@host/db"
                            ) from error
    if parsed.get_backend_name() not in {"sqlite", "postgresql"}:
        raise BadInputError(f"unsupported --db URL {shown_url(parsed)!r}: use sqlite:///PATH or "
                            "postgresql+psycopg://...")
    try:
        parsed.get_dialect().import_dbapi()
    except (NoSuchModuleError, ImportError) as error:
        raise BadInputError(f"--db URL {shown_url(parsed)!r}: driver {parsed.drivername!r} is not "
                            "available (use sqlite:///PATH or postgresql+psycopg://...; "
                            "PostgreSQL needs `pip install treerpo[postgres]`)") from error
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
    return shown_url(parsed)


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


def _check_is_regular_file(path: Path) -> None:
    """Refuse a folder, FIFO, device or socket before SQLite opens it (a FIFO would block
    forever; a device would get a `-journal` file created beside it)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise BadInputError(f"cannot read store {path}: {error.strerror}") from error
    if stat.S_ISDIR(mode):
        raise BadInputError(f"--db points at a folder, not a file: {path}")
    if not stat.S_ISREG(mode):
        raise BadInputError(f"--db points at {path}, which is not a regular file "
                            "(a FIFO, device or socket); give a store file path")


def _check_sqlite_file(path: Path) -> str | None:
    """Refuse a file that is not a SQLite database; return its Alembic revision (read-only)."""
    _check_is_regular_file(path)
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


def _set_sqlite_read_only_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def _create_engine(url: URL, *, read_only: bool = False) -> Engine:
    if url.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        timeout = SQLITE_BUSY_TIMEOUT_MS / 1000
        if read_only and path is not None:
            # mode=ro: nothing is created or written, and a read-only folder is fine.
            uri = f"file:{path.absolute().as_posix()}?mode=ro"
            engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(
                uri, uri=True, timeout=timeout, check_same_thread=False))
            event.listen(engine, "connect", _set_sqlite_read_only_pragmas)
            return engine
        kwargs: dict = {"connect_args": {"timeout": timeout}}
        if path is None:
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


def open_store(url: str, *, upgrade: bool = True, create: bool = True,
               read_only: bool = False) -> Store:
    """Open (and by default migrate to head) the store at `url`.

    Bad input raises `BadInputError` before anything is written. With `create=False` (commands
    that only read) a store that does not exist yet is refused instead of created. `read_only`
    implies that, and SQLite is then opened with `mode=ro` when the store is at head (an older
    store is migrated first, which writes).
    """
    parsed = parse_db_url(url)
    path = sqlite_path(parsed)
    must_exist = read_only or not create
    revision: str | None = None
    if path is not None:
        if path.is_dir():
            raise BadInputError(f"--db points at a folder, not a file: {path}")
        revision = _check_sqlite_file(path)  # a FIFO, a device, a foreign file: refused
        _refuse_unknown_revision(revision, str(path))
        if must_exist and (not path.exists() or path.stat().st_size == 0):
            raise _missing_store(display_url(url))
        if read_only and revision == head_revision():
            return _store(parsed, _create_engine(parsed, read_only=True))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BadInputError(f"cannot create the store folder {path.parent}: "
                                f"{error.strerror}") from error
    engine = _create_engine(parsed)
    try:
        if path is None:
            revision = _current_revision_of(engine)
            _refuse_unknown_revision(revision, shown_url(parsed))
            if must_exist and revision is None and parsed.get_backend_name() != "sqlite":
                raise _missing_store(display_url(url))
        if upgrade and revision != head_revision():
            upgrade_engine(engine)
        if path is not None and not read_only:
            _refuse_corrupt_sqlite(engine, path)
    except OperationalError as error:
        engine.dispose()
        raise BadInputError(f"cannot open store {shown_url(parsed)}: "
                            f"{mask_password(str(error.orig))}") from error
    except DatabaseError as error:
        if not is_damaged_store_error(error):
            raise
        engine.dispose()
        raise BadInputError(f"store {shown_url(parsed)} is damaged: {error.orig}") from error
    except BaseException:
        engine.dispose()
        raise
    return _store(parsed, engine)


def is_damaged_store_error(error: DatabaseError) -> bool:
    """A SQLite error that says the file is damaged (not a lock, a constraint or a bug)."""
    return type(error.orig) is sqlite3.DatabaseError


def _store(url: URL, engine: Engine) -> Store:
    return Store(url=url, engine=engine,
                 session_factory=sessionmaker(engine, expire_on_commit=False))


def _missing_store(where: str) -> BadInputError:
    return BadInputError(f"no store at {where}: nothing has been written there yet (generate, "
                         "train or `treerpo db upgrade` create it; --db or TREERPO_DB choose "
                         "another)")
def _refuse_corrupt_sqlite(engine: Engine, path: Path) -> None:
    """SQLite's `quick_check` on stores up to QUICK_CHECK_MAX_BYTES, before a command writes."""
    if path.stat().st_size > QUICK_CHECK_MAX_BYTES:
        return
    with engine.connect() as connection:
        problems = [row[0] for row in connection.exec_driver_sql("PRAGMA quick_check(3)")]
    if problems != ["ok"]:
        raise BadInputError(f"store {path} is damaged ({'; '.join(problems)}); restore it from "
                            "a copy or start a new store with another --db")


def upgrade_engine(engine: Engine, revision: str = "head") -> None:
    """Migrate to `revision` under a lock, so concurrent openers of a new or old store migrate it
    once: the first takes the lock and upgrades, the others wait, then find nothing to do."""
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            # The write lock (waits up to the busy timeout for another opener's migration).
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                               {"key": _PG_MIGRATION_LOCK_KEY})
        current = MigrationContext.configure(connection).get_current_revision()
        if revision != "head" or current != head_revision():
            command.upgrade(alembic_config(connection), revision)
        connection.commit()


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
        raise BadInputError(f"cannot open store {shown_url(parsed)}: "
                            f"{mask_password(str(error.orig))}") from error
    finally:
        engine.dispose()
