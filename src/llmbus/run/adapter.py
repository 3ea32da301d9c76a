"""The one path from a task spec to a scored answer, used by runs, judge runs, the gateway and flows:
spec + item (+ examples) → prompt → `Request` → provider (or the exact cache) → `Parsed` → `CallRecord`.

Rendering stays a pure function (`task.spec.render_prompt`), so the exact prompt can be printed before any
call. `answer_batch` is the per-item work of a run as a pure function of its inputs (a plan, a provider, a
cache, rendered items): an executor — a thread pool here, Ray workers elsewhere — only decides where it runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from llmbus.errors import ProviderError
from llmbus.providers import Completion, Provider, Request
from llmbus.providers.base import complete_many
from llmbus.run.cache import ExactCache
from llmbus.store import CallRecord, now
from llmbus.task import metrics
from llmbus.task.data import Item
from llmbus.task.output import parse_output
from llmbus.task.spec import TaskSpec


def build_request(spec: TaskSpec | None, prompt: str, raw_input: str | None = None, *,
                  max_tokens: int | None = None, temperature: float | None = None,
                  stop: tuple[str, ...] | None = None) -> Request:
    """The provider request for a rendered prompt, carrying the spec's output contract (label set or JSON
    Schema) and the raw input; the keyword arguments override the spec's parameters (the gateway's body)."""
    labels = json_schema = None
    if spec is not None:
        labels = tuple(spec.output.labels) if spec.kind == "classify" and spec.output.labels else None
        json_schema = spec.output.json_schema if spec.kind == "extract" else None
    return Request(prompt=prompt,
                   max_tokens=max_tokens if max_tokens is not None else (spec.params.max_tokens if spec else 256),
                   temperature=temperature if temperature is not None else (spec.params.temperature if spec
                                                                           else 0.0),
                   stop=stop if stop is not None else (tuple(spec.params.stop) if spec else ()),
                   labels=labels, json_schema=json_schema, input=raw_input)


def item_request(spec: TaskSpec, item: Item, prompt: str) -> Request:
    """The request for one item of a task: its prompt and its raw input (what small students read)."""
    return build_request(spec, prompt, item.text(spec.data.input))


def example_fields(examples: list[Item]) -> list[dict[str, object]]:
    """Few-shot examples as the template sees them: all fields of each pool item."""
    return [dict(example.fields) for example in examples]


@dataclass(frozen=True)
class CallPlan:
    """What every call of one run shares. Plain values (picklable), so an executor can ship it to workers
    that open their own provider and cache."""

    spec: TaskSpec
    model: str
    run_id: str
    use_cache: bool = True


def answer_batch(plan: CallPlan, provider: Provider, cache: ExactCache | None,
                 jobs: list[tuple[Item, str]]) -> list[CallRecord]:
    """Answer rendered items (cached answers first, the rest in one provider pass) as call records; never
    raises for provider or output errors: those are recorded with their kind. Fresh answers to cache ride
    on `record.extra["cache_put"]`, for the caller to write with its batch of records."""
    spec = plan.spec
    requests = [item_request(spec, item, prompt) for item, prompt in jobs]
    records = [CallRecord(run_id=plan.run_id, task=spec.name, spec_version=spec.version, item_id=item.id,
                          model=plan.model, prompt=prompt, expected=item.expected, started_at=now(),
                          finished_at=now()) for item, prompt in jobs]
    tick = time.perf_counter()
    use_cache = plan.use_cache and cache is not None
    cached = [cache.get(request, plan.model) if use_cache and cache else None for request in requests]
    fresh = [i for i, hit in enumerate(cached) if hit is None]
    try:
        answers = complete_many(provider, [requests[i] for i in fresh]) if fresh else []
    except ProviderError as exc:
        for i in fresh:
            records[i].error_kind, records[i].error = exc.kind, str(exc)
            records[i].latency_s, records[i].finished_at = time.perf_counter() - tick, now()
        answers, fresh = [], []
    completions: dict[int, Completion] = dict(zip(fresh, answers, strict=True))
    latency = (time.perf_counter() - tick) / max(1, len(jobs))  # a batch's time, shared by its items
    for i, record in enumerate(records):
        hit = cached[i]
        completion = hit if hit is not None else completions.get(i)
        if completion is None:
            continue  # the provider failed: recorded above
        record.latency_s, record.finished_at = latency, now()
        _fill(record, completion, cached=hit is not None)
        parsed = parse_output(spec, completion.text)
        record.parsed, record.error_kind, record.error = parsed.value, parsed.error_kind, parsed.error
        record.score = metrics.item_score(spec.main_metric, parsed.value if parsed.error_kind is None else None,
                                          jobs[i][0].expected)
        if use_cache and cache and hit is None and parsed.error_kind is None:
            record.extra["cache_put"] = cache.entry(requests[i], plan.model, completion)
    return records


def _fill(record: CallRecord, completion: Completion, cached: bool) -> None:
    """Copy what came back onto the record (a cached answer costs nothing again)."""
    record.cache_hit = cached
    record.raw_output = completion.text
    record.tokens_in, record.tokens_out = completion.tokens_in, completion.tokens_out
    record.label_probs, record.confidence = completion.label_probs, completion.confidence
    record.meta = dict(completion.extra) or None
    if not cached:
        record.cost_usd, record.cpu_s = completion.cost_usd, completion.cpu_seconds
