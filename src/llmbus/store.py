"""The call log: runs, calls and the response cache, in SQLite (WAL) by default or PostgreSQL.

The schema changes only through the append-only list MIGRATIONS; each is applied once and recorded.
Every later stop (eval, judge, label, distill, serve) reads and writes this one store.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from llmbus.errors import LlmbusError
from llmbus.redact import masked_url

DEFAULT_DB = "llmbus.db"

metadata = sa.MetaData()

runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("task", sa.String(200), nullable=False, index=True),
    sa.Column("task_path", sa.Text),
    sa.Column("spec_version", sa.String(32), nullable=False),
    sa.Column("spec_json", sa.Text, nullable=False),
    sa.Column("model", sa.String(400), nullable=False),
    sa.Column("metric", sa.String(40), nullable=False),
    sa.Column("n_planned", sa.Integer, nullable=False),
    sa.Column("concurrency", sa.Integer, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # running | done | interrupted
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("wall_s", sa.Float, nullable=False, default=0.0),  # summed over resumed sessions
    sa.Column("item_offset", sa.Integer, default=0),  # added by 005: eval items skipped (--offset)
    # added by 006: how eval items were ordered before offset/limit (representative | balanced | file)
    sa.Column("sampling", sa.String(20)),
)

calls = sa.Table(
    "calls", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("task", sa.String(200), nullable=False),
    sa.Column("spec_version", sa.String(32), nullable=False),
    sa.Column("item_id", sa.String(200), nullable=False),
    sa.Column("model", sa.String(400), nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("raw_output", sa.Text),
    sa.Column("parsed_json", sa.Text),
    sa.Column("confidence", sa.Float),
    sa.Column("label_probs_json", sa.Text),
    sa.Column("expected_json", sa.Text),
    sa.Column("score", sa.Float),  # this item's metric contribution (1/0 for accuracy), None on error
    sa.Column("tokens_in", sa.Integer, nullable=False, default=0),
    sa.Column("tokens_out", sa.Integer, nullable=False, default=0),
    sa.Column("latency_s", sa.Float, nullable=False, default=0.0),
    sa.Column("cost_usd", sa.Float, nullable=False, default=0.0),
    sa.Column("cpu_s", sa.Float),
    sa.Column("cache_hit", sa.Boolean, nullable=False, default=False),
    sa.Column("error_kind", sa.String(40)),
    sa.Column("error", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("meta_json", sa.Text),  # added by 004: routing decisions (cascade, cache kind, fallback)
    sa.UniqueConstraint("run_id", "item_id", name="uq_calls_run_item"),
)

cache = sa.Table(
    "cache", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(400), nullable=False),
    sa.Column("completion_json", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

key_spend = sa.Table(
    "key_spend", metadata,  # added by 008: the gateway's spend per API key, kept with each logged call
    sa.Column("key_name", sa.String(200), primary_key=True),
    sa.Column("cost_usd", sa.Float, nullable=False, default=0.0),
    sa.Column("calls", sa.Integer, nullable=False, default=0),
)

migrations_table = sa.Table(
    "migrations", metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)


# Defined once: an Index built inside the migration attached itself to `calls` again on every new database,
# so the third fresh store in one process issued CREATE INDEX twice.
ix_calls_task_item = sa.Index("ix_calls_task_item", calls.c.task, calls.c.item_id)


def _m001_runs_calls_cache(conn: Connection) -> None:
    for table in (runs, calls, cache):
        table.create(conn, checkfirst=True)
    ix_calls_task_item.create(conn, checkfirst=True)


def _m002_quality(conn: Connection) -> None:
    from llmbus.quality_store import create_quality_tables  # stop 3's tables live with their module

    create_quality_tables(conn)


def _m003_flows(conn: Connection) -> None:
    from llmbus.flowstore import create_flow_tables  # stop 4's tables live with their module

    create_flow_tables(conn)


def _add_column_if_missing(conn: Connection, table: str, column: str, ddl_type: str) -> None:
    # Databases made before a migration lack a column the table definition above now declares.
    if column not in {c["name"] for c in sa.inspect(conn).get_columns(table)}:
        conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl_type}"))


def _m004_call_meta(conn: Connection) -> None:
    _add_column_if_missing(conn, "calls", "meta_json", "TEXT")


def _m005_run_item_offset(conn: Connection) -> None:
    _add_column_if_missing(conn, "runs", "item_offset", "INTEGER DEFAULT 0")


def _m006_run_sampling(conn: Connection) -> None:
    _add_column_if_missing(conn, "runs", "sampling", "VARCHAR(20)")
    # Runs made before 006 took their items in file order: resuming one must pick the same items again.
    conn.execute(sa.text("UPDATE runs SET sampling = 'file' WHERE sampling IS NULL"))


def _m007_label_show_fields(conn: Connection) -> None:
    _add_column_if_missing(conn, "label_projects", "show_fields_json", "TEXT")


def _m008_key_spend(conn: Connection) -> None:
    key_spend.create(conn, checkfirst=True)
    # Backfill from the keys gateway calls carry in their meta (once; the gateway reads this table from now on).
    cost: dict[str, float] = {}
    count: dict[str, int] = {}
    query = sa.select(calls.c.meta_json, calls.c.cost_usd).where(calls.c.task.startswith("gateway:"),
                                                                 calls.c.meta_json.is_not(None))
    for meta_json, call_cost in conn.execute(query):
        name = json.loads(meta_json).get("key")
        if isinstance(name, str):
            cost[name] = cost.get(name, 0.0) + (call_cost or 0.0)
            count[name] = count.get(name, 0) + 1
    for name in cost:
        conn.execute(key_spend.insert().values(key_name=name, cost_usd=cost[name], calls=count[name]))


# Append only: never edit or reorder an entry once it has shipped.
MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("001_runs_calls_cache", _m001_runs_calls_cache),
    ("003_flows", _m003_flows),
    ("002_quality", _m002_quality),
    ("004_call_meta", _m004_call_meta),
    ("005_run_item_offset", _m005_run_item_offset),
    ("006_run_sampling", _m006_run_sampling),
    ("007_label_show_fields", _m007_label_show_fields),
    ("008_key_spend", _m008_key_spend),
]


def now() -> datetime:
    """The current UTC time (what every timestamp in the store uses)."""
    return datetime.now(UTC)


def database_url(db: str | None) -> str:
    """`--db` value → SQLAlchemy URL: a URL as given, else a SQLite file path ($LLMBUS_DB, ./llmbus.db)."""
    db = db or os.environ.get("LLMBUS_DB") or DEFAULT_DB
    if "://" in db:
        if db.startswith(("postgresql://", "postgres://")):
            return "postgresql+psycopg://" + db.split("://", 1)[1]
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


@dataclass
class CallRecord:
    """One answered (or failed) item of a run, as written to the call log."""

    run_id: str
    task: str
    spec_version: str
    item_id: str
    model: str
    prompt: str
    started_at: datetime
    finished_at: datetime
    raw_output: str | None = None
    parsed: Any = None
    confidence: float | None = None
    label_probs: dict[str, float] | None = None
    expected: Any = None
    score: float | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    cpu_s: float | None = None
    cache_hit: bool = False
    error_kind: str | None = None
    error: str | None = None
    meta: dict[str, Any] | None = None  # routing decisions worth keeping (cascade route, cache kind…)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        """Column values for the calls table."""
        row = asdict(self)
        row.pop("extra")
        row["parsed_json"] = _dump(row.pop("parsed"))
        row["label_probs_json"] = _dump(row.pop("label_probs"))
        row["expected_json"] = _dump(row.pop("expected"))
        row["meta_json"] = _dump(row.pop("meta"))
        return row


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def decode_call(row: dict[str, Any]) -> dict[str, Any]:
    """A calls row with its JSON columns decoded (parsed, label_probs, expected, meta)."""
    out = dict(row)
    for column in ("parsed_json", "label_probs_json", "expected_json", "meta_json"):
        value = out.pop(column)
        out[column.removesuffix("_json")] = None if value is None else json.loads(value)
    return out


class Store:
    """Access to one database; safe to share between threads."""

    def __init__(self, db: str | None = None):
        url = database_url(db)
        self.url = masked_url(url)  # for messages: never the password (the engine holds the real URL)
        self.engine = _make_engine(url)
        self.migrate()

    def migrate(self) -> None:
        """Apply every migration not yet recorded."""
        with self.engine.begin() as conn:
            migrations_table.create(conn, checkfirst=True)
            done = set(conn.scalars(sa.select(migrations_table.c.name)))
            for name, apply in MIGRATIONS:
                if name not in done:
                    apply(conn)
                    conn.execute(migrations_table.insert().values(name=name, applied_at=now()))

    # runs ------------------------------------------------------------------------------------------
    def create_run(self, *, task: str, task_path: str, spec_version: str, spec_json: str, model: str,
                   metric: str, n_planned: int, concurrency: int, item_offset: int = 0,
                   sampling: str | None = None) -> str:
        """Insert a new run and return its id."""
        run_id = secrets.token_hex(4)
        with self.engine.begin() as conn:
            conn.execute(runs.insert().values(
                id=run_id, task=task, task_path=task_path, spec_version=spec_version, spec_json=spec_json,
                model=model, metric=metric, n_planned=n_planned, concurrency=concurrency, status="running",
                created_at=now(), wall_s=0.0, item_offset=item_offset, sampling=sampling))
        return run_id

    def get_run(self, run_id: str) -> dict[str, Any]:
        """A run by id or unique id prefix."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs).where(runs.c.id.startswith(run_id, autoescape=True))).mappings().all()
        if len(rows) != 1:
            raise LlmbusError(f"run {run_id!r} {'not found' if not rows else 'is ambiguous'} in {self.url}")
        return dict(rows[0])

    def update_run(self, run_id: str, **values: Any) -> None:
        """Set columns of a run (status, finished_at, wall_s…)."""
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(**values))

    def list_runs(self, task: str | None = None) -> list[dict[str, Any]]:
        """All runs, oldest first, optionally of one task."""
        query = sa.select(runs).order_by(runs.c.created_at)
        if task:
            query = query.where(runs.c.task == task)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    # calls -----------------------------------------------------------------------------------------
    def record_call(self, record: CallRecord, spend_key: str | None = None) -> None:
        """Write one call, replacing an earlier attempt at the same item of the same run; with `spend_key`
        (a gateway key opened by `open_key_spend`, items never retried) its cost is added to that key's spend."""
        self.record_calls([record], spend_key)

    def record_calls(self, records: list[CallRecord], spend_key: str | None = None) -> None:
        """Write calls in one transaction, each replacing an earlier attempt at its item of its run (and adding
        their cost to `spend_key`'s spend)."""
        if not records:
            return
        by_run: dict[str, list[str]] = {}
        for record in records:
            by_run.setdefault(record.run_id, []).append(record.item_id)
        with self.engine.begin() as conn:
            for run_id, item_ids in by_run.items():
                conn.execute(calls.delete().where(calls.c.run_id == run_id, calls.c.item_id.in_(item_ids)))
            conn.execute(sa.insert(calls), [record.to_row() for record in records])
            if spend_key is not None:
                conn.execute(key_spend.update().where(key_spend.c.key_name == spend_key).values(
                    cost_usd=key_spend.c.cost_usd + sum(r.cost_usd for r in records),
                    calls=key_spend.c.calls + len(records)))

    # gateway spend per key --------------------------------------------------------------------------
    def open_key_spend(self, names: list[str]) -> dict[str, float]:
        """Each key's spend so far (a row is made for a new key, so later calls only add to it)."""
        for name in names:
            try:
                with self.engine.begin() as conn:
                    if conn.scalar(sa.select(key_spend.c.key_name).where(key_spend.c.key_name == name)) is None:
                        conn.execute(key_spend.insert().values(key_name=name, cost_usd=0.0, calls=0))
            except sa.exc.IntegrityError:
                pass  # another gateway on this database made it first
        with self.engine.connect() as conn:
            query = sa.select(key_spend.c.key_name, key_spend.c.cost_usd).where(key_spend.c.key_name.in_(names))
            spent = {name: cost for name, cost in conn.execute(query)}
        return {name: float(spent.get(name, 0.0)) for name in names}

    def answered_items(self, run_id: str, retry_kinds: frozenset[str] = frozenset()) -> set[str]:
        """Item ids of a run that need no new call (errors of `retry_kinds` are not counted as answered)."""
        query = sa.select(calls.c.item_id, calls.c.error_kind).where(calls.c.run_id == run_id)
        with self.engine.connect() as conn:
            return {item for item, kind in conn.execute(query) if kind not in retry_kinds}

    def iter_calls(self, run_id: str) -> Iterator[dict[str, Any]]:
        """A run's calls in item order of answering, JSON columns decoded; streams (flat memory)."""
        query = sa.select(calls).where(calls.c.run_id == run_id).order_by(calls.c.id)
        with self.engine.connect() as conn:
            for row in conn.execution_options(stream_results=True, yield_per=1000).execute(query).mappings():
                yield decode_call(dict(row))

    # response cache --------------------------------------------------------------------------------
    def cache_get(self, key: str) -> dict[str, Any] | None:
        """A cached completion (as a dict) or None."""
        with self.engine.connect() as conn:
            value = conn.scalar(sa.select(cache.c.completion_json).where(cache.c.key == key))
        return None if value is None else dict(json.loads(value))

    def cache_put(self, key: str, model: str, completion: dict[str, Any]) -> None:
        """Store a completion under its cache key (first writer wins)."""
        self.cache_put_many([(key, model, completion)])

    def cache_put_many(self, entries: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Store (key, model, completion) entries in one transaction; keys already cached keep their value."""
        fresh = {key: (model, completion) for key, model, completion in entries}
        if not fresh:
            return
        with self.engine.begin() as conn:
            taken = set(conn.scalars(sa.select(cache.c.key).where(cache.c.key.in_(list(fresh)))))
            rows = [{"key": key, "model": model, "created_at": now(), "completion_json": json.dumps(completion)}
                    for key, (model, completion) in fresh.items() if key not in taken]
            if rows:
                conn.execute(sa.insert(cache), rows)

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()


def _make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return _connected(_create_engine(url, pool_pre_ping=True, pool_size=10), url)
    path = sa.engine.make_url(url).database
    if path and path != ":memory:" and not path.startswith("file:"):
        _check_sqlite_path(Path(path))
    engine = _create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable at each commit's WAL write; fast
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return _connected(engine, url)


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
