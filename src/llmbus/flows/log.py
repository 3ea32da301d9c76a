"""Stop 4's rows in the one store: flow runs, their durable steps, review items, the example pool, chunks.

A step row is written (status done or failed) before the next step runs, keyed by (flow run, step key):
resuming a run replays recorded outputs instead of repeating paid calls. The tables are in
store/schema.py (created by the "003_flows" migration); this module adds the rows' reads and writes.
LLM and task steps also write their model call to the one call log (`FlowCalls`), linked from the step row.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
from datetime import UTC, timedelta
from typing import Any

import sqlalchemy as sa

from llmbus.errors import LlmbusError
from llmbus.store import CallRecord, Store, now
from llmbus.store.schema import flow_runs, flow_steps

LEASE = timedelta(minutes=5)


def dumps(value: Any) -> str | None:
    """JSON for a column (None stays NULL)."""
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


def loads(text: str | None) -> Any:
    """A JSON column back to Python."""
    return None if text is None else json.loads(text)


def process_id() -> str:
    """host:pid of this process: the lease owner written on runs it executes."""
    return f"{socket.gethostname()}:{os.getpid()}"


class FlowLog:
    """Reads and writes flow runs and steps in a Store."""

    def __init__(self, store: Store):
        self.store = store
        self.engine = store.engine

    def create_run(self, flow: str, flow_path: str, input_value: Any, settings: dict[str, Any]) -> str:
        """A new flow run in status running; returns its id."""
        run_id = secrets.token_hex(5)
        with self.engine.begin() as conn:
            conn.execute(flow_runs.insert().values(
                id=run_id, flow=flow, flow_path=flow_path, input_json=dumps(input_value),
                settings_json=dumps(settings), status="running", created_at=now(), updated_at=now()))
        return run_id

    def get_run(self, run_id: str) -> dict[str, Any]:
        """A flow run by id or unique prefix, JSON columns decoded."""
        query = sa.select(flow_runs).where(flow_runs.c.id.startswith(run_id, autoescape=True))
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        if len(rows) != 1:
            raise LlmbusError(f"flow run {run_id!r} {'not found' if not rows else 'is ambiguous'} in {self.store.url}")
        return _decode(dict(rows[0]), ("input_json", "settings_json", "output_json"))

    def list_runs(self, flow: str | None = None) -> list[dict[str, Any]]:
        """Flow runs, oldest first."""
        query = sa.select(flow_runs).order_by(flow_runs.c.created_at)
        if flow:
            query = query.where(flow_runs.c.flow == flow)
        with self.engine.connect() as conn:
            return [_decode(dict(r), ("input_json", "settings_json", "output_json"))
                    for r in conn.execute(query).mappings()]

    def update_run(self, run_id: str, **values: Any) -> None:
        """Set columns of a flow run (status, output_json, error…)."""
        with self.engine.begin() as conn:
            conn.execute(flow_runs.update().where(flow_runs.c.id == run_id).values(updated_at=now(), **values))

    def acquire(self, run_id: str, owner: str) -> None:
        """Take the run's lease, or fail naming the live process that holds it (a dead one is taken over)."""
        stamp = now()
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(flow_runs.c.lease_owner, flow_runs.c.lease_until)
                               .where(flow_runs.c.id == run_id)).one()
            holder, until = row
            if holder and holder != owner and until is not None and _aware(until) > stamp and _alive(holder):
                raise LlmbusError(f"flow run {run_id} is being executed by {holder} (lease until "
                                  f"{_aware(until):%H:%M:%S} UTC); wait for it or retry later")
            conn.execute(flow_runs.update().where(flow_runs.c.id == run_id)
                         .values(lease_owner=owner, lease_until=stamp + LEASE))

    def release(self, run_id: str) -> None:
        """Drop the run's lease."""
        self.update_run(run_id, lease_owner=None, lease_until=None)

    # steps ---------------------------------------------------------------------------------------
    def get_step(self, run_id: str, key: str) -> dict[str, Any] | None:
        """One step of a run by key, JSON decoded, or None."""
        query = sa.select(flow_steps).where(flow_steps.c.flow_run_id == run_id, flow_steps.c.key == key)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _decode(dict(row), ("input_json", "output_json", "detail_json"))

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        """All steps of a run in the order they were first started."""
        query = sa.select(flow_steps).where(flow_steps.c.flow_run_id == run_id).order_by(flow_steps.c.id)
        with self.engine.connect() as conn:
            return [_decode(dict(r), ("input_json", "output_json", "detail_json"))
                    for r in conn.execute(query).mappings()]

    def write_step(self, run_id: str, key: str, **values: Any) -> None:
        """Insert or update one step row (one transaction: it is durable when this returns)."""
        for column in ("input_json", "output_json", "detail_json"):
            if column in values:
                values[column] = dumps(values[column])
        with self.engine.begin() as conn:
            where = (flow_steps.c.flow_run_id == run_id) & (flow_steps.c.key == key)
            old = conn.execute(sa.select(flow_steps.c.attempts).where(where)).first()
            if old is None:
                conn.execute(flow_steps.insert().values(flow_run_id=run_id, key=key, **values))
            else:
                if values.get("status") == "running":  # a new attempt at a step that failed or was cut off
                    values["attempts"] = old[0] + 1
                conn.execute(flow_steps.update().where(where).values(**values))
        self.store_heartbeat(run_id)

    def store_heartbeat(self, run_id: str) -> None:
        """Extend the lease of a run this process executes."""
        with self.engine.begin() as conn:
            conn.execute(flow_runs.update().where(flow_runs.c.id == run_id, flow_runs.c.lease_owner == process_id())
                         .values(lease_until=now() + LEASE, updated_at=now()))


class FlowCalls:
    """The `calls` rows of the llm and task steps that one invocation executes (`flow run` on an input or a
    dataset, `flow resume`): one run named flow:NAME, made at the first model call, like the gateway's run per
    served model per start. Its calls can be evaluated, judged and labeled like any run's."""

    def __init__(self, store: Store, flow: str, flow_path: str, model: str):
        self.store, self.flow, self.flow_path, self.model = store, flow, flow_path, model
        self.run_id: str | None = None
        self.count = 0

    def record(self, record: CallRecord) -> int | None:
        """Write one step's call (into this invocation's run, made now if need be); returns its id."""
        if self.run_id is None:
            self.run_id = self.store.create_run(task=f"flow:{self.flow}", task_path=self.flow_path, spec_version="-",
                                                spec_json="{}", model=self.model, metric="none", n_planned=0,
                                                concurrency=1)
        record.run_id = self.run_id
        self.store.record_call(record)
        self.count += 1
        return self.store.call_id(self.run_id, record.item_id)

    def close(self) -> None:
        """Mark the run done (when a step called a model at all)."""
        if self.run_id is not None:
            self.store.update_run(self.run_id, status="done", finished_at=now(), n_planned=self.count)


def call_item_id(flow_run_id: str, key: str) -> str:
    """A step's item id in the call log: flow run and step key (hashed when too long for the column)."""
    item = f"{flow_run_id}:{key}"
    return item if len(item) <= 200 else f"{flow_run_id}:{hashlib.sha256(key.encode()).hexdigest()}"


def _decode(row: dict[str, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    for column in columns:
        row[column.removesuffix("_json")] = loads(row.pop(column))
    return row


def _aware(stamp: Any) -> Any:
    """SQLite returns naive datetimes: read them as UTC."""
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _alive(owner: str) -> bool:
    """Whether a lease owner host:pid still runs (other hosts are assumed alive until the lease ends)."""
    import psutil

    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True
    return pid.isdigit() and psutil.pid_exists(int(pid))
