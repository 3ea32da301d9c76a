"""Where a run's calls happen. An executor takes the run's plan and its items and hands back call records
batch by batch as they finish; the engine logs them, shows progress and decides when to stop.

`LocalExecutor` is a few worker threads in this process. Every executor does the per-item work through
`adapter.answer_batch`, so the prompt, the cache and the record are the same wherever the call ran.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Protocol

from llmbus.providers import Provider
from llmbus.providers.base import batch_size, reads_prompt
from llmbus.run.adapter import CallPlan, Job, answer_batch, example_fields, interrupted_records, render_job
from llmbus.run.cache import ExactCache
from llmbus.store import CallRecord, now
from llmbus.task.chat import user_turn
from llmbus.task.data import Item
from llmbus.task.fewshot import ExampleSelector
from llmbus.task.render import Rendered
from llmbus.task.spec import TaskSpec
from llmbus.telemetry import carry_context


class Executor(Protocol):
    """Runs the calls of one run; `answers` may raise after yielding (the engine logs what it got first)."""

    def answers(self, plan: CallPlan, items: Iterable[Item]) -> Iterator[list[CallRecord]]: ...

    def drain(self, grace_s: float, stop_waiting: threading.Event | None = None) -> list[CallRecord]:
        """After a stop: the records of calls that finish within `grace_s`, and an `interrupted` record for
        each item whose call was still in flight after it (`stop_waiting`, a second Ctrl-C, ends the wait)."""
        ...

    def close(self) -> None: ...


def render_items(spec: TaskSpec, items: Iterable[Item], selector: ExampleSelector,
                 chunk: int = 256) -> Iterator[Job]:
    """Each item's job (its prompt, and content-free prompts when calibrated), selecting examples a chunk at a
    time (nearest search is batched)."""
    it = iter(items)
    while batch := list(islice(it, chunk)):
        for item, examples in zip(batch, selector.select_many(batch), strict=True):
            yield render_job(spec, item, example_fields(examples, spec))


def input_jobs(spec: TaskSpec, items: Iterable[Item]) -> Iterator[Job]:
    """Jobs for a provider that reads only each item's raw input (`reads_prompt` false: students, heads): no
    prompt is rendered and no example selected, since neither would be read; the input is what the call log
    keeps as the prompt (and a calibrated spec's content-free inputs stand for their prompts)."""
    content_free = tuple(Rendered(text, (user_turn(text),)) for text in spec.kind_strategy.content_free(spec.output))
    for item in items:
        yield Job(item, item.text(spec.data.input), content_free)


def jobs_for(provider: Provider, spec: TaskSpec, items: Iterable[Item], selector: ExampleSelector) -> Iterator[Job]:
    """The jobs `provider` needs: rendered prompts, or only the inputs for providers that read nothing else."""
    return render_items(spec, items, selector) if reads_prompt(provider) else input_jobs(spec, items)


@dataclass
class _Batch:
    """Jobs a worker is answering, and when it started on them."""

    jobs: list[Job]
    started_at: datetime
    tick: float


class _Finished:
    """What a worker hands over after its last batch."""


_Outcome = list[CallRecord] | BaseException | _Finished  # what a worker hands over: records, a failure, its end


class LocalExecutor:
    """`concurrency` worker threads in this process. Each takes the next batch of jobs (rendered as it is taken:
    nothing waits rendered, so memory stays flat and a stop has nothing queued), answers it and hands the records
    over; the caller's thread collects them every TICK_S (one wake-up per tick, not one per answer: with answers
    arriving every millisecond, per-answer hand-offs cost as much CPU as the calls). Providers that batch
    (in-process students) get their batch size per call."""

    TICK_S = 0.01

    def __init__(self, provider: Provider, cache: ExactCache | None, selector: ExampleSelector, concurrency: int):
        self.provider, self.cache, self.selector = provider, cache, selector
        self.concurrency = max(1, concurrency)
        self._take = threading.Lock()  # one worker at a time renders the next batch
        # Under `_handoff`: a batch leaves `_busy` and its outcome joins `_results` at once (see drain).
        self._handoff = threading.Lock()
        self._arrived = threading.Event()  # something is in `_results`
        self._results: list[_Outcome] = []
        self._busy: dict[int, _Batch] = {}  # worker → the batch it is answering
        self._abandoned = False  # after a drain: late answers go nowhere (they were logged as interrupted)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # Outcomes the caller's thread took and has not seen come back for more: a Ctrl-C may land anywhere, so
        # they stay here until the caller asks for the next ones, and `drain` hands them over again (the engine
        # writes a row once however often it is handed over).
        self._held: list[_Outcome] = []
        self._plan: CallPlan | None = None

    def answers(self, plan: CallPlan, items: Iterable[Item]) -> Iterator[list[CallRecord]]:
        """Records as their batches finish. When a batch raises, the records that came before it come first."""
        self._plan = plan
        jobs = jobs_for(self.provider, plan.spec, items, self.selector)
        size = batch_size(self.provider)
        # Daemon threads: a call abandoned by a stop never keeps the process from exiting.
        # each worker in the caller's context: the calls' spans nest under the run's
        self._threads = [threading.Thread(target=carry_context(self._work), args=(plan, jobs, size, index), daemon=True,
                                          name=f"llmbus-call-{index}") for index in range(self.concurrency)]
        for thread in self._threads:
            thread.start()
        working = len(self._threads)
        while working:
            self._arrived.wait()
            time.sleep(self.TICK_S)  # let more answers arrive: they are collected in one wake-up
            with self._handoff:
                self._held.extend(self._results)
                self._results.clear()
                self._arrived.clear()
            outcomes = self._held
            records = [record for outcome in outcomes if isinstance(outcome, list) for record in outcome]
            if records:
                yield records
            self._held = []  # the caller came back for more: it has them
            working -= sum(isinstance(outcome, _Finished) for outcome in outcomes)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome

    def _work(self, plan: CallPlan, jobs: Iterator[Job], size: int, index: int) -> None:
        try:
            while not self._stop.is_set():
                with self._take:
                    batch = list(islice(jobs, size))
                with self._handoff:
                    if not batch or self._abandoned:  # the end, or a stop drained us meanwhile: never send it
                        break
                    self._busy[index] = _Batch(batch, now(), time.perf_counter())
                self._hand_over(index, answer_batch(plan, self.provider, self.cache, batch))
        except BaseException as exc:  # a bug, or a bad row: the caller raises it after what came before
            self._hand_over(index, exc)
        finally:
            self._hand_over(index, _Finished())

    def _hand_over(self, index: int, outcome: _Outcome) -> None:
        with self._handoff:
            self._busy.pop(index, None)
            if not self._abandoned:
                self._results.append(outcome)
                self._arrived.set()

    def drain(self, grace_s: float, stop_waiting: threading.Event | None = None) -> list[CallRecord]:
        """After a stop: no worker takes another batch; the ones answering get `grace_s` to finish, and their
        records come back (with any the caller may not have logged), plus an `interrupted` record for each item
        still in flight after it, or once `stop_waiting` is set (a second Ctrl-C). Those calls are abandoned:
        closing the provider cancels them."""
        self._stop.set()
        deadline = time.monotonic() + grace_s
        with suppress(KeyboardInterrupt):  # a second Ctrl-C where signals still raise: stop waiting
            for thread in self._threads:
                while thread.is_alive() and not (stop_waiting and stop_waiting.is_set()):
                    if (left := deadline - time.monotonic()) <= 0:
                        break
                    thread.join(min(0.05, left))
        with self._handoff:
            self._abandoned = True
            busy = list(self._busy.values())
            outcomes = [*self._held, *self._results]
        records = [record for outcome in outcomes if isinstance(outcome, list) for record in outcome]
        if self._plan is not None:
            for batch in busy:
                records += interrupted_records(self._plan, batch.jobs, batch.started_at,
                                               time.perf_counter() - batch.tick)
        return records

    def close(self) -> None:
        """Let the workers end after their current batch (a stop's abandoned calls are not waited for)."""
        self._stop.set()
