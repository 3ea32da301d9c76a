"""The human-review queue: items a flow escalated, claimed with a lease, decided once.

Several reviewers work the same queue without double-handling: opening an item claims it for a while; a
decision is one conditional UPDATE (still pending, and claimed by this reviewer or by nobody live), so two
reviewers deciding the same item get one success and one clear conflict. An edit that must be JSON is
validated before anything is written. Approved and edited answers join the flow's example pool at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jsonschema
import sqlalchemy as sa

from llmbus.errors import InvalidEdit, LlmbusError, ReviewConflict
from llmbus.flows.log import dumps, loads
from llmbus.store import Store, now
from llmbus.store.schema import review_items

ACTIONS = {"approve": "approved", "edit": "edited", "reject": "rejected"}


@dataclass
class Decision:
    """A human decision as the flow sees it: approved / edited / rejected, the final answer, the comment."""

    action: str
    answer: str | None
    comment: str
    reviewer: str
    item_id: int

    @property
    def accepted(self) -> bool:
        """Whether the answer may be delivered."""
        return self.action in {"approved", "edited"}


class ReviewQueue:
    """Review items in a store; `lease_s` is how long opening an item keeps it for one reviewer."""

    def __init__(self, store: Store, lease_s: float = 600.0):
        self.store, self.lease = store, timedelta(seconds=lease_s)

    def create(self, run_id: str, step_key: str, payload: dict[str, Any],
               schema: dict[str, Any] | None = None) -> dict[str, Any]:
        """Queue an item for a flow step (payload: input, sources, draft, reasons; optional pool)."""
        with self.store.engine.begin() as conn:
            conn.execute(review_items.insert().values(
                flow_run_id=run_id, step_key=step_key, status="pending", created_at=now(),
                payload_json=dumps({**payload, "schema": schema})))
        item = self.for_step(run_id, step_key)
        assert item is not None
        return item

    def for_step(self, run_id: str, step_key: str) -> dict[str, Any] | None:
        """The item a flow step created, or None."""
        return self._one((review_items.c.flow_run_id == run_id) & (review_items.c.step_key == step_key))

    def get(self, item_id: int) -> dict[str, Any]:
        """An item by id."""
        item = self._one(review_items.c.id == item_id)
        if item is None:
            raise LlmbusError(f"review item {item_id} not found")
        return item

    def items(self, status: str | None = "pending") -> list[dict[str, Any]]:
        """Items oldest first (pending only by default; None for all)."""
        query = sa.select(review_items).order_by(review_items.c.id)
        if status:
            query = query.where(review_items.c.status == status)
        with self.store.engine.connect() as conn:
            return [_decode(dict(r)) for r in conn.execute(query).mappings()]

    def claim(self, item_id: int, reviewer: str) -> dict[str, Any]:
        """Hold a pending item for `reviewer`; ReviewConflict if decided or held by someone else."""
        stamp = now()
        done = self._update_if_free(item_id, reviewer, stamp, claimed_by=reviewer, claim_until=stamp + self.lease)
        item = self.get(item_id)
        if not done:
            raise ReviewConflict(conflict_message(item, reviewer))
        return item

    def decide(self, item_id: int, reviewer: str, action: str, answer: str | None = None,
               comment: str = "") -> Decision:
        """Record a decision once; the edited answer is validated first; accepted answers join the pool."""
        if action not in ACTIONS:
            raise LlmbusError(f"unknown review action {action!r}: use one of {', '.join(ACTIONS)}")
        item = self.get(item_id)
        payload = item["payload"]
        final = self._final_answer(payload, action, answer)
        stamp = now()
        done = self._update_if_free(item_id, reviewer, stamp, status=ACTIONS[action], answer=final, comment=comment,
                                    decided_by=reviewer, decided_at=stamp, claimed_by=reviewer, claim_until=None)
        if not done:
            raise ReviewConflict(conflict_message(self.get(item_id), reviewer))
        if ACTIONS[action] != "rejected" and payload.get("pool") and final is not None:
            from llmbus.flows.icl import ExamplePool

            ExamplePool(self.store, payload["pool"]).add(str(payload.get("pool_text") or payload.get("question")),
                                                         final, origin=f"review:{item_id}")
        return self.decision(self.get(item_id))

    def _update_if_free(self, item_id: int, reviewer: str, stamp: Any, **values: Any) -> bool:
        """One conditional UPDATE: only a pending item that nobody else holds right now changes."""
        free = sa.or_(review_items.c.claimed_by.is_(None), review_items.c.claimed_by == reviewer,
                      review_items.c.claim_until < stamp)
        with self.store.engine.begin() as conn:
            return bool(conn.execute(review_items.update().where(
                review_items.c.id == item_id, review_items.c.status == "pending", free).values(**values)).rowcount)

    def _final_answer(self, payload: dict[str, Any], action: str, answer: str | None) -> str | None:
        if action == "reject":
            return None
        if action == "approve":
            return str(payload.get("draft") or "")
        text = (answer or "").strip()
        if not text:
            raise InvalidEdit("the edited answer is empty")
        schema = payload.get("schema")
        if schema:
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InvalidEdit(f"the edited answer must be JSON: {exc.msg} at line {exc.lineno} "
                                  f"column {exc.colno}") from None
            try:
                jsonschema.validate(value, schema)
            except jsonschema.ValidationError as exc:
                where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
                raise InvalidEdit(f"the edited answer breaks the schema at {where}: {exc.message}") from None
        return text

    def decision(self, item: dict[str, Any]) -> Decision:
        """The Decision of a decided item."""
        return Decision(action=item["status"], answer=item["answer"], comment=item["comment"] or "",
                        reviewer=item["decided_by"] or "", item_id=item["id"])

    def _one(self, where: Any) -> dict[str, Any] | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(review_items).where(where)).mappings().first()
        return None if row is None else _decode(dict(row))


def conflict_message(item: dict[str, Any], reviewer: str) -> str:
    """Why `reviewer` cannot act on the item: already decided, or held by another reviewer."""
    if item["status"] != "pending":
        return (f"item {item['id']} was already {item['status']} by {item['decided_by']} at "
                f"{item['decided_at']:%Y-%m-%d %H:%M:%S}; nothing was changed")
    return f"item {item['id']} is being reviewed by {item['claimed_by']}; pick another item"


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    row["payload"] = loads(row.pop("payload_json"))
    return row
