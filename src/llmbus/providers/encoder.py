"""Encoder students (`encoder:PATH`): a fine-tuned MiniLM, or a logistic head on MiniLM embeddings, answering
from the item's raw input in milliseconds (student.json in the folder says which).

Label requests get calibrated label probabilities; JSON-Schema (extraction) requests get an entity list.
Cost is the measured CPU time of the process during the call at the model's $/hour.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from llmbus.embed import EmbeddingCache
from llmbus.providers.base import Completion, Request, label_completion
from llmbus.providers.config import ModelConfig
from llmbus.providers.prices import Usage, price_of
from llmbus.train.student import HeadStudent, Student, load_student


class EncoderProvider:
    """A student folder written by `llmbus distill`, served in-process."""

    reads_prompt = False  # the item's raw input only: runs skip rendering prompts and selecting shots for it

    def __init__(self, config: ModelConfig):
        self.name = config.name
        self.config = config
        self.path = Path(config.path or config.name.partition(":")[2]).expanduser()
        self._student: Student | None = None
        self._lock = threading.Lock()  # one forward pass at a time: torch already uses every thread
        self._embeddings: EmbeddingCache | None = None

    def check(self) -> None:
        """Load the student now (a bad folder fails before a run starts)."""
        if self._student is None:
            self._student = load_student(self.path, threads=self.config.threads)
            if isinstance(self._student, HeadStudent):
                self._student.embeddings = self._embeddings

    def use_embeddings(self, cache: EmbeddingCache) -> None:
        """Read the input's MiniLM vector from `cache` when something else already embedded it (a cascade's
        nearest-shot selection): a `head` student then never embeds a text twice."""
        self._embeddings = cache
        if isinstance(self._student, HeadStudent):
            self._student.embeddings = cache

    batch_size = 256  # a run hands this many items to one pass (sorted by length inside it: little padding)

    def complete(self, request: Request) -> Completion:
        """Classify or extract from `request.input` (falls back to the prompt)."""
        return self.complete_batch([request])[0]

    def complete_batch(self, requests: list[Request]) -> list[Completion]:
        """`complete` for many requests in one forward pass; each is charged its share of the CPU time."""
        self.check()
        assert self._student is not None
        texts = [request.input if request.input is not None else request.prompt for request in requests]
        with self._lock:
            tick = time.process_time()
            if self._student.meta.kind == "extract":
                completions = [Completion(text=json.dumps({"entities": entities}))
                               for entities in self._student.extract([text.split() for text in texts])]
            else:
                completions = [label_completion(probs, request.labels)
                               for probs, request in zip(self._student.predict_proba(texts), requests, strict=True)]
            cpu = (time.process_time() - tick) / len(requests)
        for completion, text in zip(completions, texts, strict=True):
            completion.tokens_in = len(text.split())
            completion.cpu_seconds = cpu
            completion.cost_usd = price_of(self.config).cost(Usage(cpu_seconds=cpu)) or 0.0
        return completions

    def close(self) -> None:
        """Drop the model."""
        self._student = None

