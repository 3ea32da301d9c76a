"""Human labeling in the store: projects over a run's calls, a priority queue, annotators with tokens, labels
with skip and undo, import/export as JSONL, and inter-annotator agreement.

A project's candidates are the calls of one run; items enter its queue (with a priority and the strategy that
chose them) from `llmbus label select` or when the project is created. `enqueue_calls` queues calls of any
runs by call id (`llmbus monitor` sends a served model's traffic, one gateway run per start). Labels are
linked to those calls.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa

from llmbus.errors import DataError, LabelError
from llmbus.quality.agreement import cohen_kappa, fleiss_kappa
from llmbus.quality.judge import answer_text, run_items
from llmbus.store import Store, decode_call, now
from llmbus.store.schema import annotators, calls, label_items, label_projects, labels, runs
from llmbus.task.data import read_jsonl

SCORE_VALUES = ["1", "2", "3", "4", "5"]
CONFIDENCE = "confidence"  # in show_fields: the model's confidence in its answer, from the call log


@dataclass(frozen=True)
class LabelSchema:
    """What an annotator gives: one of `labels`, a 1–5 score, or only a free-text correction; `correction`
    adds an optional free-text correction of the answer to the first two kinds."""

    kind: Literal["labels", "score", "text"]
    labels: tuple[str, ...] = ()
    correction: bool = False

    @property
    def values(self) -> tuple[str, ...]:
        """The allowed label values (empty for text-only projects)."""
        return tuple(SCORE_VALUES) if self.kind == "score" else self.labels

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (stored as JSON with the project)."""
        return {**asdict(self), "labels": list(self.labels)}


def parse_schema(kind: str, label_list: str | None, correction: bool) -> LabelSchema:
    """A schema from CLI options: kind labels needs a comma-separated label list."""
    if kind not in {"labels", "score", "text"}:
        raise LabelError(f"--schema {kind!r}: use labels, score or text")
    values = tuple(v.strip() for v in (label_list or "").split(",") if v.strip())
    if kind == "labels" and len(set(values)) < 2:
        raise LabelError("--schema labels needs --labels with at least two labels, e.g. --labels pass,fail")
    return LabelSchema(kind=kind, labels=values if kind == "labels" else (), correction=correction or kind == "text")  # type: ignore[arg-type]


def parse_show_fields(text: str | None) -> tuple[str, ...] | None:
    """`--show-fields text,label` → ("text", "label"); None (not given) keeps the default."""
    if text is None:
        return None
    return tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))


def _check_show_fields(store: Store, run: dict[str, Any], show_fields: tuple[str, ...]) -> None:
    known = {name for fields in run_items(store, run).values() for name in fields} | {CONFIDENCE}
    unknown = [name for name in show_fields if name not in known]
    if unknown:
        raise LabelError(f"--show-fields {', '.join(unknown)}: not a field of run {run['id']}'s items; "
                         f"use some of {', '.join(sorted(known))}")


def create_project(store: Store, name: str, run_id: str, schema: LabelSchema, instructions: str = "",
                   show_fields: tuple[str, ...] | None = None) -> None:
    """A new labeling project over the calls of `run_id`; `show_fields` are the item fields (and "confidence")
    annotators see besides the answer (None: the task's input field only, so no gold and no confidence)."""
    run = store.get_run(run_id)
    if show_fields is not None:
        _check_show_fields(store, run, show_fields)
    with store.engine.begin() as conn:
        if conn.scalar(sa.select(label_projects.c.name).where(label_projects.c.name == name)) is not None:
            raise LabelError(f"label project {name!r} already exists")
        conn.execute(label_projects.insert().values(
            name=name, run_id=run["id"], instructions=instructions, schema_json=json.dumps(schema.as_dict()),
            show_fields_json=None if show_fields is None else json.dumps(list(show_fields)), created_at=now()))


def set_show_fields(store: Store, name: str, show_fields: tuple[str, ...] | None) -> None:
    """Change what a project's annotators see (None: back to the default, the input field only)."""
    meta = get_project(store, name)
    if show_fields is not None:
        _check_show_fields(store, store.get_run(meta["run_id"]), show_fields)
    with store.engine.begin() as conn:
        conn.execute(label_projects.update().where(label_projects.c.name == name).values(
            show_fields_json=None if show_fields is None else json.dumps(list(show_fields))))


def get_project(store: Store, name: str) -> dict[str, Any]:
    """A project's row with its schema decoded and `show_fields` (what annotators see besides the answer)."""
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(label_projects, runs.c.spec_json).join(runs, runs.c.id == label_projects.c.run_id)
                           .where(label_projects.c.name == name)).mappings().first()
    if row is None:
        raise LabelError(f"label project {name!r} not found in {store.url} (create it with: llmbus label create)")
    project = dict(row)
    raw = json.loads(project.pop("schema_json"))
    project["schema"] = LabelSchema(kind=raw["kind"], labels=tuple(raw["labels"]), correction=raw["correction"])
    stored = project.pop("show_fields_json")
    input_field = json.loads(project.pop("spec_json")).get("data", {}).get("input", "text")
    project["show_fields"] = tuple(json.loads(stored)) if stored is not None else (input_field,)
    return project


def add_annotator(store: Store, project: str, name: str) -> str:
    """Register an annotator on a project; returns their sign-in token."""
    get_project(store, project)
    token = secrets.token_urlsafe(16)
    with store.engine.begin() as conn:
        if conn.scalar(sa.select(annotators.c.token).where(annotators.c.project == project,
                                                           annotators.c.name == name)) is not None:
            raise LabelError(f"annotator {name!r} already exists in project {project!r}")
        conn.execute(annotators.insert().values(token=token, project=project, name=name, created_at=now()))
    return token


def annotator_for(store: Store, token: str) -> tuple[str, str] | None:
    """(project, annotator name) of a sign-in token, or None."""
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(annotators.c.project, annotators.c.name)
                           .where(annotators.c.token == token)).first()
    return (row[0], row[1]) if row else None


def candidates(store: Store, project: str) -> Iterator[dict[str, Any]]:
    """Calls of the project's run that are not yet in its queue."""
    queued = set(queued_ids(store, project))
    for call in store.iter_calls(get_project(store, project)["run_id"]):
        if call["item_id"] not in queued:
            yield call


def queued_ids(store: Store, project: str) -> list[str]:
    """Item ids in the project's queue, highest priority first."""
    query = (sa.select(label_items.c.item_id).where(label_items.c.project == project)
             .order_by(label_items.c.priority.desc(), label_items.c.id))
    with store.engine.connect() as conn:
        return list(conn.scalars(query))


def queued_items(store: Store, project: str, unlabeled: bool = False) -> list[dict[str, Any]]:
    """The project's queue, highest priority first: each item's id, call, priority, how it was queued, the
    answer, all its fields and the labels it has ({annotator: label}); with `unlabeled`, only items nobody
    labeled yet. For the project owner (annotators see `annotator_view`)."""
    get_project(store, project)  # an unknown project is an error, not an empty queue
    given = labels_by_item(store, project)
    query = (sa.select(label_items).where(label_items.c.project == project)
             .order_by(label_items.c.priority.desc(), label_items.c.id))
    with store.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
    out = []
    for row in rows:
        if unlabeled and row["item_id"] in given:
            continue
        shown = json.loads(row.pop("fields_json"))
        out.append({**row, "added_at": row["added_at"].isoformat() if row["added_at"] else None,
                    "answer": shown["answer"], "expected": shown.get("expected"), "fields": shown["fields"],
                    "labels": given.get(row["item_id"], {})})
    return out


def enqueue(store: Store, project: str, chosen: list[tuple[str, float]], strategy: str) -> int:
    """Put (item_id, priority) pairs into the queue with what the annotator sees; returns how many were new."""
    meta = get_project(store, project)
    run = store.get_run(meta["run_id"])
    wanted = dict(chosen)
    calls = {c["item_id"]: c for c in store.iter_calls(run["id"]) if c["item_id"] in wanted}
    unknown = sorted(set(wanted) - set(calls))
    if unknown:
        raise LabelError(f"items not answered by run {run['id']}: {', '.join(unknown[:5])}")
    fields = run_items(store, run)
    already = set(queued_ids(store, project))
    return _insert_queued(project, [(calls[item_id], fields.get(item_id, {}), priority)
                                    for item_id, priority in chosen if item_id not in already], strategy, store)


def enqueue_calls(store: Store, project: str, chosen: list[tuple[int, float]], strategy: str) -> int:
    """Put (call id, priority) pairs into the queue, the calls from any runs (a served model's traffic spans one
    gateway run per start); item ids must not repeat within the project. Returns how many were new."""
    get_project(store, project)
    wanted = dict(chosen)
    with store.engine.connect() as conn:
        rows = [decode_call(dict(r)) for r in conn.execute(sa.select(calls).where(calls.c.id.in_(list(wanted))))
                .mappings()]
    unknown = sorted(set(wanted) - {r["id"] for r in rows})
    if unknown:
        raise LabelError(f"calls not in the call log: {', '.join(map(str, unknown[:5]))}")
    already = set(queued_ids(store, project))
    fields: dict[str, dict[str, dict[str, Any]]] = {}
    entries = []
    for call in sorted(rows, key=lambda r: -wanted[r["id"]]):
        if call["item_id"] in already:
            continue
        if call["run_id"] not in fields:
            fields[call["run_id"]] = run_items(store, store.get_run(call["run_id"]))
        entries.append((call, fields[call["run_id"]].get(call["item_id"], {}), wanted[call["id"]]))
        already.add(call["item_id"])
    return _insert_queued(project, entries, strategy, store)


def _insert_queued(project: str, entries: list[tuple[dict[str, Any], dict[str, Any], float]], strategy: str,
                   store: Store) -> int:
    """Queue (call, item fields, priority) entries with what the annotator sees."""
    rows = [{"project": project, "item_id": call["item_id"], "call_id": call["id"], "priority": priority,
             "strategy": strategy, "added_at": now(),
             "fields_json": json.dumps({"fields": fields, "answer": answer_text(call), "expected": call["expected"]},
                                       ensure_ascii=False, default=str)}
            for call, fields, priority in entries]
    if rows:
        with store.engine.begin() as conn:
            conn.execute(sa.insert(label_items), rows)
    return len(rows)


def _item(store: Store, project: str, item_id: str) -> dict[str, Any]:
    query = (sa.select(label_items, calls.c.confidence, calls.c.messages_json)
             .outerjoin(calls, calls.c.id == label_items.c.call_id)
             .where(label_items.c.project == project, label_items.c.item_id == item_id))
    with store.engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    if row is None:
        raise LabelError(f"item {item_id!r} is not in the queue of project {project!r}")
    item = {**dict(row), **json.loads(row["fields_json"])}
    messages = item.pop("messages_json", None)
    item["conversation"] = json.loads(messages) if messages else None  # a chat call's turns, shown as turns
    return item


def annotator_view(item: dict[str, Any], show_fields: tuple[str, ...]) -> dict[str, Any]:
    """What an annotator may see of a queued item or label: its id, the answer, and only the `show_fields`
    (so neither the gold answer nor the model's confidence unless the project lists them)."""
    fields = item.get("fields") or {}
    view = {"item_id": item["item_id"], "answer": item["answer"],
            "fields": {name: fields[name] for name in show_fields if name in fields and name != CONFIDENCE}}
    if item.get("conversation"):  # a chat call: the turns the model answered (shown as turns)
        view["conversation"] = item["conversation"]
    if CONFIDENCE in show_fields:
        view[CONFIDENCE] = item.get(CONFIDENCE)
    return view


def next_item(store: Store, project: str, annotator: str) -> dict[str, Any] | None:
    """The highest-priority queued item this annotator has neither labeled nor skipped."""
    done = sa.select(labels.c.item_id).where(labels.c.project == project, labels.c.annotator == annotator)
    query = (sa.select(label_items.c.item_id).where(label_items.c.project == project,
                                                    label_items.c.item_id.not_in(done))
             .order_by(label_items.c.priority.desc(), label_items.c.id).limit(1))
    with store.engine.connect() as conn:
        item_id = conn.scalar(query)
    return None if item_id is None else _item(store, project, item_id)


def progress(store: Store, project: str, annotator: str) -> tuple[int, int]:
    """(items this annotator labeled or skipped, items in the queue)."""
    with store.engine.connect() as conn:
        done = conn.scalar(sa.select(sa.func.count()).select_from(labels).where(
            labels.c.project == project, labels.c.annotator == annotator))
        total = conn.scalar(sa.select(sa.func.count()).select_from(label_items).where(label_items.c.project == project))
    return int(done or 0), int(total or 0)


def save_label(store: Store, project: str, annotator: str, item_id: str, value: str | None,
               correction: str | None = None, skipped: bool = False) -> None:
    """Record (or replace) one annotator's label or skip of a queued item, checked against the schema."""
    schema = get_project(store, project)["schema"]
    item = _item(store, project, item_id)
    if not skipped:
        if schema.kind != "text" and value not in schema.values:
            raise LabelError(f"label {value!r} is not one of {', '.join(schema.values)} (project {project!r})")
        if schema.kind == "text" and not (correction or "").strip():
            raise LabelError("this project takes a free-text correction; it is empty")
    with store.engine.begin() as conn:
        conn.execute(labels.delete().where(labels.c.project == project, labels.c.item_id == item_id,
                                           labels.c.annotator == annotator))
        conn.execute(labels.insert().values(project=project, item_id=item_id, call_id=item["call_id"],
                                            annotator=annotator, value=None if skipped else value,
                                            correction=(correction or None) if schema.correction else None,
                                            skipped=skipped, created_at=now()))


def undo(store: Store, project: str, annotator: str) -> str | None:
    """Remove this annotator's latest label or skip; returns its item id (it comes back to the queue)."""
    with store.engine.begin() as conn:
        row = conn.execute(sa.select(labels.c.id, labels.c.item_id).where(
            labels.c.project == project, labels.c.annotator == annotator).order_by(labels.c.id.desc()).limit(1)).first()
        if row is None:
            return None
        conn.execute(labels.delete().where(labels.c.id == row[0]))
    return str(row[1])


def label_rows(store: Store, project: str) -> Iterator[dict[str, Any]]:
    """Every label of a project (not skips), oldest first, with the item's fields, the answer and the model's
    confidence (all of them: for the project owner; annotators get `annotator_view` of these)."""
    query = (sa.select(labels, label_items.c.fields_json, calls.c.confidence)
             .join(label_items, sa.and_(label_items.c.project == labels.c.project,
                                        label_items.c.item_id == labels.c.item_id))
             .outerjoin(calls, calls.c.id == labels.c.call_id)
             .where(labels.c.project == project, labels.c.skipped.is_(False)).order_by(labels.c.id))
    with store.engine.connect() as conn:
        for row in conn.execute(query).mappings():
            shown = json.loads(row["fields_json"])
            yield {"project": project, "item_id": row["item_id"], "call_id": row["call_id"],
                   "annotator": row["annotator"], "label": row["value"], "correction": row["correction"],
                   "created_at": row["created_at"].isoformat() if row["created_at"] else None,
                   "answer": shown["answer"], "fields": shown["fields"], CONFIDENCE: row["confidence"]}


def export_jsonl(store: Store, project: str, annotator: str | None = None) -> Iterator[str]:
    """The project's labels as JSONL lines; with `annotator`, only theirs and only what they may see."""
    show_fields = get_project(store, project)["show_fields"]
    for row in label_rows(store, project):
        if annotator is not None:
            if row["annotator"] != annotator:
                continue
            row = {k: v for k, v in row.items() if k not in ("fields", CONFIDENCE)} | annotator_view(row, show_fields)
        yield json.dumps(row, ensure_ascii=False, default=str) + "\n"


def import_labels(store: Store, project: str, path: Path, annotator: str) -> int:
    """Labels from a JSONL file ({"item_id", "label", optional "correction"}); items not yet queued are added.
    Every line is checked before anything is written: an unknown item or label names its file and line."""
    schema = get_project(store, project)["schema"]
    queued = set(queued_ids(store, project))  # a project over traffic queues calls of several runs
    run_calls = {c["item_id"] for c in store.iter_calls(get_project(store, project)["run_id"])} | queued
    rows = []
    for line_no, row in read_jsonl(path):
        item_id, value = str(row.get("item_id", "")), row.get("label")
        if item_id not in run_calls:
            raise DataError(f"{path}:{line_no}: item_id {item_id!r} is not an item of project {project!r} "
                            f"(run {get_project(store, project)['run_id']}); nothing was imported")
        if schema.kind != "text" and str(value) not in schema.values:
            raise DataError(f"{path}:{line_no}: label {value!r} is not one of {', '.join(schema.values)}; "
                            "nothing was imported")
        rows.append((item_id, None if value is None else str(value), row.get("correction")))
    enqueue(store, project, [(item_id, 0.0) for item_id, _, _ in rows if item_id not in queued], "import")
    for item_id, value, correction in rows:
        save_label(store, project, annotator, item_id, value, correction)
    return len(rows)


def labels_by_item(store: Store, project: str) -> dict[str, dict[str, str]]:
    """{item_id: {annotator: label}} over labeled (not skipped) items."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for row in label_rows(store, project):
        if row["label"] is not None:
            out[row["item_id"]][row["annotator"]] = row["label"]
    return dict(out)


def consensus(store: Store, project: str) -> dict[str, str]:
    """The majority human label per item (ties go to the label given first)."""
    return {item: Counter(by.values()).most_common(1)[0][0] for item, by in labels_by_item(store, project).items()}


@dataclass
class Agreement:
    """Inter-annotator agreement of a project."""

    annotators: list[str]
    items_multi: int  # items labeled by two or more annotators
    cohen: dict[str, float]  # "a|b" → Cohen's kappa on the items both labeled
    fleiss: float

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json output."""
        return asdict(self)


def agreement(store: Store, project: str) -> Agreement:
    """Cohen's kappa for every pair of annotators and Fleiss' kappa over items with two or more labels."""
    by_item = labels_by_item(store, project)
    names = sorted({a for by in by_item.values() for a in by})
    cohen = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = [by for by in by_item.values() if a in by and b in by]
            if shared:
                cohen[f"{a}|{b}"] = cohen_kappa([by[a] for by in shared], [by[b] for by in shared])
    multi = [list(by.values()) for by in by_item.values() if len(by) >= 2]
    return Agreement(annotators=names, items_multi=len(multi), cohen=cohen, fleiss=fleiss_kappa(multi))
