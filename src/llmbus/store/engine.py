"""Opening a database: `--db` value → URL → a connected SQLAlchemy engine (SQLite in WAL mode, or PostgreSQL)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from llmbus.errors import LlmbusError
from llmbus.extras import require
from llmbus.redact import masked_url
from llmbus.settings import DEFAULT_DB, db_setting

# How long a SQLite connection waits for another process's write lock before "database is locked".
SQLITE_BUSY_TIMEOUT_S = 30.0


def database_url(db: str | None) -> str:
    """`--db` value → SQLAlchemy URL: a URL as given, else a SQLite file path ($LLMBUS_DB, ./llmbus.db)."""
    db = db_setting(db)
    if "://" in db:
        if db.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
            require("postgres", "psycopg", "a PostgreSQL store")  # before SQLAlchemy's own ImportError
            return "postgresql+psycopg://" + db.split("://", 1)[1]
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def open_engine(url: str) -> Engine:
    """An engine on `url` (from `database_url`) that has opened one connection: SQLite files in WAL mode with
    foreign keys on; one clear LlmbusError for a bad URL, a missing folder, a garbage file or a refused login."""
    if not url.startswith("sqlite"):
        return _connected(_create_engine(url, pool_pre_ping=True, pool_size=10), url)
    path = sa.engine.make_url(url).database
    if path and path != ":memory:" and not path.startswith("file:"):
        _check_sqlite_path(Path(path))
    engine = _create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        _switch_to_wal(cursor)  # readers never block the writer
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable at each commit's WAL write; fast
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return _connected(engine, url)


def _switch_to_wal(cursor: sqlite3.Cursor) -> None:
    """Put the database in WAL mode, waiting for other processes doing the same.

    The switch upgrades a read lock to an exclusive one; when two connections of a fresh file try it at once,
    SQLite answers one of them "database is locked" at once instead of calling the busy handler (waiting could
    deadlock). So the loser retries with backoff, up to the busy timeout (ten processes opening one new database
    failed in about 1 round in 12 without this)."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    pause_s = 0.001
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause_s > deadline:
                raise
            time.sleep(pause_s)
            pause_s = min(pause_s * 2, 0.1)


def _create_engine(url: str, **options: Any) -> Engine:
    try:
        return sa.create_engine(url, **options)
    except (sa.exc.ArgumentError, ImportError, ValueError) as exc:  # bad URL, unknown dialect or driver
        raise LlmbusError(f"--db {masked_url(url)}: not a database URL llmbus can open ({exc})") from None


def _check_sqlite_path(path: Path) -> None:
    """A SQLite --db must be a file (or not exist yet) in a folder that exists."""
    if path.is_dir():
        raise LlmbusError(f"--db {path}: is a folder; give a database file such as {path / DEFAULT_DB}")
    if not path.parent.is_dir():
        raise LlmbusError(f"--db {path}: folder {path.parent} does not exist (create it, or give another path)")


def _connected(engine: Engine, url: str) -> Engine:
    """`engine` once one connection opened and read the schema; one clear error otherwise."""
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA schema_version")  # a file of garbage fails here, not at open
    except (sa.exc.DBAPIError, sqlite3.Error) as exc:
        engine.dispose()
        orig = getattr(exc, "orig", exc)
        reason = str(orig).strip().splitlines()[0] if str(orig).strip() else orig.__class__.__name__
        what = "open SQLite database" if engine.dialect.name == "sqlite" else "connect to database"
        raise LlmbusError(f"cannot {what} {masked_url(url).removeprefix('sqlite:///')}: {reason}") from None
    return engine
