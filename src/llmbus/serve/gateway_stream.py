"""Streaming through the gateway: a provider's stream pumped from a worker thread, with a deadline.

The worker runs the provider's stream and hands each piece over a queue, so the request thread can stop
waiting when the route's timeout is spent, and a cancelled stream closes the backend's connection
(llama-server then stops decoding it). A piece is a text (`providers.base.stream_pieces`: real token streaming
for `local:` and `openai:`, the whole answer as one piece for the others) or, for a pass-through request to a
backend that speaks OpenAI, the backend's own chunk (`stream_events`), relayed as it came.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Literal

from llmbus.errors import ProviderError
from llmbus.providers import Provider, Request
from llmbus.providers.base import Completion, stream_pieces


@dataclass
class Answer:
    """What the gateway returns for one request."""

    completion: Completion
    route: str
    model: str
    latency_s: float
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    arm: str | None = None  # canary | incumbent, for a served model with a canary


@dataclass
class Event:
    """One thing a pump reports: a text piece, the final Completion, an error, or a timeout."""

    kind: Literal["piece", "done", "error", "timeout"]
    value: Any = None

    def failure(self, timeout_s: float) -> ProviderError:
        """The error an `error` or `timeout` event stands for."""
        if self.kind == "timeout":
            return ProviderError("timeout", f"no answer within {timeout_s:g}s")
        assert isinstance(self.value, ProviderError)
        return self.value


Piece = str | dict[str, Any]  # a text piece, or a backend's own stream chunk


def provider_stream(provider: Provider, request: Request) -> Generator[Piece, None, Completion]:
    """What a streamed request relays: the backend's own chunks for a pass-through request to a backend that
    speaks the client's API (`relays`, `stream_events`), else text pieces."""
    relays = getattr(provider, "relays", None)
    if relays is not None and relays(request):
        return (yield from provider.stream_events(request))  # type: ignore[attr-defined]
    return (yield from stream_pieces(provider, request))


class Pump:
    """Runs one provider stream in a worker thread; the caller takes its events with a deadline."""

    def __init__(self, pool: Executor, provider: Provider, request: Request, timeout_s: float):
        self.deadline = time.monotonic() + timeout_s
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._stop = threading.Event()
        pool.submit(self._run, provider, request)

    def _run(self, provider: Provider, request: Request) -> None:
        pieces = provider_stream(provider, request)
        try:
            while not self._stop.is_set():
                try:
                    piece = next(pieces)
                except StopIteration as end:
                    self._events.put(Event("done", end.value))
                    return
                self._events.put(Event("piece", piece))
        except ProviderError as exc:
            self._events.put(Event("error", exc))
        except Exception as exc:  # a provider bug must end the client's stream, not leave it waiting
            self._events.put(Event("error", ProviderError("internal", f"{exc.__class__.__name__}: {exc}")))
        finally:
            pieces.close()  # a cancelled stream: closes the backend connection

    def next(self) -> Event:
        """The next event, or a timeout event once the deadline has passed."""
        try:
            return self._events.get(timeout=max(0.0, self.deadline - time.monotonic()))
        except queue.Empty:
            return Event("timeout")

    def cancel(self) -> None:
        """Ask the worker to stop after its current piece."""
        self._stop.set()


@dataclass
class AnswerStream:
    """An answer being streamed: iterate for its pieces; `answer` is set once they are all out."""

    pieces: Generator[Piece, None, Answer]
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    answer: Answer | None = None
    stop_backend: Callable[[], None] = lambda: None  # thread-safe: stops the backend after its current piece

    def __iter__(self) -> Iterator[Piece]:
        self.answer = yield from self.pieces

    def close(self) -> None:
        """Stop early (the client went away): the backend is cancelled and the call logged as failed."""
        self.pieces.close()


def word_pieces(text: str) -> list[str]:
    """Split text into word-sized pieces that concatenate back to it exactly (for cached answers)."""
    pieces, current = [], ""
    for char in text:
        current += char
        if char == " ":
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces
