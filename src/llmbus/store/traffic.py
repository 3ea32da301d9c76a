"""A served model's logged traffic: the calls of its `gateway:NAME` runs (the gateway opens one per served model
at each start), each with the raw input the client sent in its meta (`input`). `distill --from-traffic` learns
from these answers and `accept` replays them through a candidate; a replay run marks itself with
`sampling = "traffic"` and keeps each item's input in its calls' meta the same way.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from llmbus.errors import LlmbusError
from llmbus.store.db import Store, decode_call, now
from llmbus.store.schema import calls

GATEWAY_PREFIX = "gateway:"  # runs.task of the gateway's runs: gateway:<served model name>
ANSWERED_ROUTES = ("backend", "fallback", "cache_exact", "cache_semantic")  # not failed, not refused
TRAFFIC_SAMPLING = "traffic"  # runs.sampling of a run whose items are logged traffic, not dataset rows
RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")
UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def served_runs(store: Store, served: str) -> list[dict[str, Any]]:
    """The gateway runs of one served model, oldest first; one clear error when it has none."""
    found = store.list_runs(task=GATEWAY_PREFIX + served)
    if not found:
        raise LlmbusError(f"no traffic of served model {served!r} in {store.url}: its requests are logged as runs "
                          f"named {GATEWAY_PREFIX}{served} while `llmbus serve` serves it")
    return found


def is_traffic_run(run: dict[str, Any]) -> bool:
    """Whether a run's items are logged traffic (a gateway run or a replay), so their inputs are in call meta."""
    return str(run["task"]).startswith(GATEWAY_PREFIX) or run.get("sampling") == TRAFFIC_SAMPLING


def logged_input(call: dict[str, Any]) -> str | None:
    """The raw input a logged call answered, or None (not kept, or cut short by the gateway's log limit)."""
    meta = call.get("meta") or {}
    value = meta.get("input")
    return value if isinstance(value, str) and "input_chars" not in meta else None


def traffic_item_id(text: str) -> str:
    """A stable item id for a traffic input (the same text is the same item in every split and replay)."""
    return "t" + hashlib.sha256(text.encode()).hexdigest()[:15]


def traffic_calls(store: Store, run_ids: list[str], since: datetime | None = None) -> Iterator[dict[str, Any]]:
    """Answered calls of the given gateway runs that kept their raw input, newest first, streamed;
    `since` keeps the calls started at or after it."""
    query = (sa.select(calls).where(calls.c.run_id.in_(run_ids), calls.c.error_kind.is_(None))
             .order_by(calls.c.id.desc()))
    if since is not None:
        # SQLite keeps the UTC wall time without its zone: compare in UTC on every backend.
        query = query.where(calls.c.started_at >= since.astimezone(UTC))
    with store.engine.connect() as conn:
        for row in conn.execution_options(stream_results=True, yield_per=1000).execute(query).mappings():
            call = decode_call(dict(row))
            if (call["meta"] or {}).get("route") in ANSWERED_ROUTES and logged_input(call) is not None:
                yield call


def by_input(calls_newest_first: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Calls grouped by their raw input, each group newest first, groups in order of their newest call."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for call in calls_newest_first:
        groups.setdefault(str(logged_input(call)), []).append(call)
    return groups


def parse_since(text: str, option: str = "--since") -> datetime:
    """`--since` as an ISO date or time (UTC unless it names a zone) or an age such as 90m, 24h, 7d, 2w."""
    match = RELATIVE.match(text)
    if match:
        return now() - timedelta(**{UNITS[match.group(2)]: float(match.group(1))})
    try:
        stamp = datetime.fromisoformat(text.strip())
    except ValueError:
        raise LlmbusError(f"{option} {text!r}: give an ISO date or time (2026-01-31, 2026-01-31T08:00) or an age "
                          "(90m, 24h, 7d, 2w)") from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
