"""The one path from a task spec to a scored answer, used by runs, judge runs, the gateway and flows:
spec + item (+ examples) → prompt → `Request` → provider (or the exact cache) → `Parsed` → `CallRecord`.

Rendering stays a pure function (`task.spec.render_prompt`), so the exact prompt can be printed before any
call. `answer_batch` is the per-item work of a run as a pure function of its inputs (a plan, a provider, a
cache, rendered items): an executor — a thread pool here, Ray workers elsewhere — only decides where it runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from llmbus.errors import ProviderError
from llmbus.providers import Completion, Provider, Request
from llmbus.providers.base import complete_many, normalize_probs
from llmbus.run.cache import ExactCache
from llmbus.store import CONTENT_FREE, CallRecord, now
from llmbus.task import metrics
from llmbus.task.chat import Message, user_turn
from llmbus.task.data import Item
from llmbus.task.output import Parsed, parse_output
from llmbus.task.render import Rendered, render
from llmbus.task.spec import TaskSpec
from llmbus.telemetry import observe_call

CALIBRATION_FLOOR = 1e-6  # a content-free probability below this is taken as this (no division by zero)


def build_request(spec: TaskSpec | None, prompt: Rendered | str, raw_input: str | None = None, *,
                  max_tokens: int | None = None, temperature: float | None = None,
                  stop: tuple[str, ...] | None = None) -> Request:
    """The provider request for a rendered prompt (one text, or a spec's turns), carrying the spec's output
    contract (label set or JSON Schema), its tools and response_format, and the raw input; the keyword arguments
    override the spec's parameters (the gateway's body)."""
    rendered = prompt if isinstance(prompt, Rendered) else Rendered(prompt, (user_turn(prompt),))
    labels = json_schema = None
    if spec is not None:
        labels = spec.kind_strategy.request_labels(spec.output)
        json_schema = spec.kind_strategy.request_schema(spec.output)
    return Request(prompt=rendered.text, messages=rendered.messages if rendered.is_chat else (),
                   max_tokens=max_tokens if max_tokens is not None else (spec.params.max_tokens if spec else 256),
                   temperature=temperature if temperature is not None else (spec.params.temperature if spec
                                                                           else 0.0),
                   stop=stop if stop is not None else (tuple(spec.params.stop) if spec else ()),
                   labels=labels, json_schema=json_schema, input=raw_input,
                   tools=tuple(spec.tools) if spec and spec.tools else None,
                   response_format=spec.response_format if spec else None)


def item_request(spec: TaskSpec, job: Job) -> Request:
    """The request for one item of a task: its prompt and its raw input (what small students read)."""
    return build_request(spec, job.rendered, job.item.text(spec.data.input))


def example_fields(examples: list[Item], spec: TaskSpec | None = None) -> list[dict[str, object]]:
    """Few-shot examples as the template sees them: all fields of each pool item, the expected answer shown
    through the spec's verbalizer when it has one."""
    if spec is None or not spec.output.verbalizer:
        return [dict(example.fields) for example in examples]
    field = spec.data.expected
    return [{**example.fields, field: spec.output.shown(str(example.expected))} for example in examples]


def content_free_prompts(spec: TaskSpec, item: Item, examples: list[dict[str, object]]) -> tuple[Rendered, ...]:
    """The item's prompt with its input replaced by each content-free text (calibrated classify specs only)."""
    return tuple(render(spec, {**item.fields, spec.data.input: text}, examples)
                 for text in spec.kind_strategy.content_free(spec.output))


def render_job(spec: TaskSpec, item: Item, examples: list[dict[str, object]]) -> Job:
    """One item's job: its prompt (and turns) and, when calibrated, its content-free prompts."""
    return job_of(item, render(spec, dict(item.fields), examples), content_free_prompts(spec, item, examples))


def job_of(item: Item, rendered: Rendered, content_free: tuple[Rendered, ...] = ()) -> Job:
    """The job answering `item` with an already rendered prompt."""
    return Job(item, rendered.text, content_free, rendered.messages if rendered.is_chat else ())


class Job(NamedTuple):
    """One item to answer: its rendered prompt (a `messages:` spec: its transcript, and the turns themselves)
    and, for calibrated specs, its content-free prompts."""

    item: Item
    prompt: str
    content_free: tuple[Rendered, ...] = ()
    messages: tuple[Message, ...] = ()

    @property
    def rendered(self) -> Rendered:
        """The prompt as `task.render` made it."""
        return Rendered(self.prompt, self.messages or (user_turn(self.prompt),))


@dataclass(frozen=True)
class CallPlan:
    """What every call of one run shares. Plain values (picklable), so an executor can ship it to workers
    that open their own provider and cache."""

    spec: TaskSpec
    model: str
    run_id: str
    use_cache: bool = True
    spec_version: str = field(init=False)  # computed once: hashing the spec per record costs more than a call

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec_version", self.spec.version)


def answer_batch(plan: CallPlan, provider: Provider, cache: ExactCache | None,
                 jobs: list[Job]) -> list[CallRecord]:
    """Answer rendered items (cached answers first, the rest in one provider pass) as call records; never
    raises for provider or output errors: those are recorded with their kind. Fresh answers to cache ride
    on `record.extra["cache_put"]`, for the caller to write with its batch of records. Calibrated specs also
    ask their content-free prompts (through the cache; fresh ones are counted in `meta.calibration.calls`,
    and are call-log rows of their own riding on `record.extra["content_free_rows"]` of the item that asked)."""
    spec = plan.spec
    requests = [item_request(spec, job) for job in jobs]
    started = now()
    records = [new_record(plan, job, started) for job in jobs]
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
    answered = [i for i in range(len(jobs)) if cached[i] is not None or i in completions]
    content_free = _content_free_answers(plan, provider, cache if use_cache else None,
                                         [jobs[i] for i in answered])
    latency = (time.perf_counter() - tick) / max(1, len(jobs))  # a batch's time, shared by its items
    for i, record in enumerate(records):
        hit = cached[i]
        completion = hit if hit is not None else completions.get(i)
        if completion is None:
            continue  # the provider failed: recorded above
        record.latency_s, record.finished_at = latency, now()
        _fill(record, completion, cached=hit is not None)
        parsed = parse_output(spec, completion.text)
        if record.label_probs:  # keyed by the labels, not their shown texts
            record.label_probs = {spec.kind_strategy.label_of(spec.output, k): v for k, v in record.label_probs.items()}
        if jobs[i].content_free:
            found = content_free.get(jobs[i].prompt)
            parsed = _calibrate(record, found, parsed)
            if found is not None and found.rows:  # written by the caller with its batch, like cache entries
                record.extra["content_free_rows"] = found.rows
        if record.label_probs and parsed.error_kind is None:
            record.confidence = record.label_probs.get(str(parsed.value))
        record.parsed, record.error_kind, record.error = parsed.value, parsed.error_kind, parsed.error
        record.score = metrics.item_score(spec.main_metric, parsed.value if parsed.error_kind is None else None,
                                          jobs[i].item.expected, jobs[i].item.fields)
        if use_cache and cache and hit is None and parsed.error_kind is None:
            record.extra["cache_put"] = cache.entry(requests[i], plan.model, completion)
    for i, record in enumerate(records):  # a span per call (telemetry on), a log record per failed call
        observe_call(record, requests[i], cached[i] or completions.get(i), provider)
    return records


def new_record(plan: CallPlan, job: Job, started_at: datetime) -> CallRecord:
    """The call-log record of one job, before its answer is known."""
    return CallRecord(run_id=plan.run_id, task=plan.spec.name, spec_version=plan.spec_version, item_id=job.item.id,
                      model=plan.model, prompt=job.prompt, expected=job.item.expected, started_at=started_at,
                      finished_at=started_at, messages=list(job.messages) or None)


def interrupted_records(plan: CallPlan, jobs: list[Job], started_at: datetime, elapsed_s: float) -> list[CallRecord]:
    """Records for jobs whose call was still in flight when a stop's grace period ran out: what is known of them
    (prompt, start, time waited), with error kind `interrupted` (a transient error: `--resume` asks again)."""
    records = [new_record(plan, job, started_at) for job in jobs]
    for record in records:
        record.finished_at, record.latency_s = now(), elapsed_s
        record.error_kind = "interrupted"
        record.error = (f"the run stopped while this call was in flight ({elapsed_s:.1f}s); its answer was not "
                        "waited for")
    return records


@dataclass
class _ContentFree:
    """One item's content-free answers (label distributions), what the fresh ones cost, or why none came."""

    probs: list[dict[str, float] | None]
    calls: int = 0
    tokens_in: int = 0
    cost_usd: float = 0.0
    cpu_s: float | None = None
    error: ProviderError | None = None
    rows: list[CallRecord] = field(default_factory=list)  # the fresh calls charged to this item, as call-log rows


def _content_free_answers(plan: CallPlan, provider: Provider, cache: ExactCache | None,
                          jobs: list[Job]) -> dict[str, _ContentFree]:
    """Each calibrated job's content-free answers, keyed by the job's prompt; a content-free prompt shared by
    several items (fixed shots) is asked once, and its cost goes to the first item that needed it."""
    spec = plan.spec
    wanted: dict[str, Request] = {}
    for job in jobs:
        for rendered, text in zip(job.content_free, spec.output.calibrate or [], strict=False):
            wanted.setdefault(rendered.text, build_request(spec, rendered, text))
    if not wanted:
        return {}
    found = {prompt: cache.get(request, plan.model) if cache else None for prompt, request in wanted.items()}
    missing = [prompt for prompt, hit in found.items() if hit is None]
    error: ProviderError | None = None
    started, tick = now(), time.perf_counter()
    try:
        for prompt, completion in zip(missing, complete_many(provider, [wanted[p] for p in missing]), strict=True):
            found[prompt] = completion
    except ProviderError as exc:
        error = exc
    latency = (time.perf_counter() - tick) / max(1, len(missing))
    if cache is not None:  # at once, not with the batch: the next batches of a fixed-shot run then hit
        new = [(p, hit) for p in missing if (hit := found[p]) is not None and hit.label_probs]
        cache.put_many([cache.entry(wanted[p], plan.model, hit) for p, hit in new])
    charged: set[str] = set()  # a fresh call (answered or failed) counts once, for the first item needing it
    out: dict[str, _ContentFree] = {}
    for job in jobs:
        if not job.content_free:
            continue
        result = _ContentFree(probs=[], error=error if any(found[r.text] is None for r in job.content_free) else None)
        for index, prompt in enumerate(rendered.text for rendered in job.content_free):
            answer = found[prompt]
            result.probs.append({spec.output.label_of(k): v for k, v in answer.label_probs.items()}
                                if answer is not None and answer.label_probs else None)
            if prompt in missing and prompt not in charged:
                charged.add(prompt)
                result.calls += 1
                result.rows.append(_content_free_row(plan, job, index, prompt, answer, error, started, latency))
                if answer is not None:
                    result.cost_usd += answer.cost_usd
                    if answer.cpu_seconds is not None:
                        result.cpu_s = (result.cpu_s or 0.0) + answer.cpu_seconds
            if answer is not None:
                result.tokens_in += answer.tokens_in
        out[job.prompt] = result
    return out


def _content_free_row(plan: CallPlan, job: Job, index: int, prompt: str, answer: Completion | None,
                      error: ProviderError | None, started_at: datetime, latency_s: float) -> CallRecord:
    """The call-log row of one fresh content-free call (`content-free:INDEX:ITEM`), asked for `job`'s item."""
    text = (plan.spec.output.calibrate or [])[index]
    record = new_record(plan, Job(Item(f"{CONTENT_FREE}{index}:{job.item.id}", {}, None), prompt), started_at)
    record.finished_at, record.latency_s = now(), latency_s
    if answer is None:
        record.error_kind, record.error = (error.kind, str(error)) if error else ("bad_response", "no answer")
    else:
        _fill(record, answer, cached=False)
        if answer.label_probs:
            record.label_probs = {plan.spec.output.label_of(shown): p for shown, p in answer.label_probs.items()}
    record.meta = {**(record.meta or {}), "content_free": text, "for_item": job.item.id}
    return record


def _calibrate(record: CallRecord, content_free: _ContentFree | None, parsed: Parsed) -> Parsed:
    """Divide the record's label probabilities by the mean content-free distribution; the answer is then the
    most likely calibrated label. Counts, tokens and cost of the content-free calls join the record."""
    if content_free is None:
        return parsed
    record.tokens_in += content_free.tokens_in
    record.cost_usd += content_free.cost_usd  # fresh content-free calls only
    if content_free.cpu_s is not None:
        record.cpu_s = (record.cpu_s or 0.0) + content_free.cpu_s
    meta = dict(record.meta or {})
    if content_free.error is not None:
        record.meta = {**meta, "calibration": {"calls": content_free.calls}}
        return Parsed(error_kind=content_free.error.kind, error=f"content-free call: {content_free.error}")
    distributions = [p for p in content_free.probs if p]
    if not record.label_probs or len(distributions) != len(content_free.probs):
        record.meta = {**meta, "calibration": {"calls": content_free.calls, "applied": False,
                                               "why": "the model gave no label probabilities"}}
        return parsed
    mean = {label: sum(d.get(label, 0.0) for d in distributions) / len(distributions) for label in record.label_probs}
    probs = calibrated(record.label_probs, mean)
    record.meta = {**meta, "calibration": {"calls": content_free.calls, "applied": True, "content_free": mean,
                                           "uncalibrated": record.label_probs}}
    record.label_probs = probs
    return Parsed(max(probs, key=lambda label: probs[label]))


def calibrated(probs: dict[str, float], content_free: dict[str, float]) -> dict[str, float]:
    """Contextual calibration (Zhao et al. 2021): p(label | item) / p(label | content-free input), renormalized."""
    return normalize_probs({label: p / max(content_free.get(label, 0.0), CALIBRATION_FLOOR)
                            for label, p in probs.items()})


def _fill(record: CallRecord, completion: Completion, cached: bool) -> None:
    """Copy what came back onto the record (a cached answer costs nothing again)."""
    record.cache_hit = cached
    record.raw_output = completion.text
    record.tokens_in, record.tokens_out = completion.tokens_in, completion.tokens_out
    record.tokens_cached, record.tokens_reasoning = completion.tokens_cached, completion.tokens_reasoning
    record.label_probs, record.confidence = completion.label_probs, completion.confidence
    record.tool_calls, record.reasoning = completion.tool_calls, completion.reasoning
    record.meta = dict(completion.extra) or None
    if not cached:
        record.cost_usd, record.cpu_s = completion.cost_usd, completion.cpu_seconds
