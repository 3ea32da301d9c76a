"""Run a task on a model: render each item's prompt, call the provider concurrently, log every call.

Each answer is committed to the call log as soon as it arrives, so Ctrl-C or kill -9 loses nothing already
answered; `resume` finishes only the items still missing (or that failed for a transient reason).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import islice

from llmbus import metrics
from llmbus.data import Item, load_items, split_items
from llmbus.errors import LlmbusError, ProviderError
from llmbus.fewshot import ExampleSelector
from llmbus.output import parse_output
from llmbus.providers import Provider, Request, open_provider
from llmbus.providers.base import Completion
from llmbus.spec import TaskSpec, render_prompt
from llmbus.store import CallRecord, Store, now

# Failures worth another try on resume; schema violations and the like are final answers.
TRANSIENT_ERRORS = frozenset({"timeout", "connection", "rate_limited", "unreachable", "bad_response",
                              "http_500", "http_502", "http_503", "http_504", "http_408", "http_409", "http_425"})


@dataclass
class Progress:
    """What a progress display needs after each answer."""

    done: int
    total: int
    errors: int
    metric_name: str
    metric_value: float
    elapsed_s: float


class RunInterrupted(LlmbusError):
    """The user stopped the run; everything answered so far is in the log."""

    def __init__(self, run_id: str, done: int, total: int):
        super().__init__(f"run {run_id} interrupted after {done}/{total} items; "
                         f"finish it with: llmbus run TASK --resume {run_id}")
        self.run_id = run_id


def build_request(spec: TaskSpec, prompt: str, item: Item | None = None) -> Request:
    """The provider request for a rendered prompt, carrying the spec's output contract and the raw input."""
    return Request(prompt=prompt, max_tokens=spec.params.max_tokens, temperature=spec.params.temperature,
                   stop=tuple(spec.params.stop),
                   labels=tuple(spec.output.labels) if spec.kind == "classify" and spec.output.labels else None,
                   json_schema=spec.output.json_schema if spec.kind == "extract" else None,
                   input=item.text(spec.data.input) if item is not None else None)


def example_fields(spec: TaskSpec, examples: list[Item]) -> list[dict[str, object]]:
    """Few-shot examples as the template sees them: all fields of each pool item."""
    return [dict(example.fields) for example in examples]


def eval_items(spec: TaskSpec, limit: int | None = None, offset: int = 0) -> tuple[list[Item], ExampleSelector]:
    """The items a run answers (`limit` eval items after the first `offset`) and the example selector."""
    split = split_items(spec, load_items(spec))
    items = split.eval[offset:offset + limit] if limit else split.eval[offset:]
    return items, ExampleSelector(spec, split.pool)


def render_items(spec: TaskSpec, items: list[Item], selector: ExampleSelector,
                 chunk: int = 256) -> Iterator[tuple[Item, str]]:
    """(item, prompt) pairs, selecting examples a chunk at a time (nearest search is batched)."""
    it = iter(items)
    while batch := list(islice(it, chunk)):
        for item, examples in zip(batch, selector.select_many(batch), strict=True):
            yield item, render_prompt(spec, dict(item.fields), example_fields(spec, examples))


def run_task(spec: TaskSpec, model: str, store: Store, *, limit: int | None = None, offset: int = 0,
             concurrency: int = 4, use_cache: bool = True, resume: str | None = None,
             on_progress: Callable[[Progress], None] | None = None,
             provider: Provider | None = None) -> str:
    """Answer the task's eval items with `model`, logging every call; returns the run id."""
    if resume:
        run = store.get_run(resume)
        if run["task"] != spec.name or run["spec_version"] != spec.version:
            raise LlmbusError(f"run {run['id']} is task {run['task']} version {run['spec_version']}, but the spec "
                              f"is now {spec.name} version {spec.version}: start a new run instead")
        model, limit, concurrency = run["model"], run["n_planned"], concurrency or run["concurrency"]
        offset = run["item_offset"] or 0
    items, selector = eval_items(spec, limit, offset)
    owned = provider is None
    provider = provider or open_provider(model)
    try:
        provider.check()
        if resume:
            run_id = run["id"]
            store.update_run(run_id, status="running")
        else:
            run_id = store.create_run(task=spec.name, task_path=str(spec.source or ""), spec_version=spec.version,
                                      spec_json=spec.model_dump_json(by_alias=True), model=model,
                                      metric=spec.main_metric, n_planned=len(items), concurrency=concurrency,
                                      item_offset=offset)
        answered = store.answered_items(run_id, TRANSIENT_ERRORS)
        todo = [item for item in items if item.id not in answered]
        _answer_all(spec, model, provider, store, run_id, render_items(spec, todo, selector), len(items),
                    len(answered), concurrency, use_cache, on_progress)
    finally:
        if owned:
            provider.close()
    return run_id


def _answer_all(spec: TaskSpec, model: str, provider: Provider, store: Store, run_id: str,
                prompts: Iterator[tuple[Item, str]], total: int, already: int, concurrency: int, use_cache: bool,
                on_progress: Callable[[Progress], None] | None) -> None:
    started = time.monotonic()
    done, errors = already, 0
    pairs: list[tuple[object, object]] = []
    pending: set[Future[CallRecord]] = set()
    executor = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="llmbus-call")
    if on_progress:
        on_progress(Progress(done, total, errors, spec.main_metric, float("nan"), 0.0))
    try:
        while True:
            # Keep a bounded number in flight: flat memory, and Ctrl-C has little to cancel.
            while len(pending) < 2 * concurrency and (nxt := next(prompts, None)) is not None:
                item, prompt = nxt
                pending.add(executor.submit(answer_item, spec, model, provider, store, run_id, item, prompt,
                                            use_cache))
            if not pending:
                break
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                record = future.result()
                store.record_call(record)
                if "cache_put" in record.extra:
                    store.cache_put(*record.extra.pop("cache_put"))
                done += 1
                errors += record.error_kind is not None
                pairs.append((record.parsed if record.error_kind is None else None, record.expected))
                if on_progress:
                    on_progress(Progress(done, total, errors, spec.main_metric,
                                         metrics.compute(spec.main_metric, pairs), time.monotonic() - started))
    except KeyboardInterrupt:
        executor.shutdown(wait=False, cancel_futures=True)
        _close_session(store, run_id, started, "interrupted")
        raise RunInterrupted(run_id, done, total) from None
    executor.shutdown(wait=True)
    _close_session(store, run_id, started, "done")


def _close_session(store: Store, run_id: str, started: float, status: str) -> None:
    wall = store.get_run(run_id)["wall_s"] + (time.monotonic() - started)
    store.update_run(run_id, status=status, wall_s=wall, finished_at=now())


def answer_item(spec: TaskSpec, model: str, provider: Provider, store: Store | None, run_id: str, item: Item,
                prompt: str, use_cache: bool = True) -> CallRecord:
    """Call the model for one item (or reuse a cached answer) and return the call record; never raises
    for provider or output errors: those are recorded with their kind."""
    request = build_request(spec, prompt, item)
    record = CallRecord(run_id=run_id, task=spec.name, spec_version=spec.version, item_id=item.id, model=model,
                        prompt=prompt, expected=item.expected, started_at=now(), finished_at=now())
    key = request.cache_key(model)
    tick = time.perf_counter()
    cached = store.cache_get(key) if (use_cache and store is not None) else None
    try:
        completion = Completion(**cached) if cached else provider.complete(request)
    except ProviderError as exc:
        record.error_kind, record.error = exc.kind, str(exc)
        record.latency_s, record.finished_at = time.perf_counter() - tick, now()
        return record
    record.latency_s, record.finished_at = time.perf_counter() - tick, now()
    record.cache_hit = cached is not None
    record.raw_output = completion.text
    record.tokens_in, record.tokens_out = completion.tokens_in, completion.tokens_out
    record.label_probs, record.confidence = completion.label_probs, completion.confidence
    record.meta = dict(completion.extra) or None
    if not record.cache_hit:
        record.cost_usd, record.cpu_s = completion.cost_usd, completion.cpu_seconds
    parsed = parse_output(spec, completion.text)
    record.parsed, record.error_kind, record.error = parsed.value, parsed.error_kind, parsed.error
    record.score = metrics.item_score(spec.main_metric, parsed.value if parsed.error_kind is None else None,
                                      item.expected)
    if use_cache and not record.cache_hit and parsed.error_kind is None:
        record.extra["cache_put"] = (key, model, completion.cache_dict())  # written by the caller's thread
    return record

