"""The gateway's state in the store, shared by every gateway process on one database: per-key spend, budget
holds and rate-limit windows (`KeyLedger`), and the semantic cache's entries (`SemanticEntries`).

Each admission is one short transaction that first locks its key's `key_spend` row (PostgreSQL: SELECT … FOR
UPDATE; SQLite: a no-op UPDATE, which takes the database's write lock), so the check and the write it guards
cannot interleave with another process's: N gateway processes allow one key's limit in total, not N times it.
A hold lapses at its `expires_at`, so a process that dies mid-request frees its holds once they expire.
Times are Unix seconds from the gateway's clock (pods of one deployment keep NTP time: a skew of milliseconds
moves a 60 s window by as much).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from llmbus.store.schema import key_holds, key_requests, key_spend, semantic_entries

WINDOW_S = 60.0  # requests_per_minute's sliding window


@dataclass
class Hold:
    """A request's estimated cost held against its key's budget until the call's real cost is counted."""

    id: str
    key_name: str
    amount_usd: float
    settled: bool = False  # set once settled or released (the serving side's bookkeeping)


@dataclass(frozen=True)
class Refusal:
    """Why a key may not make one more request now."""

    kind: str  # rate_limit | budget
    retry_after_s: float = 0.0  # rate_limit: when the oldest request in the window leaves it
    spent_usd: float = 0.0  # budget: counted spend and the holds of requests in flight
    held_usd: float = 0.0


class KeyLedger:
    """Spend, holds and recent requests per key name, in the store (thread- and process-safe)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def open(self, names: list[str]) -> dict[str, float]:
        """Make a `key_spend` row for each new key (later calls lock and add to it); each key's spend so far."""
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

    def admit(self, name: str, per_minute: int | None, budget_usd: float | None) -> Refusal | None:
        """Count one request against the key's per-minute limit, unless its budget is spent (spend plus holds
        reaching it) or the limit is reached: then nothing is counted and the refusal says why."""
        if per_minute is None and budget_usd is None:
            return None
        with self.engine.begin() as conn:
            clock = self._lock_key(conn, name)
            if budget_usd is not None:
                refusal = self._over_budget(conn, name, budget_usd, clock)
                if refusal is not None:
                    return refusal
            if per_minute is not None:
                conn.execute(key_requests.delete().where(key_requests.c.key_name == name,
                                                         key_requests.c.at <= clock - WINDOW_S))
                count, oldest = conn.execute(sa.select(sa.func.count(), sa.func.min(key_requests.c.at)).where(
                    key_requests.c.key_name == name)).one()
                if count >= per_minute:
                    return Refusal("rate_limit", retry_after_s=float(oldest) + WINDOW_S - clock)
                conn.execute(key_requests.insert().values(key_name=name, at=clock))
        return None

    def hold(self, name: str, budget_usd: float, amount_usd: float, ttl_s: float) -> Hold | Refusal:
        """Hold `amount_usd` against the budget for at most `ttl_s` (refused once spend and holds reach it)."""
        with self.engine.begin() as conn:
            clock = self._lock_key(conn, name)
            refusal = self._over_budget(conn, name, budget_usd, clock)
            if refusal is not None:
                return refusal
            hold = Hold(secrets.token_hex(8), name, amount_usd)
            conn.execute(key_holds.insert().values(id=hold.id, key_name=name, amount_usd=amount_usd,
                                                   expires_at=clock + ttl_s))
        return hold

    def settle(self, hold: Hold | None, name: str, cost_usd: float) -> None:
        """Count a logged call's real cost against key `name` and drop its hold, in one transaction."""
        with self.engine.begin() as conn:
            conn.execute(key_spend.update().where(key_spend.c.key_name == name).values(
                cost_usd=key_spend.c.cost_usd + cost_usd, calls=key_spend.c.calls + 1))
            if hold is not None:
                conn.execute(key_holds.delete().where(key_holds.c.id == hold.id))

    def release(self, hold: Hold) -> None:
        """Drop a hold whose call was never logged (the request failed before it)."""
        with self.engine.begin() as conn:
            conn.execute(key_holds.delete().where(key_holds.c.id == hold.id))

    def _lock_key(self, conn: Connection, name: str) -> float:
        """Lock the key's spend row for this transaction; returns the time the check is made at."""
        if conn.dialect.name == "sqlite":  # a write first: the transaction holds the write lock from here on
            conn.execute(key_spend.update().where(key_spend.c.key_name == name).values(calls=key_spend.c.calls))
        else:
            conn.execute(sa.select(key_spend.c.key_name).where(key_spend.c.key_name == name).with_for_update())
        return time.time()

    def _over_budget(self, conn: Connection, name: str, budget_usd: float, clock: float) -> Refusal | None:
        """The budget refusal when spend plus live holds reach the budget (expired holds are dropped)."""
        conn.execute(key_holds.delete().where(key_holds.c.key_name == name, key_holds.c.expires_at < clock))
        spent = float(conn.scalar(sa.select(key_spend.c.cost_usd).where(key_spend.c.key_name == name)) or 0.0)
        held = float(conn.scalar(sa.select(sa.func.coalesce(sa.func.sum(key_holds.c.amount_usd), 0.0)).where(
            key_holds.c.key_name == name)) or 0.0)
        return Refusal("budget", spent_usd=spent, held_usd=held) if spent + held >= budget_usd else None


class SemanticEntries:
    """The semantic cache's entries in the store: written as they are added, read back at a gateway's start."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def put(self, scope: str, text: str, vector: np.ndarray, answer: Any) -> None:
        """Keep one entry."""
        with self.engine.begin() as conn:
            conn.execute(semantic_entries.insert().values(
                scope=scope, text=text, dim=int(vector.shape[0]),
                vector=np.ascontiguousarray(vector, dtype="<f4").tobytes(), answer_json=json.dumps(answer),
                created_at=datetime.now(UTC)))

    def load(self, prefixes: list[str], newest: int) -> Iterator[tuple[str, str, np.ndarray, Any]]:
        """(scope, text, vector, answer) of the newest `newest` entries of each scope starting with one of
        `prefixes`, oldest first."""
        for prefix in prefixes:
            scopes = sa.select(semantic_entries.c.scope).where(
                semantic_entries.c.scope.startswith(prefix, autoescape=True)).distinct()
            with self.engine.connect() as conn:
                for (scope,) in conn.execute(scopes).all():
                    yield from self._newest(conn, scope, newest)

    def _newest(self, conn: Connection, scope: str, newest: int) -> Iterator[tuple[str, str, np.ndarray, Any]]:
        query = (sa.select(semantic_entries.c.text, semantic_entries.c.dim, semantic_entries.c.vector,
                           semantic_entries.c.answer_json)
                 .where(semantic_entries.c.scope == scope).order_by(semantic_entries.c.id.desc()).limit(newest))
        rows = conn.execute(query).all()
        for text, dim, blob, answer_json in reversed(rows):
            if len(blob) == 4 * dim:  # a truncated vector is skipped, not loaded
                yield scope, text, np.frombuffer(blob, dtype="<f4").astype(np.float32), json.loads(answer_json)
