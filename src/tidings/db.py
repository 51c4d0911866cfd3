"""Database engine, sessions, and the migration entry point.

SQLite is the embedded default (WAL, one writer at a time): a unit of work that may write begins with
``BEGIN IMMEDIATE``, so that it never has to upgrade from reader to writer and fail; a read-only unit of
work (:meth:`Database.read`) begins with a plain, deferred ``BEGIN`` — in WAL mode it neither waits for
the writer nor makes the writer wait. PostgreSQL is the same code with real concurrency.

API requests get a statement time-out (:meth:`Database.for_api`): ``SET LOCAL statement_timeout`` on
PostgreSQL, a progress handler that interrupts the statement on SQLite; a statement that runs out of time
answers 503 ``query_timeout`` instead of holding the request (and, on SQLite, the database) up.
The schema is owned by Alembic (``src/tidings/migrations``); production code never calls ``create_all``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, MetaData, Table, create_engine, event, text
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql import FromClause
from sqlalchemy.types import TypeDecorator

from tidings.errors import ApiError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

API_QUERY_TIMEOUT = 5.0  # seconds: each statement of an API request (and a segment estimate)
_READ_ONLY = "tidings_read_only"  # execution option of the read-only sessions' engine
_SQLITE_PROGRESS_STEPS = 10_000  # SQLite VM instructions between two looks at the clock (~0.1-1 ms)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, hands back aware UTC datetimes, on every database."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # A read-only unit of work takes no lock up front (WAL: readers and the writer do not wait
            # for each other); one that may write takes the write lock at once, so it never fails to
            # upgrade from reader to writer half-way.
            read_only = conn.get_execution_options().get(_READ_ONLY)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def is_postgres(engine_or_session: Engine | Session) -> bool:
    bind = engine_or_session.get_bind() if isinstance(engine_or_session, Session) else engine_or_session
    return bind.dialect.name == "postgresql"


class QueryTimeout(ApiError):
    def __init__(self, seconds: float) -> None:
        super().__init__(
            503,
            "query_timeout",
            f"the database did not answer within {seconds:g} s; narrow the request or try again later",
        )


def _timed_out(exc: DBAPIError) -> bool:
    """A statement stopped by its time-out: SQLite's progress handler, PostgreSQL's query_canceled."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == "57014":
        return True
    return orig.__class__.__module__.startswith("sqlite3") and "interrupted" in str(orig)


def transient(exc: BaseException) -> bool:
    """A database error that says nothing about the work being done — a lock or deadlock, a lost
    connection, a full disk, a shutdown — so the same work may succeed when tried again. A statement
    time-out is not one: the statement was too much."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    state = getattr(exc.orig, "sqlstate", None)
    if state:
        return state != "57014" and state[:2] in ("08", "40", "53", "55", "57", "58", "XX")
    message = str(exc.orig).lower()
    return any(word in message for word in ("locked", "busy", "disk", "i/o", "unable to open"))


class Database:
    """An engine plus its session factories; one per process (the app and the worker share it).

    ``query_timeout`` (seconds, None: no limit) bounds each statement of this object's sessions: the
    worker's have none; the API's view (:meth:`for_api`) has :data:`API_QUERY_TIMEOUT`."""

    def __init__(self, url: str, *, query_timeout: float | None = None) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.read_sessions = sessionmaker(
            self.engine.execution_options(**{_READ_ONLY: True}), expire_on_commit=False
        )
        self.query_timeout = query_timeout
        self._api: Database | None = None

    def for_api(self, timeout: float | None = None) -> Database:
        """The same engine and pool, with a statement time-out on every session (what request handlers
        use): ``timeout`` seconds, by default :data:`API_QUERY_TIMEOUT` as it is when called."""
        timeout = API_QUERY_TIMEOUT if timeout is None else timeout
        if self._api is None or self._api.query_timeout != timeout:
            view = copy.copy(self)
            view.query_timeout = timeout
            view._api = view
            self._api = view
        return self._api

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on error."""
        with self.sessions() as session, session.begin(), self._bounded(session):
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only unit of work on one snapshot: on SQLite a deferred ``BEGIN`` (it does not take the
        write lock, so a slow read never makes a writer wait), on PostgreSQL a read-only repeatable-read
        transaction (which never fails to serialize). Never write in it: on SQLite a write would have to
        upgrade the lock and may fail while another writer runs."""
        with self.read_sessions() as session, session.begin():
            if self.engine.dialect.name == "postgresql":
                session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
            with self._bounded(session):
                yield session

    @contextmanager
    def _bounded(self, session: Session) -> Iterator[None]:
        """Apply ``query_timeout`` to every statement of the session's transaction; a statement stopped
        by it raises :class:`QueryTimeout` (503 ``query_timeout``)."""
        timeout = self.query_timeout
        if not timeout:
            yield
            return
        if self.engine.dialect.name == "postgresql":
            session.execute(text(f"SET LOCAL statement_timeout = {max(1, round(timeout * 1000))}"))
            release = None
        else:
            release = _sqlite_deadline(session, timeout)
        try:
            yield
        except DBAPIError as exc:
            if _timed_out(exc):
                raise QueryTimeout(timeout) from exc
            raise
        finally:
            if release is not None:
                release()

    def migrate(self) -> None:
        upgrade(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_deadline(session: Session, timeout: float) -> Any:
    """A progress handler on the session's SQLite connection that interrupts a statement running longer
    than ``timeout`` (the clock restarts at each statement). Returns the function that removes it."""
    conn = session.connection()
    raw: Any = conn.connection.dbapi_connection
    started = [time.monotonic()]

    def restart(*_args: Any) -> None:
        started[0] = time.monotonic()

    def check() -> int:
        return 1 if time.monotonic() - started[0] > timeout else 0  # non-zero: SQLite interrupts

    event.listen(conn, "before_cursor_execute", restart)
    raw.set_progress_handler(check, _SQLITE_PROGRESS_STEPS)

    def release() -> None:
        event.remove(conn, "before_cursor_execute", restart)
        raw.set_progress_handler(None, 0)

    return release


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the migrations up to ``revision``. Processes that start together take turns: on PostgreSQL
    under an advisory lock, on SQLite under a lock file beside the database (the later ones find the
    schema at the revision and do nothing). A SQLite database — its file, ``-wal``, ``-shm`` and lock
    file — is readable and writable by its owner only (0600; SQLite gives a new ``-wal``/``-shm`` the
    database file's mode)."""
    from alembic import command

    with _migration_lock(engine):
        command.upgrade(alembic_config(engine), revision)


MIGRATION_LOCK_KEY = 0x7469_6469_6E67  # pg_advisory_lock's key of migrations ("tiding")


def _sqlite_path(engine: Engine) -> Path | None:
    """The database file of a SQLite engine; None for PostgreSQL and in-memory databases."""
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path)


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            conn.commit()  # the lock belongs to the session, not to this transaction
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                conn.commit()
        return
    path = _sqlite_path(engine)
    if path is None:
        yield
        return
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(path.with_name(path.name + ".migrate-lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory file locks; one process at a time is up to the user
            pass
        else:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        # Owner only: created so before SQLite makes it (an empty file is an empty database), and
        # tightened if an older Tidings made it readable by others. Only a file that does not exist yet is
        # opened here: closing any descriptor of a database file drops every POSIX lock this process's
        # SQLite connections hold on it (SQLite's "posix advisory locks" caveat), after which another
        # process may checkpoint and reset the WAL under them and they read stale pages.
        with suppress(FileExistsError):
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        for name in (path.name, path.name + "-wal", path.name + "-shm", path.name + ".migrate-lock"):
            # Another process closing its last connection removes -wal and -shm at any moment (it does
            # not hold this lock once it has migrated): a file gone between the look and the chmod is fine.
            with suppress(FileNotFoundError):
                os.chmod(path.with_name(name), 0o600)
        yield
    finally:
        os.close(lock)


def insert_ignoring_conflicts(session: Session, model: Any) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING`` for this session's database (SQLite or PostgreSQL)."""
    if is_postgres(session):
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(model).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(model).on_conflict_do_nothing()


def cast_table(table: FromClause) -> Table:
    """A mapped class's ``__table__`` as the ``Table`` it is (typed for Core statements)."""
    assert isinstance(table, Table)
    return table
