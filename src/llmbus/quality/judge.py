"""LLM judges. A judge is itself a task spec: a classify spec whose labels are the verdicts.

- pointwise: labels such as [pass, fail] or ["1", "2", "3", "4", "5"]; one judge call per judged answer.
- pairwise: labels [A, B, tie]; every item is judged twice, A/B in both orders, and the two verdicts are
  combined so position bias cancels (orders that disagree count as a tie).

The judge's data file holds solved judging examples (the few-shot pool and the judge's own eval split). The
prompt sees the judged run's item fields plus `item.answer` (pairwise: `item.answer_a`, `item.answer_b`),
already inside <answer>…</answer> delimiters that the judged text cannot close; a judged chat call adds
`item.conversation` (its turns as one fenced text) and `item.messages` (the turns). With local models the verdict
is label-scored, so it is always one of the labels and carries a probability; remote answers outside the label
set are logged with their raw text and counted as broken verdicts.

A judge run is an ordinary run in the call log (its calls are the judge's model calls, with cost and
latency); `judge_runs` and `verdicts` link it to the run and calls it judged.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa

from llmbus.embed import StageCallback
from llmbus.errors import JudgeSchemaError, LlmbusError, SpecError
from llmbus.providers import Provider, open_provider
from llmbus.run.adapter import CallPlan, answer_batch, job_of
from llmbus.store import CallRecord, Store, now
from llmbus.store.schema import calls, judge_runs, verdicts
from llmbus.store.traffic import is_traffic_run, logged_input
from llmbus.task.chat import transcript
from llmbus.task.data import Item, load_items, split_items
from llmbus.task.fewshot import ExampleSelector
from llmbus.task.render import render
from llmbus.task.spec import TaskSpec, load_spec
from llmbus.telemetry import carry_context, span

PAIRWISE_LABELS = ({"A", "B"}, {"A", "B", "tie"})
FENCED_FIELDS = ("answer", "answer_a", "answer_b")
SCORE_LABELS = [str(k) for k in range(1, 6)]
JUDGE_INPUT = "_judge_input"
log = logging.getLogger(__name__)


@dataclass
class Verdict:
    """One judgment: the chosen label (None when the judge broke its contract), its probability and score."""

    item_id: str
    verdict: str | None
    score: float | None
    confidence: float | None
    probs: dict[str, float] | None
    call_id: int | None
    other_call_id: int | None = None
    judge_call_ids: list[int] = field(default_factory=list)
    consistent: bool | None = None
    error_kind: str | None = None


@dataclass
class JudgeReport:
    """What `llmbus judge run` prints."""

    judge_run_id: str
    judge: str
    mode: str
    model: str
    target_run_id: str
    other_run_id: str | None
    n: int
    broken: int
    counts: dict[str, int]
    mean_score: float | None
    cost_usd: float
    cost_per_1k: float
    position_consistency: float | None = None
    example_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json output."""
        return asdict(self)


def fence(text: Any) -> str:
    """The judged text inside <answer>…</answer>; delimiters inside the text are defused so it cannot close
    the block and speak to the judge as the rubric."""
    raw = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False)
    raw = re.sub(r"<\s*(/?)\s*answer\s*>", lambda m: f"‹{m.group(1)}answer›", raw, flags=re.I)
    return f"<answer>{raw}</answer>"


def load_judge(path: str) -> TaskSpec:
    """A judge spec: a classify task spec whose labels are verdicts."""
    spec = load_spec(path)
    if not spec.kind_strategy.labelled or not spec.output.labels:
        raise SpecError(f"{spec.source}: kind: a judge is a classify spec whose output.labels are the verdicts "
                        "(pass/fail, 1–5, or A/B/tie)")
    return spec


def judge_mode(spec: TaskSpec) -> str:
    """pairwise when the labels are A/B(/tie), else pointwise."""
    return "pairwise" if set(spec.output.labels or []) in PAIRWISE_LABELS else "pointwise"


def positive_label(spec: TaskSpec) -> str:
    """The verdict calibration treats as positive: pass, yes, good or correct when present, else the first."""
    labels = spec.output.labels or []
    return next((lb for lb in labels if lb.lower() in {"pass", "yes", "good", "correct"}), labels[0])


def verdict_score(spec: TaskSpec, label: str | None, probs: dict[str, float] | None) -> float | None:
    """Pass → 1 / other → 0; for a 1–5 scale the expected score under the label probabilities."""
    if label is None:
        return None
    labels = spec.output.labels or []
    if sorted(labels) == SCORE_LABELS:
        if probs:
            return sum(int(k) * p for k, p in probs.items())
        return float(label)
    return 1.0 if label == positive_label(spec) else 0.0


def answer_text(call: dict[str, Any]) -> str:
    """What a call answered: the parsed answer, else the raw text (a broken answer is still judged)."""
    if call["error_kind"] is None and call["parsed"] is not None:
        return call["parsed"] if isinstance(call["parsed"], str) else json.dumps(call["parsed"], ensure_ascii=False)
    return call["raw_output"] or ""


def run_items(store: Store, run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The judged run's items' fields by id: from its task spec's dataset, or for traffic (a gateway run, a
    replay of it) the raw input each call kept, under the spec's input field."""
    if is_traffic_run(run):
        field = (json.loads(run["spec_json"] or "{}").get("data") or {}).get("input", "text")
        return {call["item_id"]: {field: text} for call in store.iter_calls(run["id"])
                if (text := logged_input(call)) is not None}
    try:
        spec = load_spec(run["task_path"]) if run["task_path"] else TaskSpec.model_validate_json(run["spec_json"])
        return {item.id: dict(item.fields) for item in load_items(spec)}
    except LlmbusError as exc:
        raise LlmbusError(f"run {run['id']}: cannot load the items it answered ({exc})") from None


def judge_input(fields: dict[str, Any], input_field: str, *answers: str) -> str:
    """What a trained judge reads for one judgment: the item's input, then the answer(s)."""
    return " [SEP] ".join([str(fields.get(input_field, "")), *answers])


class _JudgeContext:
    """The judge spec, its example selector and the provider, shared by every call of one judge run."""

    def __init__(self, spec: TaskSpec, model: str, provider: Provider, store: Store, run_id: str):
        self.spec, self.model, self.provider, self.store, self.run_id = spec, model, provider, store, run_id
        # a judge without examples (k 0, e.g. an assertion's rubric) reads no data file
        pool = split_items(spec, load_items(spec)).pool if spec.fewshot.k else []
        self.selector = ExampleSelector(spec, pool)
        # Calls read their raw input from JUDGE_INPUT (item input + answers): what trained judges classify.
        self.call_spec = spec.model_copy(update={"data": spec.data.model_copy(update={"input": JUDGE_INPUT})})

    def call(self, key: str, fields: dict[str, Any], *answers: str) -> CallRecord:
        """One judge call on an item's fields (answers already fenced) and the raw answers."""
        item = Item(id=key, fields={**fields, JUDGE_INPUT: judge_input(fields, self.spec.data.input, *answers)},
                    expected=None)
        examples = [{k: fence(v) if k in FENCED_FIELDS else v for k, v in ex.fields.items()}
                    for ex in self.selector.select(item)]
        plan = CallPlan(self.call_spec, self.model, self.run_id, use_cache=False)
        return answer_batch(plan, self.provider, None, [job_of(item, render(self.spec, fields, examples))])[0]


def run_judge(spec: TaskSpec, store: Store, target: str, *, other: str | None = None, model: str | None = None,
              limit: int | None = None, concurrency: int = 4, provider: Provider | None = None,
              call_ids: Collection[int] | None = None, progress: StageCallback | None = None) -> JudgeReport:
    """Judge the answers of run `target` (pairwise: against run `other`), or only its calls in `call_ids`;
    every judge call and verdict is logged, each reported to `progress`. Raises JudgeSchemaError after logging
    when no verdict fit the label set."""
    mode = judge_mode(spec)
    if (mode == "pairwise") != (other is not None):
        raise LlmbusError(f"judge {spec.name} is {mode}: " + ("give the second run with --against RUN_B"
                                                              if mode == "pairwise" else "--against is only for "
                                                              "pairwise judges (labels A, B, tie)"))
    model = model or "local:gemma-3-270m"
    target_run = store.get_run(target)
    other_run = store.get_run(other) if other else None
    fields_by_id = run_items(store, target_run)
    pairs = list(_pairs(store, target_run, other_run, limit, None if call_ids is None else set(call_ids)))
    owned = provider is None
    provider = provider or open_provider(model)  # any model, or `head:DIR` (an embedding-head judge)
    try:
        provider.check()
        run_id = store.create_run(task=spec.name, task_path=str(spec.source or ""), spec_version=spec.version,
                                  spec_json=spec.model_dump_json(by_alias=True), model=model, metric="accuracy",
                                  n_planned=len(pairs) * (2 if other else 1), concurrency=concurrency)
        with store.engine.begin() as conn:
            conn.execute(judge_runs.insert().values(
                run_id=run_id, mode=mode, target_run_id=target_run["id"],
                other_run_id=other_run["id"] if other_run else None, labels_json=json.dumps(spec.output.labels),
                positive=positive_label(spec)))
        context = _JudgeContext(spec, model, provider, store, run_id)
        log.info("judge run %s: %s (%s) on %s over run %s, %d judgments", run_id, spec.name, mode, model,
                 target_run["id"], len(pairs))
        with span(f"llmbus judge {spec.name}", {"llmbus.run_id": run_id, "llmbus.task": spec.name,
                                                 "llmbus.spec_version": spec.version, "llmbus.model": model,
                                                 "llmbus.judge.mode": mode, "llmbus.judge.target_run_id":
                                                 target_run["id"], "llmbus.items": len(pairs)}), \
                ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="llmbus-judge") as pool:
            # each judgment in this context: its calls' spans nest under the judge run's
            results = pool.map(carry_context(lambda pair: _judge_one(context, fields_by_id.get(pair[0]["item_id"],
                                                                                               {}), *pair)), pairs)
            made = []
            stage = f"judging {len(pairs):,} answers of run {target_run['id']}"
            for verdict, records in results:
                made.append(_record(store, run_id, verdict, records))
                if progress:
                    progress(stage, len(made), len(pairs))
        store.update_run(run_id, status="done", finished_at=now())
        log.info("judge run %s done: %d verdicts", run_id, len(made))
    finally:
        if owned:
            provider.close()
    report = summarize_judge(store, run_id)
    if made and report.broken == len(made):
        raise JudgeSchemaError(f"judge {spec.name}: all {len(made)} verdicts broke the output contract "
                               f"({report.example_error}); every call is logged in judge run {run_id}: use label "
                               "scoring (a local: model) or a model that follows the rubric")
    return report


def _pairs(store: Store, target: dict[str, Any], other: dict[str, Any] | None,
           limit: int | None,
           call_ids: set[int] | None = None) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    others = {c["item_id"]: c for c in store.iter_calls(other["id"])} if other else {}
    count = 0
    for call in store.iter_calls(target["id"]):
        if (other and call["item_id"] not in others) or (call_ids is not None and call["id"] not in call_ids):
            continue
        if limit is not None and count >= limit:
            return
        count += 1
        yield call, others.get(call["item_id"])


def _judge_one(ctx: _JudgeContext, fields: dict[str, Any], call: dict[str, Any],
               other: dict[str, Any] | None) -> tuple[Verdict, list[CallRecord]]:
    item_id = call["item_id"]
    if call.get("messages"):  # a chat call: the judge may read the conversation it answered
        fields = {**fields, "conversation": fence(transcript(call["messages"])), "messages": call["messages"]}
    if other is None:
        record = ctx.call(item_id, {**fields, "answer": fence(answer_text(call))}, answer_text(call))
        label = record.parsed if record.error_kind is None else None
        return Verdict(item_id, label, verdict_score(ctx.spec, label, record.label_probs), record.confidence,
                       record.label_probs, call["id"], error_kind=record.error_kind), [record]
    a, b = fence(answer_text(call)), fence(answer_text(other))
    raw_a, raw_b = answer_text(call), answer_text(other)
    first = ctx.call(f"{item_id}|AB", {**fields, "answer_a": a, "answer_b": b}, raw_a, raw_b)
    second = ctx.call(f"{item_id}|BA", {**fields, "answer_a": b, "answer_b": a}, raw_b, raw_a)
    verdict = combine_orders(first, second)
    verdict.item_id, verdict.call_id, verdict.other_call_id = item_id, call["id"], other["id"]
    return verdict, [first, second]


def combine_orders(first: CallRecord, second: CallRecord) -> Verdict:
    """Pairwise verdict from both orders (the second has A and B swapped): averaged probabilities, and the
    winner only when both orders agree, else a tie."""
    swap = {"A": "B", "B": "A", "tie": "tie"}
    if first.error_kind or second.error_kind:
        return Verdict("", None, None, None, None, None, error_kind=first.error_kind or second.error_kind)
    w1, w2 = str(first.parsed), swap[str(second.parsed)]
    probs = None
    if first.label_probs and second.label_probs:
        p1, p2 = first.label_probs, second.label_probs
        probs = {k: (p1.get(k, 0.0) + p2.get(swap[k], 0.0)) / 2 for k in p1}
    winner = w1 if w1 == w2 else "tie"
    return Verdict("", winner, {"A": -1.0, "B": 1.0, "tie": 0.0}[winner], probs.get(winner) if probs else None,
                   probs, None, consistent=w1 == w2)


def _record(store: Store, run_id: str, verdict: Verdict, records: list[CallRecord]) -> Verdict:
    for record in records:
        store.record_call(record)
    with store.engine.begin() as conn:
        ids = list(conn.scalars(sa.select(calls.c.id).where(
            calls.c.run_id == run_id, calls.c.item_id.in_([r.item_id for r in records])).order_by(calls.c.item_id)))
        verdict.judge_call_ids = [int(i) for i in ids]
        conn.execute(verdicts.insert().values(
            judge_run_id=run_id, item_id=verdict.item_id, call_id=verdict.call_id,
            other_call_id=verdict.other_call_id, judge_call_ids=json.dumps(verdict.judge_call_ids),
            verdict=verdict.verdict, score=verdict.score, confidence=verdict.confidence,
            probs_json=json.dumps(verdict.probs) if verdict.probs else None, consistent=verdict.consistent,
            error_kind=verdict.error_kind, created_at=now()))
    return verdict


def load_verdicts(store: Store, judge_run_id: str) -> list[dict[str, Any]]:
    """A judge run's verdicts, item order, with probabilities decoded."""
    query = sa.select(verdicts).where(verdicts.c.judge_run_id == judge_run_id).order_by(verdicts.c.id)
    with store.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
    for row in rows:
        row["probs"] = json.loads(row.pop("probs_json")) if row["probs_json"] else None
        row["judge_call_ids"] = json.loads(row["judge_call_ids"] or "[]")
    return rows


def judge_run_info(store: Store, judge_run_id: str) -> dict[str, Any]:
    """The judge_runs row of a judge run (id or prefix), with its labels decoded."""
    run = store.get_run(judge_run_id)
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(judge_runs).where(judge_runs.c.run_id == run["id"])).mappings().first()
    if row is None:
        raise LlmbusError(f"run {run['id']} is not a judge run")
    return {**dict(row), "labels": json.loads(row["labels_json"]), "model": run["model"], "judge": run["task"]}


def summarize_judge(store: Store, judge_run_id: str) -> JudgeReport:
    """Counts, broken verdicts, position consistency and cost of a judge run."""
    info = judge_run_info(store, judge_run_id)
    rows = load_verdicts(store, info["run_id"])
    judge_calls = list(store.iter_calls(info["run_id"]))
    cost = sum(c["cost_usd"] for c in judge_calls)
    counts = Counter(r["verdict"] for r in rows if r["verdict"] is not None)
    scores = [r["score"] for r in rows if r["score"] is not None]
    consistent = [r["consistent"] for r in rows if r["consistent"] is not None]
    broken = sum(r["verdict"] is None for r in rows)
    example = next((c["error"] for c in judge_calls if c["error"]), None)
    return JudgeReport(judge_run_id=info["run_id"], judge=info["judge"], mode=info["mode"], model=info["model"],
                       target_run_id=info["target_run_id"], other_run_id=info["other_run_id"], n=len(rows),
                       broken=broken, counts=dict(counts), mean_score=sum(scores) / len(scores) if scores else None,
                       cost_usd=cost, cost_per_1k=1000 * cost / len(rows) if rows else float("nan"),
                       position_consistency=sum(consistent) / len(consistent) if consistent else None,
                       example_error=example)
