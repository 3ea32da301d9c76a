"""Run a task on a model: render each item's prompt, call the provider concurrently, log every call.

The items are a prefix of the eval split in sample order (a stratified shuffle, see `data.sample_order`), so
`--limit N` answers a representative sample, the same items for every model. Every item's prompt is rendered
once before the first call, so a row missing a field the prompt uses stops the run before anything is spent.
Answers are committed to the call log in small batches (at most FLUSH_EVERY answers or FLUSH_S seconds, so
kill -9 loses at most that much); on Ctrl-C, SIGTERM or an error the calls in flight are given a grace period:
answers that arrive within it are logged, calls still in flight after it are cancelled (the provider is closed,
which shuts their connections) and logged as `interrupted` with what is known (prompt, start, time waited); a
second Ctrl-C ends the grace at once. What has arrived is always written, and the run is marked `interrupted` or
`failed` (never left `running`); `resume` finishes only the items still missing (or that failed for a transient
reason, `interrupted` included).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from llmbus.embed import EmbeddingCache
from llmbus.errors import DataError, LlmbusError, RunInterrupted, SpecError
from llmbus.providers import Provider, open_provider
from llmbus.providers.base import reads_prompt
from llmbus.providers.config import resolve_model
from llmbus.providers.model import model_reads_prompt
from llmbus.run.adapter import CallPlan, example_fields
from llmbus.run.cache import ExactCache
from llmbus.run.executors import Executor, LocalExecutor
from llmbus.run.options import Progress, RunHooks, RunOptions, ScaleOptions
from llmbus.settings import GRACE_S
from llmbus.store import CallRecord, Store, now
from llmbus.task import metrics
from llmbus.task.data import Item, Split
from llmbus.task.fewshot import NEAREST, ExampleSelector
from llmbus.task.render import render_prompt
from llmbus.task.spec import TaskSpec
from llmbus.task.stream import EvalItems, eval_items_in_order
from llmbus.telemetry import span

# Failures worth another try on resume; schema violations and the like are final answers.
TRANSIENT_ERRORS = frozenset({"timeout", "connection", "rate_limited", "unreachable", "bad_response",
                              "http_500", "http_502", "http_503", "http_504", "http_408", "http_409", "http_425",
                              "interrupted"})
FLUSH_EVERY, FLUSH_S = 100, 0.5  # answers are written in batches of at most this many, or this often
# How eval items are ordered before --offset/--limit; "file" is how runs made before sample order took theirs.
SAMPLINGS = ("representative", "balanced", "file")
EXECUTORS = ("local", "ray")
log = logging.getLogger(__name__)
SUBSET = "subset"  # the sampling recorded for a run over items its caller chose (`run_task(subset=…)`)


def eval_items(spec: TaskSpec, limit: int | None = None, offset: int = 0, sampling: str = "representative",
               cache: EmbeddingCache | None = None) -> tuple[list[Item], ExampleSelector]:
    """The items a run answers (`limit` eval items after the first `offset`, in sample order) and the example
    selector (nearest shots embed through `cache`, the store's embeddings, when given); `sampling="balanced"`
    gives every class equal room (classify tasks only)."""
    items, selector = streamed_eval_items(spec, limit, offset, sampling, cache)
    return list(items), selector


def streamed_eval_items(spec: TaskSpec, limit: int | None = None, offset: int = 0, sampling: str = "representative",
                        cache: EmbeddingCache | None = None) -> tuple[EvalItems, ExampleSelector]:
    """`eval_items`, read from the dataset as they are iterated: memory flat in the number of items."""
    if sampling not in SAMPLINGS:
        raise LlmbusError(f"unknown sampling {sampling!r}: use one of {', '.join(SAMPLINGS)}")
    if sampling == "balanced" and not spec.kind_strategy.labelled:
        raise LlmbusError(f"--stratify balances classes: it needs a classify task, and {spec.name} is {spec.kind}")
    ordered, pool = eval_items_in_order(spec, sampling)
    return ordered[offset:offset + limit] if limit else ordered[offset:], ExampleSelector(spec, pool, cache)


def sample_warnings(spec: TaskSpec, items: list[Item] | EvalItems) -> list[str]:
    """What makes a run's figure weak before any call: labels the sample never expects, very few items."""
    warnings = []
    if spec.kind_strategy.labelled and spec.output.labels:
        counts = items.expected_counts() if isinstance(items, EvalItems) else Counter(str(i.expected) for i in items)
        found = metrics.coverage_warning(spec.output.labels, counts, f"the {len(items)} items to answer")
        if found:
            warnings.append(found)
    if 0 < len(items) < 30:
        warnings.append(f"only {len(items)} items: the metric's 95% interval will be wide (see llmbus eval)")
    return warnings


@dataclass
class Unanswered:
    """The items a run still has to answer (all of them, less those `--resume` found answered), read as they are
    iterated."""

    items: list[Item] | EvalItems
    answered: set[str]

    def __iter__(self) -> Iterator[Item]:
        return (item for item in self.items if item.id not in self.answered)


def check_items(spec: TaskSpec, items: Iterable[Item], pool: list[Item]) -> None:
    """Render every item's prompt once (with stand-in examples) so a row missing a field fails before any call,
    naming its file, line and item."""
    template_examples = example_fields(pool[: spec.fewshot.k], spec)
    for item in items:
        try:
            render_prompt(spec, dict(item.fields), template_examples)
        except SpecError as exc:
            raise DataError(f"{item.where or spec.data.path}: item {item.id!r}: {exc}") from None


def run_task(spec: TaskSpec, model: str, store: Store, options: RunOptions | None = None, *,
             provider: Provider | None = None, scale: ScaleOptions | None = None, hooks: RunHooks | None = None,
             subset: Split | None = None) -> str:
    """Answer the task's eval items with `model` (or a `provider` the caller opened and closes), logging every
    call; returns the run id.

    `options` say which items and how (limit, offset, sampling, concurrency, cache, resume, tag, grace), `scale`
    where the calls run (this process's thread pool, or a Ray cluster), `hooks` what the caller hears (progress,
    stages, sample warnings before the first call). `subset` answers its own items with examples from its own pool
    instead (the optimizer's validation items; `limit` and `offset` apply to them, and a run made so resumes only
    with the same subset)."""
    options, scale, hooks = options or RunOptions(), scale or ScaleOptions(), hooks or RunHooks()
    if scale.executor not in EXECUTORS:
        raise LlmbusError(f"unknown executor {scale.executor!r}: use one of {', '.join(EXECUTORS)}")
    if subset is not None and scale.executor != "local":
        raise LlmbusError("a run over items its caller chose answers in this process (executor local)")
    stage = hooks.on_stage or (lambda _text: None)
    run = _resumable(store, options.resume, spec, subset) if options.resume else None
    if run is not None:  # the run's own model and items; a concurrency given now wins
        model = run["model"]
        options = replace(options, limit=run["n_planned"], concurrency=options.concurrency or run["concurrency"],
                          offset=run["item_offset"] or 0, sampling=run.get("sampling") or "representative")
    limit, offset, concurrency, sampling = options.limit, options.offset, options.concurrency, options.sampling
    items: list[Item] | EvalItems
    if subset is None:
        items, selector = streamed_eval_items(spec, limit, offset, sampling, store.embeddings)
    else:
        items = subset.eval[offset:offset + limit] if limit else subset.eval[offset:]
        selector, sampling = ExampleSelector(spec, subset.pool, store.embeddings), SUBSET
    answered = store.answered_items(run["id"], TRANSIENT_ERRORS) if run is not None else set()
    todo = Unanswered(items, answered)
    # Students read the raw input: no prompt is rendered (or checked) for them, and no example selected.
    prompted = reads_prompt(provider) if provider is not None else model_reads_prompt(model)
    if prompted:
        check_items(spec, todo, selector.pool)
    for warning in sample_warnings(spec, items):
        if hooks.on_warning:
            hooks.on_warning(warning)
    # an unknown model fails here, before any progress line (a provider given by the caller needs no config)
    config = resolve_model(model) if provider is None else None
    owned = provider is None and scale.executor == "local"  # Ray workers open their own
    provider = provider or (open_provider(config) if config is not None and owned else None)
    try:
        if prompted and provider is not None and spec.fewshot.k and spec.fewshot.strategy == "nearest":
            share = getattr(provider, "use_embeddings", None)  # the student of a cascade reuses the vectors
            if share is not None:  # the selection embeds, instead of embedding every input twice
                share(store.embeddings)
        if provider is not None:
            stage(f"starting {model}")
            provider.check()
        if run is not None:
            run_id = run["id"]
            store.update_run(run_id, status="running")
        else:
            run_id = store.create_run(task=spec.name, task_path=str(spec.source or ""), spec_version=spec.version,
                                      spec_json=spec.model_dump_json(by_alias=True), model=model,
                                      metric=spec.main_metric, n_planned=len(items), concurrency=concurrency,
                                      item_offset=offset, sampling=sampling, tag=options.tag)
        if prompted and spec.fewshot.k and spec.fewshot.strategy in NEAREST and len(items) > len(answered):
            stage(f"embedding {len(selector.pool)} pool examples")
        plan = CallPlan(spec, model, run_id, options.use_cache)
        runner: Executor
        if provider is not None:
            runner = LocalExecutor(provider, ExactCache(store), selector, concurrency)
        else:
            from llmbus.run.ray_executor import RayExecutor  # Ray is imported only when asked for

            stage("connecting to the Ray cluster")
            assert config is not None
            runner = RayExecutor(config, store, concurrency, scale.ray_address, scale.workers)
        to_answer = len(items) - len(answered)
        log.info("run %s: task %s (spec %s) on %s, %d of %d items to answer", run_id, spec.name, spec.version,
                 model, to_answer, len(items))
        with span(f"llmbus run {spec.name}", {"llmbus.run_id": run_id, "llmbus.task": spec.name,
                                               "llmbus.spec_version": spec.version, "llmbus.model": model,
                                               "llmbus.items": to_answer}):
            _answer_all(plan, runner, store, todo, len(items), len(answered), hooks.on_progress, options.grace_s)
    finally:
        if owned and provider is not None:
            provider.close()
    return run_id


def _resumable(store: Store, run_id: str, spec: TaskSpec, subset: Split | None) -> dict[str, Any]:
    """The run `--resume` finishes, if this spec (and, for a run over chosen items, a subset) can finish it."""
    run = store.get_run(run_id)
    if run.get("sampling") == SUBSET and subset is None:
        raise LlmbusError(f"run {run['id']} answered items its caller chose (tag {run.get('tag')}): it cannot "
                          "be resumed from the spec")
    if run["task"] != spec.name or run["spec_version"] != spec.version:
        raise LlmbusError(f"run {run['id']} is task {run['task']} version {run['spec_version']}, but the spec "
                          f"is now {spec.name} version {spec.version}: start a new run instead")
    return run


def _answer_all(plan: CallPlan, executor: Executor, store: Store, items: Iterable[Item], total: int, already: int,
                on_progress: Callable[[Progress], None] | None, grace_s: float = GRACE_S) -> None:
    spec = plan.spec
    started = time.monotonic()
    done, errors = already, 0
    tally = metrics.Tally(spec.main_metric, spec.output.labels or ())  # O(1) per answer: no pass over all answers
    batch: list[CallRecord] = []
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal last_flush
        # Safe to repeat after an interruption: rows replace their earlier write, cache keys keep the first. A
        # record handed over twice by a stop (see LocalExecutor.drain) is one row.
        rows = [*batch, *(row for record in batch for row in record.extra.get("content_free_rows", ()))]
        store.record_calls(list({(row.run_id, row.item_id): row for row in rows}.values()))
        store.cache_put_many([record.extra["cache_put"] for record in batch if "cache_put" in record.extra])
        batch.clear()
        last_flush = time.monotonic()

    def log(records: list[CallRecord]) -> None:
        nonlocal done, errors
        batch.extend(records)  # first, in one step: a Ctrl-C during the counting below cannot lose a record
        for record in records:
            done += 1
            errors += record.error_kind is not None
            tally.add(record.parsed if record.error_kind is None else None, record.expected, record.score)
        # One transaction per batch, not per answer: at most FLUSH_EVERY answers or FLUSH_S seconds unwritten.
        if len(batch) >= FLUSH_EVERY or time.monotonic() - last_flush >= FLUSH_S:
            flush()

    status = "failed"
    try:
        for records in executor.answers(plan, items):
            log(records)
            if on_progress:
                on_progress(Progress(done, total, errors, spec.main_metric, tally.value(),
                                     time.monotonic() - started))
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
        raise RunInterrupted(plan.run_id, done, total) from None
    finally:
        # Calls in flight may already be paid for: log what finishes within the grace (a second Ctrl-C ends it),
        # and the rest as interrupted. No Ctrl-C can stop the writes.
        with deferred_interrupts() as second_stop:
            drained = executor.drain(grace_s, second_stop) if status != "done" else []
            log(drained)
            flush()
            executor.close()
            _close_session(store, plan.run_id, started, status)


def _close_session(store: Store, run_id: str, started: float, status: str) -> None:
    wall = store.get_run(run_id)["wall_s"] + (time.monotonic() - started)
    store.update_run(run_id, status=status, wall_s=wall, finished_at=now())
    log.info("run %s %s (%.1f s)", run_id, status, wall)


@contextmanager
def deferred_interrupts() -> Iterator[threading.Event]:
    """While the block runs, Ctrl-C and SIGTERM only set the event it gives (in the main thread; elsewhere
    signals never reach Python code): a run that is already stopping writes what it has before it exits."""
    heard = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield heard
        return
    previous = {sig: signal.signal(sig, lambda *_: heard.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield heard
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
