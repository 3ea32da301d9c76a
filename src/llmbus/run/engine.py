"""Run a task on a model: render each item's prompt, call the provider concurrently, log every call.

The items are a prefix of the eval split in sample order (a stratified shuffle, see `data.sample_order`), so
`--limit N` answers a representative sample, the same items for every model. Every item's prompt is rendered
once before the first call, so a row missing a field the prompt uses stops the run before anything is spent.
Answers are committed to the call log in small batches (at most FLUSH_EVERY answers or FLUSH_S seconds, so
kill -9 loses at most that much); on Ctrl-C, SIGTERM or an error the calls in flight are given a grace period
and logged, and the run is marked `interrupted` or `failed` (never left `running`); `resume` finishes only the
items still missing (or that failed for a transient reason).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import islice

from llmbus.embed import EmbeddingCache
from llmbus.errors import DataError, LlmbusError, ProviderError, RunInterrupted, SpecError
from llmbus.providers import Provider, Request, open_provider
from llmbus.providers.base import Completion
from llmbus.store import CallRecord, Store, now
from llmbus.task import metrics
from llmbus.task.data import Item, load_items, sample_order, split_items
from llmbus.task.fewshot import ExampleSelector
from llmbus.task.output import parse_output
from llmbus.task.spec import TaskSpec, render_prompt

# Failures worth another try on resume; schema violations and the like are final answers.
TRANSIENT_ERRORS = frozenset({"timeout", "connection", "rate_limited", "unreachable", "bad_response",
                              "http_500", "http_502", "http_503", "http_504", "http_408", "http_409", "http_425"})
# On a stop, calls already in flight get this long to finish and be logged (they may already be paid for).
GRACE_S = 10.0
FLUSH_EVERY, FLUSH_S = 100, 0.5  # answers are written in batches of at most this many, or this often
# How eval items are ordered before --offset/--limit; "file" is how runs made before sample order took theirs.
SAMPLINGS = ("representative", "balanced", "file")


@dataclass
class Progress:
    """What a progress display needs after each answer."""

    done: int
    total: int
    errors: int
    metric_name: str
    metric_value: float
    elapsed_s: float


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


def eval_items(spec: TaskSpec, limit: int | None = None, offset: int = 0, sampling: str = "representative",
               cache: EmbeddingCache | None = None) -> tuple[list[Item], ExampleSelector]:
    """The items a run answers (`limit` eval items after the first `offset`, in sample order) and the example
    selector (nearest shots embed through `cache`, the store's embeddings, when given); `sampling="balanced"`
    gives every class equal room (classify tasks only)."""
    if sampling not in SAMPLINGS:
        raise LlmbusError(f"unknown sampling {sampling!r}: use one of {', '.join(SAMPLINGS)}")
    if sampling == "balanced" and spec.kind != "classify":
        raise LlmbusError(f"--stratify balances classes: it needs a classify task, and {spec.name} is {spec.kind}")
    all_items = load_items(spec)
    split = split_items(spec, all_items)
    ordered = sample_order(spec, split.eval, balanced=True) if sampling == "balanced" else split.eval
    if sampling == "file":
        in_eval = {item.id for item in split.eval}
        ordered = [item for item in all_items if item.id in in_eval]
    items = ordered[offset:offset + limit] if limit else ordered[offset:]
    return items, ExampleSelector(spec, split.pool, cache)


def sample_warnings(spec: TaskSpec, items: list[Item]) -> list[str]:
    """What makes a run's figure weak before any call: labels the sample never expects, very few items."""
    warnings = []
    if spec.kind == "classify" and spec.output.labels:
        counts = Counter(str(item.expected) for item in items)
        found = metrics.coverage_warning(spec.output.labels, counts, f"the {len(items)} items to answer")
        if found:
            warnings.append(found)
    if 0 < len(items) < 30:
        warnings.append(f"only {len(items)} items: the metric's 95% interval will be wide (see llmbus eval)")
    return warnings


def check_items(spec: TaskSpec, items: list[Item], pool: list[Item]) -> None:
    """Render every item's prompt once (with stand-in examples) so a row missing a field fails before any call,
    naming its file, line and item."""
    template_examples = example_fields(spec, pool[: spec.fewshot.k])
    for item in items:
        try:
            render_prompt(spec, dict(item.fields), template_examples)
        except SpecError as exc:
            raise DataError(f"{item.where or spec.data.path}: item {item.id!r}: {exc}") from None


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
             provider: Provider | None = None, sampling: str = "representative",
             on_stage: Callable[[str], None] | None = None,
             on_warning: Callable[[str], None] | None = None) -> str:
    """Answer the task's eval items with `model`, logging every call; returns the run id.

    `on_stage` hears what is being prepared (starting the model, embedding the pool), `on_warning` what makes the
    sample weak (labels it never expects, few items) before the first call."""
    stage = on_stage or (lambda _text: None)
    if resume:
        run = store.get_run(resume)
        if run["task"] != spec.name or run["spec_version"] != spec.version:
            raise LlmbusError(f"run {run['id']} is task {run['task']} version {run['spec_version']}, but the spec "
                              f"is now {spec.name} version {spec.version}: start a new run instead")
        model, limit, concurrency = run["model"], run["n_planned"], concurrency or run["concurrency"]
        offset, sampling = run["item_offset"] or 0, run.get("sampling") or "representative"
    items, selector = eval_items(spec, limit, offset, sampling, store.embeddings)
    answered = store.answered_items(run["id"], TRANSIENT_ERRORS) if resume else set()
    todo = [item for item in items if item.id not in answered]
    check_items(spec, todo, selector.pool)
    for warning in sample_warnings(spec, items):
        if on_warning:
            on_warning(warning)
    owned = provider is None
    provider = provider or open_provider(model)  # an unknown model fails here, before any progress line
    try:
        stage(f"starting {model}")
        provider.check()
        if resume:
            run_id = run["id"]
            store.update_run(run_id, status="running")
        else:
            run_id = store.create_run(task=spec.name, task_path=str(spec.source or ""), spec_version=spec.version,
                                      spec_json=spec.model_dump_json(by_alias=True), model=model,
                                      metric=spec.main_metric, n_planned=len(items), concurrency=concurrency,
                                      item_offset=offset, sampling=sampling)
        if spec.fewshot.k and spec.fewshot.strategy == "nearest" and todo:
            stage(f"embedding {len(selector.pool)} pool examples")
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
    tally = metrics.Tally(spec.main_metric, spec.output.labels or ())  # O(1) per answer: no pass over all answers
    pending: set[Future[CallRecord]] = set()
    executor = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="llmbus-call")

    batch: list[CallRecord] = []
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal last_flush
        store.record_calls(batch)
        store.cache_put_many([record.extra.pop("cache_put") for record in batch if "cache_put" in record.extra])
        batch.clear()
        last_flush = time.monotonic()

    def log(record: CallRecord) -> None:
        nonlocal done, errors
        batch.append(record)
        # One transaction per batch, not per answer: at most FLUSH_EVERY answers or FLUSH_S seconds unwritten.
        if len(batch) >= FLUSH_EVERY or time.monotonic() - last_flush >= FLUSH_S:
            flush()
        done += 1
        errors += record.error_kind is not None
        tally.add(record.parsed if record.error_kind is None else None, record.expected)

    status = "failed"
    try:
        while True:
            # Keep a bounded number in flight: flat memory, and a stop has little to wait for.
            while len(pending) < 2 * concurrency and (nxt := next(prompts, None)) is not None:
                item, prompt = nxt
                pending.add(executor.submit(answer_item, spec, model, provider, store, run_id, item, prompt,
                                            use_cache))
            if not pending:
                break
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            # Log every answer of this batch before an error from one of them stops the run: none is lost.
            failure: BaseException | None = None
            for future in finished:
                if (raised := future.exception()) is None:
                    log(future.result())
                else:
                    failure = failure or raised
            if failure is not None:
                raise failure
            if on_progress:
                on_progress(Progress(done, total, errors, spec.main_metric, tally.value(),
                                     time.monotonic() - started))
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
        raise RunInterrupted(run_id, done, total) from None
    finally:
        if status != "done":
            _log_in_flight(pending, log)
        flush()
        executor.shutdown(wait=status == "done", cancel_futures=True)
        _close_session(store, run_id, started, status)


def _log_in_flight(pending: set[Future[CallRecord]], log: Callable[[CallRecord], None]) -> None:
    """After a stop: drop calls not yet started, give the running ones GRACE_S to finish, log what finished."""
    running = {f for f in pending if not f.cancel()}
    try:
        finished, _ = wait(running, timeout=GRACE_S)
    except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
        finished = {f for f in running if f.done()}
    for future in finished:
        if not future.cancelled() and future.exception() is None:
            log(future.result())


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

