"""The gateway's call log, written off the request path: a background thread batches rows into one transaction
every `batch_rows` rows or `interval_s` seconds, whichever comes first, and `close()` writes what is left.

A request is answered as soon as its row is queued; uvicorn's graceful shutdown (SIGTERM, Ctrl-C) finishes the
requests in flight and then the app's lifespan closes the writer, so every answered request has its row. A
batch the database refuses (it is restarting, a lock timed out) is tried again, so a short outage delays rows
instead of losing them; the queue is bounded, so a database that stays away slows requests down instead of
growing memory without end.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from llmbus.store import CallRecord, Store

log = logging.getLogger("llmbus.serve")


@dataclass(frozen=True)
class Arrival:
    """When a request reached the gateway: wall time for the call log, a monotonic tick for its latency."""

    at: datetime
    tick: float

    @classmethod
    def now(cls) -> Arrival:
        """This moment."""
        return cls(datetime.now(UTC), time.perf_counter())

    def stamps(self) -> tuple[datetime, datetime, float]:
        """(started_at, finished_at, latency_s) of a request finishing now."""
        elapsed = time.perf_counter() - self.tick
        return self.at, self.at + timedelta(seconds=elapsed), elapsed


@dataclass
class _Row:
    record: CallRecord
    spend_key: str | None


class CallWriter:
    """Queues call-log rows and writes them in batches from one thread (thread-safe)."""

    def __init__(self, store: Store, batch_rows: int = 100, interval_s: float = 0.2, max_pending: int = 20_000):
        self.store = store
        self.batch_rows, self.interval_s = batch_rows, interval_s
        self._queue: queue.Queue[_Row | threading.Event | None] = queue.Queue(max_pending)
        self._thread = threading.Thread(target=self._run, name="llmbus-call-writer", daemon=True)
        self._closed = False
        self._thread.start()

    def write(self, record: CallRecord, spend_key: str | None = None) -> None:
        """Queue one row (with `spend_key`, its cost is added to that key's spend in the same transaction)."""
        if self._closed:  # after close (a request finishing during shutdown): written at once
            self.store.append_calls([record], [spend_key])
            return
        self._queue.put(_Row(record, spend_key))

    def flush(self, timeout_s: float | None = 60) -> bool:
        """Wait until every row queued before this call is written; False if that took over `timeout_s`."""
        if self._closed:
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout_s)

    def close(self) -> None:
        """Write every queued row, then stop the thread."""
        if self._closed:
            return
        self._queue.put(None)
        self._thread.join()
        self._closed = True

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            batch, markers = self._collect(first)
            stopping = None in markers
            self._write(batch, final=stopping)
            for marker in markers:
                if isinstance(marker, threading.Event):
                    marker.set()

    def _collect(self, first: _Row | threading.Event | None) -> tuple[list[_Row], list[threading.Event | None]]:
        """The rows that arrive within `interval_s` of `first` (at most `batch_rows`); a flush or stop marker
        ends the batch at once."""
        batch: list[_Row] = []
        markers: list[threading.Event | None] = []
        item, deadline = first, time.monotonic() + self.interval_s
        while True:
            if isinstance(item, _Row):
                batch.append(item)
            else:
                markers.append(item)
                return batch, markers
            if len(batch) >= self.batch_rows:
                return batch, markers
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return batch, markers

    def _write(self, batch: list[_Row], final: bool) -> None:
        """One transaction for the batch, tried again while the database refuses it (3 tries at shutdown)."""
        pause = 0.2
        for attempt in itertools.count(1):
            try:
                self.store.append_calls([row.record for row in batch], [row.spend_key for row in batch])
                return
            except Exception as exc:  # the database went away: keep the rows, try again
                if final and attempt >= 3:
                    log.error("llmbus gateway: %d call-log rows could not be written: %s", len(batch), exc)
                    return
                log.warning("llmbus gateway: writing %d call-log rows failed (%s); trying again in %.1fs",
                            len(batch), str(exc).splitlines()[0], pause)
                time.sleep(pause)
                pause = min(5.0, pause * 2)
