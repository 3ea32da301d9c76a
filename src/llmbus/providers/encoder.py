"""Encoder students (`encoder:PATH`): a fine-tuned MiniLM, or a logistic head on MiniLM embeddings, answering
from the item's raw input in milliseconds (student.json in the folder says which).

Label requests get calibrated label probabilities; JSON-Schema (extraction) requests get an entity list.
Cost is the measured CPU time of the process during the call at the model's $/hour.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from llmbus.embed import EmbeddingCache
from llmbus.providers.base import Completion, Request, label_completion
from llmbus.providers.config import ModelConfig, default_threads
from llmbus.providers.inprocess import InProcessProvider
from llmbus.task.kinds import kind_of
from llmbus.train.student import HeadStudent, Student, load_student


class EncoderConfig(ModelConfig):
    """A student folder written by `llmbus distill` (`llmbus.yaml` gets its entry then)."""

    provider: Literal["encoder"] = "encoder"
    path: str | None = None  # the student folder (default: the reference's name)
    threads: int = Field(default_factory=default_threads, ge=1)  # torch threads

    hint: ClassVar[str] = "give a student folder as encoder:/path/to/student"
    cpu_priced: ClassVar[bool] = True

    @classmethod
    def reference(cls, name: str) -> dict[str, Any] | None:
        """`encoder:/path/to/student` names its folder."""
        return {"path": name, "threads": 1} if name else None

    @property
    def cpu_threads(self) -> int:
        """The torch threads."""
        return self.threads


class EncoderProvider(InProcessProvider[Student]):
    """A student folder written by `llmbus distill`, served in-process."""

    Config = EncoderConfig
    batch_size = 256  # a run hands this many items to one pass (sorted by length inside it: little padding)

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.threads = config.threads
        self.path = Path(config.path or config.name.partition(":")[2]).expanduser()
        self._embeddings: EmbeddingCache | None = None

    def load(self) -> Student:
        """The student in the folder (a `head` student reads vectors from the embedding cache it was given)."""
        student = load_student(self.path, threads=self.threads)
        if isinstance(student, HeadStudent):
            student.embeddings = self._embeddings
        return student

    def use_embeddings(self, cache: EmbeddingCache) -> None:
        """Read the input's MiniLM vector from `cache` when something else already embedded it (a cascade's
        nearest-shot selection): a `head` student then never embeds a text twice."""
        self._embeddings = cache
        if isinstance(self.loaded, HeadStudent):
            self.loaded.embeddings = cache

    def answer(self, model: Student, texts: list[str], requests: list[Request]) -> list[Completion]:
        """Label distributions, or for an extraction student the entities as JSON."""
        if kind_of(model.meta).tags_tokens():
            return [Completion(text=json.dumps({"entities": entities}))
                    for entities in model.extract([text.split() for text in texts])]
        return [label_completion(probs, request.labels)
                for probs, request in zip(model.predict_proba(texts), requests, strict=True)]
