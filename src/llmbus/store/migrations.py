"""The store's schema changes, in order: each is applied once per database and recorded in `migrations`.

Append only: the names and their order are what existing databases have recorded.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from llmbus.store.schema import (
    FLOW_TABLES,
    GATEWAY_STATE_TABLES,
    MONITOR_TABLES,
    QUALITY_TABLES,
    cache,
    calls,
    canary_decisions,
    embeddings,
    ix_calls_task_item,
    ix_runs_tag,
    key_spend,
    runs,
)

# pg_advisory_xact_lock's key: any fixed 64-bit number no other program on the database uses ("llmbus" in ASCII).
MIGRATION_LOCK_KEY = 0x6C6C6D627573


def lock_for_migrations(conn: Connection) -> None:
    """Take the database-wide migration lock for the rest of `conn`'s transaction.

    Without it, ten processes opening one fresh database at once all try CREATE TABLE and nine die on a
    unique violation. PostgreSQL: a transaction-scoped advisory lock (released at commit or rollback, also when
    the process dies). SQLite: BEGIN IMMEDIATE, the database's write lock, taken before the first read so the
    check of what is applied and the migrations themselves are one step (waits up to the busy timeout)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _m001_runs_calls_cache(conn: Connection) -> None:
    for table in (runs, calls, cache):
        table.create(conn, checkfirst=True)
    ix_calls_task_item.create(conn, checkfirst=True)


def _m002_quality(conn: Connection) -> None:
    for table in QUALITY_TABLES:
        table.create(conn, checkfirst=True)


def _m003_flows(conn: Connection) -> None:
    for table in FLOW_TABLES:
        table.create(conn, checkfirst=True)


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


def _m009_embeddings(conn: Connection) -> None:
    embeddings.create(conn, checkfirst=True)


def _m010_flow_step_calls(conn: Connection) -> None:
    _add_column_if_missing(conn, "flow_steps", "call_id", "INTEGER")


def _m011_monitor(conn: Connection) -> None:
    for table in MONITOR_TABLES:
        table.create(conn, checkfirst=True)


def _m012_canary(conn: Connection) -> None:
    canary_decisions.create(conn, checkfirst=True)


def _m013_run_tag(conn: Connection) -> None:
    _add_column_if_missing(conn, "runs", "tag", "VARCHAR(100)")
    ix_runs_tag.create(conn, checkfirst=True)


def _m014_chat(conn: Connection) -> None:
    for column in ("messages_json", "tool_calls_json", "reasoning"):
        _add_column_if_missing(conn, "calls", column, "TEXT")


def _m015_token_kinds(conn: Connection) -> None:
    _add_column_if_missing(conn, "calls", "tokens_cached", "INTEGER NOT NULL DEFAULT 0")
    _add_column_if_missing(conn, "calls", "tokens_reasoning", "INTEGER NOT NULL DEFAULT 0")
    _add_column_if_missing(conn, "runs", "price_json", "TEXT")


def _m016_gateway_state(conn: Connection) -> None:
    for table in GATEWAY_STATE_TABLES:
        table.create(conn, checkfirst=True)


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
    ("009_embeddings", _m009_embeddings),
    ("010_flow_step_calls", _m010_flow_step_calls),
    ("011_monitor", _m011_monitor),
    ("012_canary", _m012_canary),
    ("013_run_tag", _m013_run_tag),
    ("014_chat", _m014_chat),
    ("015_token_kinds", _m015_token_kinds),
    ("016_gateway_state", _m016_gateway_state),
]
