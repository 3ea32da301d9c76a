"""The call log: runs, calls and the response cache, in SQLite (WAL) by default or PostgreSQL.

The tables are in schema.py and change only through migrations.py's append-only MIGRATIONS.
Every later stop (eval, judge, label, distill, serve) reads and writes this one store.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from llmbus.errors import LlmbusError
from llmbus.providers.prices import Price, price_for
from llmbus.redact import masked_url
from llmbus.store.embeddings import StoreEmbeddings
from llmbus.store.engine import database_url, open_engine
from llmbus.store.gateway_state import KeyLedger
from llmbus.store.migrations import MIGRATIONS, lock_for_migrations
from llmbus.store.rows import Call, Run
from llmbus.store.schema import cache, calls, key_spend, migrations_table, runs

# Item ids of a run's content-free calibration calls (`content-free:K:ITEM`: the K-th content-free input, asked for
# ITEM). They are rows of the run, so every paid call is in the log, but not items: readers of a run's items skip
# them, and their cost is already counted in the item that needed them.
CONTENT_FREE = "content-free:"


def now() -> datetime:
    """The current UTC time (what every timestamp in the store uses)."""
    return datetime.now(UTC)


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
    messages: list[dict[str, Any]] | None = None  # chat turns as sent (None: the prompt was one user turn)
    tool_calls: list[dict[str, Any]] | None = None  # the answer's tool calls
    reasoning: str | None = None  # a reasoning model's reasoning text
    tokens_cached: int = 0  # of tokens_in, read from the backend's prompt cache
    tokens_reasoning: int = 0  # of tokens_out, hidden reasoning tokens

    def to_row(self) -> dict[str, Any]:
        """Column values for the calls table."""
        # Field by field, not dataclasses.asdict: that deep-copies every value (and `extra`), ~20× the cost.
        row = {name: getattr(self, name) for name in _PLAIN_COLUMNS}
        row["parsed_json"] = _dump(self.parsed)
        row["label_probs_json"] = _dump(self.label_probs)
        row["expected_json"] = _dump(self.expected)
        row["meta_json"] = _dump(self.meta)
        row["messages_json"] = _dump(self.messages)
        row["tool_calls_json"] = _dump(self.tool_calls)
        return row


# CallRecord fields stored as they are (the others are JSON-encoded into *_json columns, or not stored: extra).
_PLAIN_COLUMNS = tuple(f.name for f in fields(CallRecord) if f.name not in {"parsed", "label_probs", "expected",
                                                                            "meta", "extra", "messages", "tool_calls"})


def items_only() -> sa.ColumnElement[bool]:
    """The condition that leaves a run's content-free calibration calls out of its calls."""
    return sa.not_(calls.c.item_id.startswith(CONTENT_FREE, autoescape=True))


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def decode_call(row: dict[str, Any]) -> dict[str, Any]:
    """A calls row with its JSON columns decoded (parsed, label_probs, expected, meta; messages and tool_calls
    when the row has them)."""
    out = dict(row)
    for column in ("parsed_json", "label_probs_json", "expected_json", "meta_json", "messages_json", "tool_calls_json"):
        if column in out or column in _ALWAYS_DECODED:
            value = out.pop(column)
            out[column.removesuffix("_json")] = None if value is None else json.loads(value)
    return out


_ALWAYS_DECODED = ("parsed_json", "label_probs_json", "expected_json", "meta_json")


class Store:
    """Access to one database; safe to share between threads. A context manager: leaving `with Store(db) as
    store:` releases its pooled connections."""

    def __init__(self, db: str | None = None):
        url = database_url(db)
        self.url = masked_url(url)  # for messages: never the password (the engine holds the real URL)
        self.engine = open_engine(url)
        self.migrate()
        self.embeddings = StoreEmbeddings(self.engine)  # the embedding cache `embed(..., cache=)` takes
        self._insert_calls = BulkInsert(self.engine, calls)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def migrate(self) -> list[str]:
        """Apply every migration not yet recorded, under a lock that many processes opening the same fresh
        database at once take in turn (the first applies them, the others find them done); returns the names
        this call applied."""
        applied = []
        with self.engine.begin() as conn:
            lock_for_migrations(conn)
            migrations_table.create(conn, checkfirst=True)
            done = set(conn.scalars(sa.select(migrations_table.c.name)))
            for name, apply in MIGRATIONS:
                if name not in done:
                    apply(conn)
                    conn.execute(migrations_table.insert().values(name=name, applied_at=now()))
                    applied.append(name)
        return applied

    # runs ------------------------------------------------------------------------------------------
    def create_run(self, *, task: str, task_path: str, spec_version: str, spec_json: str, model: str,
                   metric: str, n_planned: int, concurrency: int, item_offset: int = 0,
                   sampling: str | None = None, tag: str | None = None, price: Price | None = None) -> str:
        """Insert a new run and return its id (`tag` says what made it, e.g. optimize:ID). The model's price
        is stored with it (`price`, else looked up now; none for a reference that names no model)."""
        run_id = secrets.token_hex(4)
        price = price or price_for(model)
        with self.engine.begin() as conn:
            conn.execute(runs.insert().values(
                id=run_id, task=task, task_path=task_path, spec_version=spec_version, spec_json=spec_json,
                model=model, metric=metric, n_planned=n_planned, concurrency=concurrency, status="running",
                created_at=now(), wall_s=0.0, item_offset=item_offset, sampling=sampling, tag=tag,
                price_json=price.to_json() if price else None))
        return run_id

    def get_run(self, run_id: str) -> dict[str, Any]:
        """A run by id or unique id prefix."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs).where(runs.c.id.startswith(run_id, autoescape=True))).mappings().all()
        if len(rows) != 1:
            raise LlmbusError(f"run {run_id!r} {'not found' if not rows else 'is ambiguous'} in {self.url}")
        return dict(rows[0])

    def run(self, run_id: str) -> Run:
        """A run by id or unique id prefix, as a typed row."""
        return Run.from_row(self.get_run(run_id))

    def runs(self, task: str | None = None, tag: str | None = None) -> list[Run]:
        """All runs, oldest first (optionally of one task or with one tag), as typed rows."""
        return [Run.from_row(row) for row in self.list_runs(task, tag)]

    def update_run(self, run_id: str, **values: Any) -> None:
        """Set columns of a run (status, finished_at, wall_s…)."""
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(**values))

    def list_runs(self, task: str | None = None, tag: str | None = None) -> list[dict[str, Any]]:
        """All runs, oldest first, optionally of one task or with one tag."""
        query = sa.select(runs).order_by(runs.c.created_at)
        if task:
            query = query.where(runs.c.task == task)
        if tag:
            query = query.where(runs.c.tag == tag)
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
            self._insert_calls.execute(conn, [record.to_row() for record in records])
            if spend_key is not None:
                conn.execute(key_spend.update().where(key_spend.c.key_name == spend_key).values(
                    cost_usd=key_spend.c.cost_usd + sum(r.cost_usd for r in records),
                    calls=key_spend.c.calls + len(records)))

    def append_calls(self, records: list[CallRecord], spend_keys: list[str | None]) -> None:
        """Insert calls of fresh items (no earlier attempt to replace: a gateway's request ids) in one transaction,
        adding each call's cost to the spend of its key in `spend_keys` (None: no key's)."""
        if not records:
            return
        spend: dict[str, list[float]] = {}
        for record, key in zip(records, spend_keys, strict=True):
            if key is not None:
                total = spend.setdefault(key, [0.0, 0])
                total[0] += record.cost_usd
                total[1] += 1
        with self.engine.begin() as conn:
            conn.execute(sa.insert(calls), [record.to_row() for record in records])
            for key, (cost, count) in sorted(spend.items()):  # one order in every process: no lock cycles
                conn.execute(key_spend.update().where(key_spend.c.key_name == key).values(
                    cost_usd=key_spend.c.cost_usd + cost, calls=key_spend.c.calls + int(count)))

    def call_id(self, run_id: str, item_id: str) -> int | None:
        """The id of a run's call for an item (what steps, verdicts and labels link to), or None."""
        with self.engine.connect() as conn:
            found = conn.scalar(sa.select(calls.c.id).where(calls.c.run_id == run_id, calls.c.item_id == item_id))
        return None if found is None else int(found)

    # gateway spend per key --------------------------------------------------------------------------
    def open_key_spend(self, names: list[str]) -> dict[str, float]:
        """Each key's spend so far (a row is made for a new key, so later calls only add to it)."""
        return KeyLedger(self.engine).open(names)

    def answered_items(self, run_id: str, retry_kinds: frozenset[str] = frozenset()) -> set[str]:
        """Item ids of a run that need no new call (errors of `retry_kinds` are not counted as answered)."""
        query = sa.select(calls.c.item_id, calls.c.error_kind).where(calls.c.run_id == run_id, items_only())
        with self.engine.connect() as conn:
            return {item for item, kind in conn.execute(query) if kind not in retry_kinds}

    def iter_calls(self, run_id: str, content_free: bool = False) -> Iterator[dict[str, Any]]:
        """A run's calls in item order of answering, JSON columns decoded; streams (flat memory). The run's
        content-free calibration calls only with `content_free`."""
        query = sa.select(calls).where(calls.c.run_id == run_id, *([] if content_free else [items_only()]))
        query = query.order_by(calls.c.id)
        with self.engine.connect() as conn:
            for row in conn.execution_options(stream_results=True, yield_per=1000).execute(query).mappings():
                yield decode_call(dict(row))

    def calls(self, run_id: str) -> Iterator[Call]:
        """A run's calls as typed rows, in the order they were logged; streams (flat memory)."""
        return (Call.from_row(row) for row in self.iter_calls(run_id))

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
        try:
            with self.engine.begin() as conn:
                taken = set(conn.scalars(sa.select(cache.c.key).where(cache.c.key.in_(list(fresh)))))
                rows = [{"key": key, "model": model, "created_at": now(), "completion_json": json.dumps(completion)}
                        for key, (model, completion) in fresh.items() if key not in taken]
                if rows:
                    conn.execute(sa.insert(cache), rows)
        except sa.exc.IntegrityError:  # another writer stored one of the keys meanwhile: theirs stays
            if len(fresh) > 1:
                for key, (model, completion) in fresh.items():
                    self.cache_put_many([(key, model, completion)])

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()


class BulkInsert:
    """An INSERT of many rows handed to the database driver as one executemany, values converted by the same
    bind processors SQLAlchemy uses: its own per-row parameter handling costs a third of a call-log row's write."""

    def __init__(self, engine: Engine, table: sa.Table):
        columns = [column for column in table.columns if column.autoincrement is not True]
        statement = sa.insert(table).values({column.name: sa.bindparam(column.name) for column in columns})
        compiled = statement.compile(dialect=engine.dialect)
        self.sql = str(compiled)
        self.names = list(compiled.positiontup or []) if compiled.positional else [c.name for c in columns]
        self.positional = compiled.positional
        self.processors = {column.name: column.type.dialect_impl(engine.dialect).bind_processor(engine.dialect)
                           for column in columns}

    def execute(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        """Insert `rows` (column → value; every column but the autoincrement key) on `conn`."""
        converted = [{name: value if (process := self.processors[name]) is None or value is None
                      else process(value) for name, value in ((name, row[name]) for name in self.names)}
                     for row in rows]
        if self.positional:
            conn.exec_driver_sql(self.sql, [tuple(row.values()) for row in converted])
        else:
            conn.exec_driver_sql(self.sql, converted)
