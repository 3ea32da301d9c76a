"""What the run browser reads from the call log, a page at a time (SQL LIMIT/OFFSET: a run may hold 100k items).

Runs are listed with figures aggregated in SQL; a run's calls are filtered in SQL (wrong, errors, low
confidence, an answer or expected label); two runs are joined on their items with disagreements first.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa

from llmbus.errors import LlmbusError
from llmbus.store import CONTENT_FREE, Store, items_only
from llmbus.store.db import decode_call
from llmbus.store.schema import calls, label_items, label_projects, labels, runs

PER_PAGE = 50
# Metrics that are the mean of the per-item `score` column (a failed call scores 0), so SQL gives them exactly;
# for the others (macro-F1, entity F1, corpus chrF) the list shows the mean item score and the run page the metric.
MEAN_METRICS = frozenset({"accuracy", "exact_match", "numeric_match"})


@dataclass(frozen=True)
class RunRow:
    """One line of the runs page."""

    id: str
    task: str
    spec_version: str
    model: str
    status: str
    created_at: str
    items: int
    planned: int
    errors: int
    metric: str
    value: float | None  # the metric when it is a mean of item scores, else the mean item score
    exact: bool  # whether `value` is the metric itself
    cost_usd: float


@dataclass(frozen=True)
class CallFilter:
    """Which calls of a run to show; every field narrows the page (all unset: every call)."""

    wrong: bool = False  # failed, or scored below 1 on the run's metric
    errors: bool = False
    below: float | None = None  # confidence lower than this
    answer: str | None = None  # the parsed answer is this label
    expected: str | None = None

    def query_string(self) -> str:
        """The filter as URL query parameters (for page links)."""
        parts = {"wrong": "1" if self.wrong else None, "errors": "1" if self.errors else None,
                 "below": None if self.below is None else f"{self.below:g}", "answer": self.answer,
                 "expected": self.expected}
        return urlencode({k: v for k, v in parts.items() if v is not None})


@dataclass(frozen=True)
class Page:
    """One page of rows and where it sits among all matching rows."""

    rows: list[dict[str, Any]]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        """Number of pages (at least 1)."""
        return max(1, math.ceil(self.total / self.per_page))


def run_rows(store: Store, run_id: str | None = None) -> list[RunRow]:
    """Every run (or the one `run_id`), newest first, with item count, errors, cost and metric aggregated in one
    query."""
    figures = (sa.select(calls.c.run_id, sa.func.count().label("items"),
                         sa.func.sum(sa.case((calls.c.error_kind.is_not(None), 1), else_=0)).label("errors"),
                         sa.func.sum(calls.c.cost_usd).label("cost"), sa.func.count(calls.c.score).label("scored"),
                         sa.func.sum(sa.func.coalesce(calls.c.score, 0.0)).label("score_sum"))
               .where(items_only(), *([calls.c.run_id == run_id] if run_id else [])).group_by(calls.c.run_id)
               .subquery())
    query = (sa.select(runs.c.id, runs.c.task, runs.c.spec_version, runs.c.model, runs.c.status, runs.c.created_at,
                       runs.c.n_planned, runs.c.metric, figures)
             .outerjoin(figures, figures.c.run_id == runs.c.id).order_by(runs.c.created_at.desc()))
    if run_id:
        query = query.where(runs.c.id == run_id)
    with store.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [RunRow(id=r["id"], task=r["task"], spec_version=r["spec_version"], model=r["model"], status=r["status"],
                   created_at=str(r["created_at"])[:19], items=r["items"] or 0, planned=r["n_planned"],
                   errors=r["errors"] or 0, metric=r["metric"],
                   value=r["score_sum"] / r["items"] if r["scored"] else None, exact=r["metric"] in MEAN_METRICS,
                   cost_usd=r["cost"] or 0.0) for r in rows]


def _where(run_id: str, flt: CallFilter) -> list[Any]:
    conditions: list[Any] = [calls.c.run_id == run_id, items_only()]
    if flt.wrong:
        conditions.append(sa.or_(calls.c.error_kind.is_not(None), calls.c.score < 1.0))
    if flt.errors:
        conditions.append(calls.c.error_kind.is_not(None))
    if flt.below is not None:
        conditions.append(calls.c.confidence < flt.below)
    if flt.answer is not None:  # JSON columns are written by json.dumps(ensure_ascii=False): compare the same text
        conditions.append(calls.c.parsed_json == json.dumps(flt.answer, ensure_ascii=False))
    if flt.expected is not None:
        conditions.append(calls.c.expected_json == json.dumps(flt.expected, ensure_ascii=False))
    return conditions


def call_page(store: Store, run_id: str, flt: CallFilter = CallFilter(), page: int = 1,
              per_page: int = PER_PAGE) -> Page:
    """One page of a run's calls (in answering order) that pass the filter, JSON columns decoded."""
    page = max(1, page)
    conditions = _where(run_id, flt)
    query = (sa.select(calls).where(*conditions).order_by(calls.c.id).limit(per_page)
             .offset((page - 1) * per_page))
    with store.engine.connect() as conn:
        total = conn.scalar(sa.select(sa.func.count()).select_from(calls).where(*conditions)) or 0
        rows = [decode_call(dict(r)) for r in conn.execute(query).mappings()]
    return Page(rows, total, page, per_page)


def get_call(store: Store, run_id: str, item_id: str) -> dict[str, Any]:
    """One call of a run by item id, JSON columns decoded."""
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(calls).where(calls.c.run_id == run_id, calls.c.item_id == item_id)
                           ).mappings().first()
    if row is None:
        raise LlmbusError(f"run {run_id} has no item {item_id!r}")
    return decode_call(dict(row))


def answer_labels(run: dict[str, Any]) -> list[str]:
    """The run's declared label set (classify runs; empty otherwise), for the label filters."""
    return [str(label) for label in (json.loads(run["spec_json"]).get("output") or {}).get("labels") or []]


def side_by_side(store: Store, run_a: str, run_b: str, page: int = 1, per_page: int = PER_PAGE,
                 only_disagreements: bool = False) -> tuple[Page, int]:
    """One page of the items both runs answered, the items whose answers differ first; and how many differ."""
    a, b = calls.alias("a"), calls.alias("b")
    differ = a.c.parsed_json.is_distinct_from(b.c.parsed_json)
    conditions: list[Any] = [a.c.run_id == run_a, b.c.run_id == run_b,
                             sa.not_(a.c.item_id.startswith(CONTENT_FREE, autoescape=True))]
    joined = a.join(b, a.c.item_id == b.c.item_id)
    columns = [a.c.item_id, a.c.expected_json, differ.label("differ"),
               *(c.label(f"{side.name}_{c.name}") for side in (a, b)
                 for c in (side.c.prompt, side.c.raw_output, side.c.parsed_json, side.c.confidence, side.c.score,
                           side.c.error_kind))]
    shown = [*conditions, differ] if only_disagreements else conditions
    query = (sa.select(*columns).select_from(joined).where(*shown)
             .order_by(sa.case((differ, 0), else_=1), a.c.id).limit(per_page).offset((max(1, page) - 1) * per_page))
    counts = sa.select(sa.func.count(), sa.func.sum(sa.case((differ, 1), else_=0))).select_from(joined)
    with store.engine.connect() as conn:
        total, differing = conn.execute(counts.where(*shown)).one()
        rows = [_pair_row(dict(r)) for r in conn.execute(query).mappings()]
    return Page(rows, total or 0, max(1, page), per_page), int(differing or 0)


def _pair_row(row: dict[str, Any]) -> dict[str, Any]:
    decoded = {"item_id": row["item_id"], "differ": bool(row["differ"]), "expected": _loads(row["expected_json"])}
    for side in ("a", "b"):
        decoded[side] = {"prompt": row[f"{side}_prompt"], "raw_output": row[f"{side}_raw_output"],
                         "parsed": _loads(row[f"{side}_parsed_json"]),
                         "confidence": row[f"{side}_confidence"], "score": row[f"{side}_score"],
                         "error_kind": row[f"{side}_error_kind"]}
    return decoded


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def item_labels(store: Store, run_id: str, item_id: str) -> list[dict[str, Any]]:
    """Each labeling project on the run: whether it queued this item, and the labels people gave it."""
    found = []
    with store.engine.connect() as conn:
        for project in label_projects_of(store, run_id):
            queued = conn.scalar(sa.select(sa.func.count()).select_from(label_items).where(
                label_items.c.project == project, label_items.c.item_id == item_id))
            given = conn.execute(sa.select(labels.c.annotator, labels.c.value, labels.c.correction, labels.c.skipped)
                                 .where(labels.c.project == project, labels.c.item_id == item_id)
                                 .order_by(labels.c.id)).mappings().all()
            found.append({"project": project, "queued": bool(queued), "labels": [dict(g) for g in given]})
    return found


def label_projects_of(store: Store, run_id: str) -> list[str]:
    """Names of the labeling projects over a run."""
    with store.engine.connect() as conn:
        return list(conn.scalars(sa.select(label_projects.c.name).where(label_projects.c.run_id == run_id)
                                 .order_by(label_projects.c.name)))
