"""The production gate: replay a sample of a served model's logged traffic through a candidate and accept it
only when its quality cannot have dropped by more than `max_drop`.

    llmbus accept CANDIDATE --against SERVED [--sample N] [--max-drop 0.01] [--slice FIELD] [--since 7d]

CANDIDATE is a model reference (a student `encoder:DIR`, a quantized `local:…gguf`, a `cascade:NAME`, any
`openai:` model) answering the served task, or a task YAML: a new prompt version answered by the incumbent's
model. Quality is agreement with a reference, item by item: the human label where the traffic was labeled (a
task label or a correction; a pass keeps the labeled answer; a fail without a correction leaves the item out),
else the incumbent's logged answer. Candidate and incumbent are compared on the same items with
quality/evaluate's paired bootstrap and McNemar's test, and the candidate is accepted when the lower end of the
95% interval of candidate − incumbent is at least −max_drop: overall, and in each slice with at least MIN_SLICE
items. The replay is an ordinary run (`sampling = "traffic"`, each call keeping its input in meta), so
`llmbus eval`, `show`, `judge` and `label` read it like any other.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import Any

from llmbus.distill.teacher_filter import Decision, human_decisions
from llmbus.embed import StageCallback
from llmbus.errors import LlmbusError
from llmbus.providers import Provider, open_provider
from llmbus.quality.evaluate import BOOTSTRAP_ROUNDS, Interval, compare_samples, sample_from
from llmbus.run.adapter import CallPlan
from llmbus.run.executors import LocalExecutor
from llmbus.store import CallRecord, Store, now
from llmbus.store.traffic import (
    GATEWAY_PREFIX,
    TRAFFIC_SAMPLING,
    by_input,
    served_runs,
    traffic_calls,
    traffic_item_id,
)
from llmbus.task.data import Item, load_items, split_items
from llmbus.task.fewshot import ExampleSelector
from llmbus.task.output import parse_output
from llmbus.task.spec import TaskSpec, load_spec

MIN_SLICE = 10  # smaller slices are shown, not gated: their interval says little either way
DERIVED_SLICES = ("answer", "reference")  # slice fields besides the call meta's (key, route, …)


@dataclass
class SliceResult:
    """Candidate against incumbent on one slice of the sample (or all of it)."""

    name: str  # "all", or FIELD=value
    n: int
    n_human: int  # items whose reference is a human label (the rest: the incumbent's answer)
    incumbent: float  # agreement with the reference
    candidate: float
    delta: Interval  # candidate − incumbent, paired bootstrap 95% interval
    p_bootstrap: float
    p_mcnemar: float | None
    gated: bool
    passed: bool


@dataclass
class AcceptReport:
    """What `llmbus accept` prints: the decision, what quality meant, and the table."""

    candidate: str
    model: str  # the model the replay ran (the incumbent's for a prompt version)
    served: str
    incumbent: str
    task: str
    spec_version: str
    replay_run: str
    metric: str  # how two answers agree: accuracy (same label), exact_match (same entities), or the task's
    n: int
    n_human: int
    n_incumbent: int
    left_out: int  # items a human failed without a correction: no reference
    max_drop: float
    accepted: bool
    reason: str
    slice_field: str | None
    slices: list[SliceResult]  # all items first
    candidate_errors: int = 0
    candidate_cost_per_1k: float = 0.0
    incumbent_cost_per_1k: float = 0.0
    candidate_latency_ms: float = float("nan")
    incumbent_latency_ms: float = float("nan")
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json."""
        return asdict(self)


@dataclass(frozen=True)
class TrafficItem:
    """One distinct input of the sample: the incumbent's newest answer and the reference it is scored on."""

    id: str
    input: str
    call: dict[str, Any]  # the incumbent's newest call for this input
    answer: Any
    reference: Any
    human: bool


def accept(store: Store, candidate: str, served: str, *, sample: int = 200, max_drop: float = 0.01,
           slice_field: str | None = None, since: datetime | None = None, concurrency: int = 4,
           provider: Provider | None = None, rounds: int = BOOTSTRAP_ROUNDS,
           progress: StageCallback | None = None) -> AcceptReport:
    """Replay up to `sample` distinct inputs of the served model's traffic through the candidate (logged as a run,
    each answer reported to `progress`) and decide: accepted when candidate − incumbent agreement has a 95% lower
    bound ≥ −max_drop, overall and in each gated slice."""
    gateway_runs = served_runs(store, served)
    served_spec = served_task(gateway_runs, served)
    spec, model = candidate_spec(candidate, served_spec, gateway_runs[-1]["model"])
    items, left_out = reference_items(served_spec, store, [run["id"] for run in gateway_runs], since)
    if not items:
        raise LlmbusError(f"no answered traffic of {GATEWAY_PREFIX}{served}"
                          f"{f' since {since:%Y-%m-%d %H:%M %Z}' if since else ''} to replay")
    items = sorted(items, key=lambda item: item.id)[:sample]  # hash order: a uniform sample, the same every time
    slice_of = slicer(slice_field, items)
    replay_run, records = replay(store, spec, model, items, concurrency, provider, progress)
    if progress:
        progress("comparing candidate and incumbent (bootstrap)", None, None)
    answers = {r.item_id: (None if r.error_kind else r.parsed) for r in records}
    metric = agreement_metric(served_spec)
    results = [compare_slice(served_spec, metric, "all", items, answers, replay_run, max_drop, rounds, True)]
    if slice_of is not None:
        groups: dict[str, list[TrafficItem]] = defaultdict(list)
        for item in items:
            groups[f"{slice_field}={slice_of(item)}"].append(item)
        for name, group in sorted(groups.items()):
            results.append(compare_slice(served_spec, metric, name, group, answers, replay_run, max_drop, rounds,
                                         len(group) >= MIN_SLICE))
    failed = [r.name for r in results if r.gated and not r.passed]
    overall = results[0]
    reason = (f"the lower 95% bound of candidate − incumbent {metric} is {overall.delta.lo:+.3f} "
              f"{'≥' if overall.passed else '<'} −{max_drop:g}")
    if failed and failed != ["all"]:
        reason += f"; slices below it: {', '.join(n for n in failed if n != 'all')}"
    fresh = [r for r in records if not r.cache_hit]
    incumbent_calls = [item.call for item in items if not item.call["cache_hit"]]
    return AcceptReport(
        candidate=candidate, model=model, served=served, incumbent=gateway_runs[-1]["model"], task=spec.name,
        spec_version=spec.version, replay_run=replay_run, metric=metric, n=len(items),
        n_human=sum(item.human for item in items), n_incumbent=sum(not item.human for item in items),
        left_out=left_out, max_drop=max_drop, accepted=not failed, reason=reason, slice_field=slice_field,
        slices=results, candidate_errors=sum(r.error_kind is not None for r in records),
        candidate_cost_per_1k=1000 * sum(r.cost_usd for r in records) / max(1, len(records)),
        incumbent_cost_per_1k=1000 * sum(c["cost_usd"] for c in incumbent_calls) / max(1, len(incumbent_calls)),
        candidate_latency_ms=1000 * median(r.latency_s for r in fresh) if fresh else float("nan"),
        incumbent_latency_ms=1000 * median(c["latency_s"] for c in incumbent_calls) if incumbent_calls
        else float("nan"),
        warnings=sample_warnings(items, sample, spec, served_spec))


def served_task(gateway_runs: list[dict[str, Any]], served: str) -> TaskSpec:
    """The task the served model answers, from its newest gateway run that recorded one."""
    run = next((r for r in reversed(gateway_runs) if r["task_path"]), None)
    if run is None:
        raise LlmbusError(f"{GATEWAY_PREFIX}{served} serves no task (or was served before llmbus kept the task with "
                          "its runs): accept replays a served task; give the route a `task:` in serve.yaml")
    if not Path(run["task_path"]).is_file():
        raise LlmbusError(f"{GATEWAY_PREFIX}{served}: its task file {run['task_path']} is gone; accept needs it to "
                          "render the candidate's prompts")
    return load_spec(run["task_path"])


def candidate_spec(candidate: str, served_spec: TaskSpec, incumbent_model: str) -> tuple[TaskSpec, str]:
    """(spec, model) the replay runs: a task YAML on the incumbent's model, else the served task on `candidate`."""
    if Path(candidate).suffix not in (".yaml", ".yml"):
        return served_spec, candidate
    spec = load_spec(candidate)
    if spec.kind != served_spec.kind:
        raise LlmbusError(f"{candidate}: a {spec.kind} task cannot replace the served {served_spec.kind} task "
                          f"{served_spec.name}")
    return spec, incumbent_model


def agreement_metric(spec: TaskSpec) -> str:
    """How a candidate's answer agrees with the reference: the same label, the same entities, or the task's own
    generate metric."""
    return spec.kind_strategy.agreement_metric or spec.main_metric


def reference_items(spec: TaskSpec, store: Store, run_ids: list[str],
                    since: datetime | None) -> tuple[list[TrafficItem], int]:
    """Each distinct input's newest incumbent answer and its reference (the human label where one exists, else
    that answer), plus how many items a human rejected without a correction (left out)."""
    decided = human_decisions(spec, store, run_ids)
    items, left_out = [], 0
    for text, group in by_input(traffic_calls(store, run_ids, since)).items():
        newest = group[0]
        parsed = parse_output(spec, newest["raw_output"] or "")
        if parsed.error_kind:
            continue  # the incumbent's answer broke the task's contract: nothing to agree with
        labeled = next(((call, decided[call["item_id"]]) for call in group if call["item_id"] in decided), None)
        reference, human = parsed.value, False
        if labeled is not None:
            call, decision = labeled
            if not decision.keep:
                left_out += 1
                continue
            reference, human = labeled_reference(spec, call, decision), True
        items.append(TrafficItem(traffic_item_id(text), text, newest, parsed.value, reference, human))
    return items, left_out


def labeled_reference(spec: TaskSpec, call: dict[str, Any], decision: Decision) -> Any:
    """A human's answer: their label or correction, or the labeled call's own answer when they passed it."""
    if decision.text is not None:
        return decision.answer
    return parse_output(spec, call["raw_output"] or "").value


def slicer(slice_field: str | None, items: list[TrafficItem]) -> Callable[[TrafficItem], str] | None:
    """item → its slice value: `answer` (the incumbent's), `reference` (human or incumbent), or a field of the
    incumbent call's meta (key, route, …); an unknown field is one error naming the known ones."""
    if slice_field is None:
        return None
    if slice_field == "answer":
        return lambda item: str(item.answer)
    if slice_field == "reference":
        return lambda item: "human" if item.human else "incumbent"
    known = sorted({name for item in items for name in (item.call["meta"] or {}) if name != "input"})
    if slice_field not in known:
        raise LlmbusError(f"--slice {slice_field!r}: not a field of the logged traffic; use one of "
                          f"{', '.join([*DERIVED_SLICES, *known])}")
    return lambda item: str((item.call["meta"] or {}).get(slice_field))


def replay(store: Store, spec: TaskSpec, model: str, items: list[TrafficItem], concurrency: int,
           provider: Provider | None = None, progress: StageCallback | None = None) -> tuple[str, list[CallRecord]]:
    """Answer the items with `model` as an ordinary run (no cache: the candidate's own answers, latency and
    cost; each reported to `progress`); returns the run id and its call records."""
    owned = provider is None
    provider = provider or open_provider(model)
    try:
        provider.check()
        run_id = store.create_run(task=spec.name, task_path=str(spec.source or ""), spec_version=spec.version,
                                  spec_json=spec.model_dump_json(by_alias=True), model=model,
                                  metric=spec.main_metric, n_planned=len(items), concurrency=concurrency,
                                  sampling=TRAFFIC_SAMPLING)
        selector = ExampleSelector(spec, split_items(spec, load_items(spec)).pool, store.embeddings)
        by_id = {item.id: item for item in items}
        executor = LocalExecutor(provider, None, selector, concurrency)
        tick, status, records = time.monotonic(), "failed", []
        try:
            jobs = [Item(id=item.id, fields={spec.data.input: item.input}, expected=item.reference) for item in items]
            for batch in executor.answers(CallPlan(spec, model, run_id, use_cache=False), jobs):
                for record in batch:
                    record.meta = {**(record.meta or {}), "input": by_id[record.item_id].input,
                                   "traffic_call": by_id[record.item_id].call["id"]}
                store.record_calls(batch)
                records.extend(batch)
                if progress:
                    progress(f"replaying {len(items):,} inputs through {model}", len(records), len(items))
            status = "done"
        finally:
            executor.close()
            store.update_run(run_id, status=status, finished_at=now(), wall_s=time.monotonic() - tick)
    finally:
        if owned:
            provider.close()
    return run_id, records


def compare_slice(spec: TaskSpec, metric: str, name: str, items: list[TrafficItem], answers: dict[str, Any],
                  replay_run: str, max_drop: float, rounds: int, gated: bool) -> SliceResult:
    """The paired comparison of candidate and incumbent agreement with the reference on these items."""
    def rows(answer: Callable[[TrafficItem], Any]) -> list[dict[str, Any]]:
        return [{"item_id": item.id, "parsed": answer(item), "expected": item.reference,
                 "error_kind": None if answer(item) is not None else "failed"} for item in items]

    labels = list(spec.output.labels or [])
    incumbent = sample_from("incumbent", spec.kind, metric, labels, rows(lambda item: item.answer))
    candidate = sample_from(replay_run, spec.kind, metric, labels, rows(lambda item: answers.get(item.id)))
    comparison = compare_samples(incumbent, candidate, rounds)
    return SliceResult(name=name, n=len(items), n_human=sum(item.human for item in items), incumbent=comparison.a,
                       candidate=comparison.b, delta=comparison.delta, p_bootstrap=comparison.p_bootstrap,
                       p_mcnemar=comparison.p_mcnemar, gated=gated,
                       passed=comparison.delta.lo >= -max_drop - 1e-12)


def sample_warnings(items: list[TrafficItem], sample: int, spec: TaskSpec, served_spec: TaskSpec) -> list[str]:
    """What makes the decision weak: a small sample, traffic served with another prompt version."""
    warnings = []
    if len(items) < 30:
        warnings.append(f"only {len(items)} items{'' if len(items) >= sample else ' in the traffic'}: the interval "
                        "is wide, so only a candidate that agrees almost everywhere can pass")
    other = sum(item.call["spec_version"] != served_spec.version for item in items)
    if other:
        warnings.append(f"{other} of the {len(items)} incumbent answers were served with another version of "
                        f"{served_spec.name} than its task file's now (--since keeps the newer traffic)")
    if spec is not served_spec and spec.version == served_spec.version:
        warnings.append(f"{spec.source}: the same prompt version as the served task: the candidate is the incumbent")
    return warnings
