"""Where a run's calls happen. An executor takes the run's plan and its items and hands back call records
batch by batch as they finish; the engine logs them, shows progress and decides when to stop.

`LocalExecutor` is a bounded thread pool in this process. Every executor does the per-item work through
`adapter.answer_batch`, so the prompt, the cache and the record are the same wherever the call ran.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Protocol

from llmbus.providers import Provider
from llmbus.providers.base import batch_size
from llmbus.run.adapter import CallPlan, Job, answer_batch, content_free_prompts, example_fields, interrupted_records
from llmbus.run.cache import ExactCache
from llmbus.store import CallRecord, now
from llmbus.task.data import Item
from llmbus.task.fewshot import ExampleSelector
from llmbus.task.spec import TaskSpec, render_prompt


class Executor(Protocol):
    """Runs the calls of one run; `answers` may raise after yielding (the engine logs what it got first)."""

    def answers(self, plan: CallPlan, items: list[Item]) -> Iterator[list[CallRecord]]: ...

    def drain(self, grace_s: float) -> list[CallRecord]:
        """After a stop: the records of calls that finish within `grace_s`, and an `interrupted` record for
        each item whose call was still in flight after it (a second Ctrl-C ends the wait at once)."""
        ...

    def close(self) -> None: ...


def render_items(spec: TaskSpec, items: list[Item], selector: ExampleSelector,
                 chunk: int = 256) -> Iterator[Job]:
    """Each item's job (its prompt, and content-free prompts when calibrated), selecting examples a chunk at a
    time (nearest search is batched)."""
    it = iter(items)
    while batch := list(islice(it, chunk)):
        for item, examples in zip(batch, selector.select_many(batch), strict=True):
            shown = example_fields(examples, spec)
            yield Job(item, render_prompt(spec, dict(item.fields), shown), content_free_prompts(spec, item, shown))


@dataclass
class _Batch:
    """Jobs handed to one worker, and when the worker started on them (None while they wait)."""

    jobs: list[Job]
    started_at: datetime | None = None
    tick: float = 0.0


class LocalExecutor:
    """A bounded thread pool: `concurrency` calls at once, at most twice that many waiting (flat memory, and a
    stop has little to wait for). Providers that batch (in-process students) get their batch size per call."""

    def __init__(self, provider: Provider, cache: ExactCache | None, selector: ExampleSelector, concurrency: int):
        self.provider, self.cache, self.selector = provider, cache, selector
        self.concurrency = max(1, concurrency)
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="llmbus-call")
        self._pending: dict[Future[list[CallRecord]], _Batch] = {}
        self._plan: CallPlan | None = None

    def answers(self, plan: CallPlan, items: list[Item]) -> Iterator[list[CallRecord]]:
        """Records as their batches finish. When a batch raises, the other finished batches come first."""
        self._plan = plan
        prompts = render_items(plan.spec, items, self.selector)
        size = batch_size(self.provider)
        while True:
            while len(self._pending) < 2 * self.concurrency and (jobs := list(islice(prompts, size))):
                batch = _Batch(jobs)
                self._pending[self._pool.submit(self._answer, plan, batch)] = batch
            if not self._pending:
                return
            finished, _ = wait(self._pending, return_when=FIRST_COMPLETED)
            failure: BaseException | None = None
            records: list[CallRecord] = []
            for future in finished:
                del self._pending[future]
                if (raised := future.exception()) is None:
                    records += future.result()
                else:
                    failure = failure or raised
            if records:
                yield records
            if failure is not None:
                raise failure

    def _answer(self, plan: CallPlan, batch: _Batch) -> list[CallRecord]:
        batch.started_at, batch.tick = now(), time.perf_counter()
        return answer_batch(plan, self.provider, self.cache, batch.jobs)

    def drain(self, grace_s: float) -> list[CallRecord]:
        """After a stop: drop calls not yet started, give the running ones `grace_s` to finish and return their
        records, plus an `interrupted` record for each item still in flight after it (or after a second
        Ctrl-C). Those calls are abandoned: `close` does not wait for them, and closing the provider cancels
        them."""
        running = {future: batch for future, batch in self._pending.items() if not future.cancel()}
        with suppress(KeyboardInterrupt):  # a second Ctrl-C: stop waiting
            wait(running, timeout=grace_s)
        records: list[CallRecord] = []
        for future, batch in running.items():
            if future.done() and future.exception() is None:
                records += future.result()
            elif not future.done() and self._plan is not None:
                records += interrupted_records(self._plan, batch.jobs, batch.started_at or now(),
                                               time.perf_counter() - batch.tick if batch.tick else 0.0)
        self._pending = {future: batch for future, batch in running.items() if not future.done()}
        return records

    def close(self) -> None:
        """Stop the threads (without waiting for calls abandoned by a stop)."""
        self._pool.shutdown(wait=not self._pending, cancel_futures=True)
