"""The base of providers that answer in this process (`encoder:` students, `head:` judges): the model loads on
first use, one forward pass answers a whole batch under a lock, and each request is charged its share of the
pass's CPU time at the model's $/hour.

A subclass says how to load its model (`load`) and how a batch of input texts becomes completions (`answer`).
"""

from __future__ import annotations

import threading
import time
from typing import Generic, TypeVar

from llmbus.providers.base import Completion, Request
from llmbus.providers.config import ModelConfig
from llmbus.providers.prices import Usage, price_of

Loaded = TypeVar("Loaded")


class InProcessProvider(Generic[Loaded]):
    """A model held in this process, answering batches of requests from their raw input."""

    batch_size = 64  # a run (or a judge run) hands this many requests to one forward pass
    reads_prompt = False  # the item's raw input only: runs skip rendering prompts and selecting shots for it

    def __init__(self, config: ModelConfig):
        self.name = config.name
        self.config = config
        self.price = price_of(config)
        self._model: Loaded | None = None
        self._lock = threading.Lock()  # one forward pass at a time: torch already uses every thread

    def load(self) -> Loaded:
        """Read the model (a bad folder is a ModelError here, before a run starts)."""
        raise NotImplementedError

    def answer(self, model: Loaded, texts: list[str], requests: list[Request]) -> list[Completion]:
        """One completion per input text (the text of each request, in order), from one pass."""
        raise NotImplementedError

    @property
    def loaded(self) -> Loaded | None:
        """The model, once `check` (or a first call) has loaded it."""
        return self._model

    def check(self) -> None:
        """Load the model now (a bad folder fails before a run starts)."""
        if self._model is None:
            self._model = self.load()

    def complete(self, request: Request) -> Completion:
        """The answer to one request: its raw input (or its prompt) through the model."""
        return self.complete_batch([request])[0]

    def complete_batch(self, requests: list[Request]) -> list[Completion]:
        """`complete` for many requests in one pass; each is charged its share of the CPU time."""
        self.check()
        assert self._model is not None
        texts = [request.input if request.input is not None else request.prompt for request in requests]
        with self._lock:
            tick = time.process_time()
            completions = self.answer(self._model, texts, requests)
            cpu = (time.process_time() - tick) / len(requests)
        for completion, text in zip(completions, texts, strict=True):
            completion.tokens_in = len(text.split())
            completion.cpu_seconds = cpu
            completion.cost_usd = self.price.cost(Usage(cpu_seconds=cpu)) or 0.0
        return completions

    def close(self) -> None:
        """Drop the model."""
        self._model = None
