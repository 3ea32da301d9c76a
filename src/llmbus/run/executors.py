"""Where a run's calls happen. An executor takes the run's plan and its items and hands back call records
batch by batch as they finish; the engine logs them, shows progress and decides when to stop.

`LocalExecutor` is a bounded thread pool in this process. Every executor does the per-item work through
`adapter.answer_batch`, so the prompt, the cache and the record are the same wherever the call ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from itertools import islice
from typing import Protocol

from llmbus.providers import Provider
from llmbus.providers.base import batch_size
from llmbus.run.adapter import CallPlan, Job, answer_batch, example_fields, render_job
from llmbus.run.cache import ExactCache
from llmbus.store import CallRecord
from llmbus.task.data import Item
from llmbus.task.fewshot import ExampleSelector
from llmbus.task.spec import TaskSpec
from llmbus.telemetry import carry_context


class Executor(Protocol):
    """Runs the calls of one run; `answers` may raise after yielding (the engine logs what it got first)."""

    def answers(self, plan: CallPlan, items: list[Item]) -> Iterator[list[CallRecord]]: ...

    def drain(self, grace_s: float) -> list[CallRecord]: ...

    def close(self) -> None: ...


def render_items(spec: TaskSpec, items: list[Item], selector: ExampleSelector,
                 chunk: int = 256) -> Iterator[Job]:
    """Each item's job (its prompt, and content-free prompts when calibrated), selecting examples a chunk at a
    time (nearest search is batched)."""
    it = iter(items)
    while batch := list(islice(it, chunk)):
        for item, examples in zip(batch, selector.select_many(batch), strict=True):
            yield render_job(spec, item, example_fields(examples, spec))


class LocalExecutor:
    """A bounded thread pool: `concurrency` calls at once, at most twice that many waiting (flat memory, and a
    stop has little to wait for). Providers that batch (in-process students) get their batch size per call."""

    def __init__(self, provider: Provider, cache: ExactCache | None, selector: ExampleSelector, concurrency: int):
        self.provider, self.cache, self.selector = provider, cache, selector
        self.concurrency = max(1, concurrency)
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="llmbus-call")
        self._pending: set[Future[list[CallRecord]]] = set()

    def answers(self, plan: CallPlan, items: list[Item]) -> Iterator[list[CallRecord]]:
        """Records as their batches finish. When a batch raises, the other finished batches come first."""
        prompts = render_items(plan.spec, items, self.selector)
        size = batch_size(self.provider)
        while True:
            while len(self._pending) < 2 * self.concurrency and (jobs := list(islice(prompts, size))):
                # in the caller's context: the calls' spans nest under the run's
                self._pending.add(self._pool.submit(carry_context(answer_batch), plan, self.provider, self.cache,
                                                    jobs))
            if not self._pending:
                return
            finished, self._pending = wait(self._pending, return_when=FIRST_COMPLETED)
            failure: BaseException | None = None
            records: list[CallRecord] = []
            for future in finished:
                if (raised := future.exception()) is None:
                    records += future.result()
                else:
                    failure = failure or raised
            if records:
                yield records
            if failure is not None:
                raise failure

    def drain(self, grace_s: float) -> list[CallRecord]:
        """After a stop: drop calls not yet started, give the running ones `grace_s` to finish, return theirs."""
        running = {f for f in self._pending if not f.cancel()}
        try:
            finished, _ = wait(running, timeout=grace_s)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            finished = {f for f in running if f.done()}
        self._pending = running - finished  # abandoned: `close` does not wait for them
        return [record for future in finished if not future.cancelled() and future.exception() is None
                for record in future.result()]

    def close(self) -> None:
        """Stop the threads (without waiting for calls abandoned by a stop)."""
        self._pool.shutdown(wait=not self._pending, cancel_futures=True)
