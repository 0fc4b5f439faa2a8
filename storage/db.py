"""Engine factory, schema-version check and the one place that retries locked writes."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import event, inspect, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, create_engine, select, text

from storage.fields import DEFAULT_FIELD
from storage.tables import (
    APP_ID,
    QUEUE_ORDER_INDEX,
    SCHEMA_VERSION,
    UNREADABLE_INDEX,
    ClassAlias,
    Job,
    Meta,
)

T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000
# Values bound per `IN (...)`: stays under SQLite's bound-parameter limit with room for the rest.
IN_CHUNK = 500
# Retries after SQLite's own busy_timeout gave up (or a PostgreSQL serialization failure).
WRITE_RETRIES = 6


class StoreError(Exception):
    """The database cannot be used as asked: the message says why and what to do."""


class SchemaMismatchError(StoreError):
    pass


def safe_url(url: str) -> str:
    """``url`` with its password masked, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def describe_error(exc: BaseException) -> str:
    """One line saying why a database call failed: the driver's own message, without
    SQLAlchemy's statement dump and background link."""
    orig = getattr(exc, "orig", None) or exc
    lines = [ln.strip() for ln in str(orig).splitlines() if ln.strip() and not ln.startswith("(Background")]
    return " ".join(lines) or type(orig).__name__


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str) -> Engine:
    """An engine for ``url``: SQLite gets WAL, busy_timeout and foreign keys; others are unchanged.

    ``sqlite://`` (in memory) uses one shared connection so tests see one database.
    """
    if not _is_sqlite(url):
        return create_engine(url, pool_pre_ping=True)
    memory = url in ("sqlite://", "sqlite:///:memory:")
    kwargs: dict = {"connect_args": {"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000}}
    if memory:
        kwargs["poolclass"] = StaticPool
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own is deferred and late).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    if not memory:
        _writers[engine] = threading.RLock()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        # Write units take the write lock up front so a read-then-write cannot race another writer.
        if memory and conn.connection.dbapi_connection.in_transaction:
            # sqlite:// shares one connection (StaticPool): a second session opened while the
            # first is still in its transaction joins it instead of failing on a nested BEGIN.
            return
        mode = "BEGIN IMMEDIATE" if conn.get_execution_options().get("immediate") else "BEGIN"
        conn.exec_driver_sql(mode)

    return engine


def _create_private_sqlite_file(engine: Engine) -> None:
    """Create a new SQLite file readable by its owner only (it holds password hashes); SQLite
    gives its -wal and -shm files the same mode."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return
    with contextlib.suppress(FileExistsError):  # an existing (empty) file keeps its owner's mode
        os.close(os.open(url.database, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def create_schema(engine: Engine) -> None:
    """Create the tables of a new database and stamp it with the schema version."""
    _create_private_sqlite_file(engine)  # before the first connection creates it world-readable
    names = set(inspect(engine).get_table_names())
    if "meta" in names:
        check_schema(engine)
        return
    if names:
        raise StoreError(
            f"refusing to initialise a database that already holds other tables ({', '.join(sorted(names)[:5])}): "
            "point --db at an empty database"
        )
    SQLModel.metadata.create_all(engine)
    with Session(engine) as s:
        s.add(Meta(key="app", value=APP_ID))
        s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
        s.commit()


def check_schema(engine: Engine) -> None:
    """Raise `SchemaMismatchError` unless this is an active-labeler database of our version."""
    names = set(inspect(engine).get_table_names())
    if "meta" not in names:
        what = "an empty database" if not names else "not an active-labeler database"
        raise SchemaMismatchError(f"{engine.url.render_as_string()}: {what} (run `active init` first)")
    with Session(engine) as s:
        meta = {m.key: m.value for m in s.exec(select(Meta))}
    if meta.get("app") != APP_ID:
        raise SchemaMismatchError(f"{engine.url.render_as_string()}: not an active-labeler database")
    found = meta.get("schema_version")
    if found != str(SCHEMA_VERSION):
        raise SchemaMismatchError(
            f"database schema version {found} but this active-labeler needs {SCHEMA_VERSION}: "
            "open it with the version that made it, or export and re-import; nothing was changed"
        )


def _v1_add_class_alias(conn: Any) -> None:  # noqa: ANN401
    SQLModel.metadata.create_all(conn, tables=[ClassAlias.__table__], checkfirst=True)
    UNREADABLE_INDEX.create(conn, checkfirst=True)


def _v2_user_sessions(conn: Any) -> None:  # noqa: ANN401
    # Users can be disabled, and a password change ends their sessions (generation). Columns
    # already there are left alone, like the steps above. "user" is quoted: PostgreSQL reserves it.
    have = {c["name"] for c in inspect(conn).get_columns("user")}
    if "disabled" not in have:
        conn.execute(text('ALTER TABLE "user" ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT FALSE'))
    if "generation" not in have:
        conn.execute(text('ALTER TABLE "user" ADD COLUMN generation INTEGER NOT NULL DEFAULT 0'))


def _v3_label_fields(conn: Any) -> None:  # noqa: ANN401
    # Several label fields per photo: labels and disputes name their field, and every row stored
    # so far is about the default field (the server default fills them in). Predictions keep the
    # other fields' heads' outputs in one JSON column (storage.fields).
    for table in ("label", "dispute"):
        if "field" not in {c["name"] for c in inspect(conn).get_columns(table)}:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN field VARCHAR(64) NOT NULL DEFAULT '{DEFAULT_FIELD}'"))
    # An imported label names its import batch (a re-import that changes a given label appends one).
    if "source" not in {c["name"] for c in inspect(conn).get_columns("label")}:
        conn.execute(text("ALTER TABLE label ADD COLUMN source VARCHAR(512)"))
    if "fields" not in {c["name"] for c in inspect(conn).get_columns("prediction")}:
        conn.execute(text("ALTER TABLE prediction ADD COLUMN fields JSON"))


def _add_job_table(conn: Any) -> None:  # noqa: ANN401
    # Background jobs in the store (storage.jobs): a new table and its indexes, nothing else touched.
    SQLModel.metadata.create_all(conn, tables=[Job.__table__], checkfirst=True)


def _v5_alias_fields(conn: Any) -> None:  # noqa: ANN401
    # Class aliases per label field: every alias so far renamed a class of the default field (the
    # only one `classes rename` took), and the server default says so.
    if "field" not in {c["name"] for c in inspect(conn).get_columns("classalias")}:
        conn.execute(text(f"ALTER TABLE classalias ADD COLUMN field VARCHAR(64) NOT NULL DEFAULT '{DEFAULT_FIELD}'"))


def _v6_queue_order_index(conn: Any) -> None:  # noqa: ANN401
    # The hand-out walks the queue in (round, priority) order: an index, nothing else touched.
    QUEUE_ORDER_INDEX.create(conn, checkfirst=True)


# version -> the step that upgrades a database of that version to the next one, in place.
MIGRATIONS: dict[int, Callable[[Any], None]] = {1: _v1_add_class_alias, 2: _v2_user_sessions, 3: _v3_label_fields,
                                                 4: _add_job_table, 5: _v5_alias_fields, 6: _v6_queue_order_index}


def migrate(engine: Engine) -> int | None:
    """Upgrade an active-labeler database of an older schema version in place, one step per
    version, each in its own transaction with its new version stamp. Returns the version found
    (None when it is not ours or has no version); anything it cannot upgrade is left alone for
    `check_schema` to refuse."""
    if "meta" not in set(inspect(engine).get_table_names()):
        return None
    with Session(engine) as s:
        meta = {m.key: m.value for m in s.exec(select(Meta))}
    if meta.get("app") != APP_ID or not str(meta.get("schema_version", "")).isdigit():
        return None
    found = version = int(meta["schema_version"])
    while version < SCHEMA_VERSION and version in MIGRATIONS:
        with engine.begin() as conn:
            MIGRATIONS[version](conn)
            conn.execute(Meta.__table__.update().where(Meta.__table__.c.key == "schema_version")
                         .values(value=str(version + 1)))
        version += 1
    return found


def open_engine(url: str) -> Engine:
    """An engine on an existing database, upgraded in place from an older schema version when a
    migration exists, then schema-checked; `StoreError` when it cannot be reached or used."""
    try:
        engine = make_engine(url)
        migrate(engine)
        check_schema(engine)
    except StoreError:
        raise
    except SQLAlchemyError as exc:  # unreachable server, bad credentials, not a database file
        raise StoreError(f"cannot open database {safe_url(url)}: {describe_error(exc)}") from exc
    return engine


@contextmanager
def session(engine: Engine, *, write: bool = False) -> Iterator[Session]:
    """One unit of work. ``write=True`` takes SQLite's write lock at BEGIN and commits at the end."""
    bind = engine.execution_options(immediate=True) if write else engine
    writer = _writers.get(engine) if write else None
    with _held(writer) if writer is not None else contextlib.nullcontext(), Session(bind, expire_on_commit=False) as s:
        yield s
        if write:
            s.commit()


@contextmanager
def _held(writer: threading.RLock) -> Iterator[None]:
    """The process's writer lock, waited for as long as SQLite's busy handler would wait: a
    writer stuck for longer gives the same clear error, not a wait without end."""
    if not writer.acquire(timeout=BUSY_TIMEOUT_MS / 1000):
        raise StoreError(f"the database stayed busy: another write of this process held it for "
                         f"{BUSY_TIMEOUT_MS / 1000:.0f} s")
    try:
        yield
    finally:
        writer.release()


# SQLite file engine -> the lock its write units take in this process before BEGIN IMMEDIATE.
# SQLite admits one writer at a time anyway; the others wait in its busy handler, which sleeps
# and polls (1, 2, 5, ... 100 ms), so under many annotators a writer kept missing the moment the
# lock came free and labels waited seconds behind each other. Queued on a lock in the process
# instead, the next writer starts the moment the last one commits. (Other processes, such as the
# worker or a second labeller, still meet the busy handler.)
_writers: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()


def in_chunks(session: Session, query: Any, column: Any, values: Iterable[Any], *,  # noqa: ANN401
              size: int = IN_CHUNK) -> list[Any]:
    """Rows of ``query.where(column.in_(values))``, run in chunks of ``size`` values (each value once).

    The one chunked ``IN`` of the store: any length of ``values`` works on SQLite and PostgreSQL."""
    wanted = sorted(set(values))
    out: list[Any] = []
    for start in range(0, len(wanted), size):
        out += list(session.exec(query.where(column.in_(wanted[start : start + size]))))
    return out


def _is_transient(exc: OperationalError) -> bool:
    text = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    return "locked" in text or "busy" in text or "could not serialize" in text or "deadlock" in text


def write(engine: Engine, fn: Callable[[Session], T]) -> T:
    """Run ``fn(session)`` in one write transaction, retrying with backoff when the store is busy.

    This is the one place that retries: ``fn`` must be safe to run again (it is, because a failed
    attempt rolled back everything it did).
    """
    delay = 0.05
    for attempt in range(WRITE_RETRIES + 1):
        try:
            with session(engine, write=True) as s:
                return fn(s)
        except OperationalError as exc:
            if attempt == WRITE_RETRIES or not _is_transient(exc):
                raise StoreError(f"the database stayed busy after {attempt + 1} tries: {exc.orig}") from exc
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")
