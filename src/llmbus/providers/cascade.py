"""A cascade (`cascade:NAME`): the student answers first; the teacher only when the student is unsure.

Escalation signals: the student's confidence below the threshold (picked on validation data by
`llmbus.distill.cascade.pick_threshold`; a label's probability, or a generated answer's geometric mean token
probability), or a student answer that breaks the JSON Schema (a cheap guardrail).
Both decisions land in the call's meta: route, student answer and confidence, reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import ClassVar, Literal

from pydantic import Field

from llmbus.embed import EmbeddingCache
from llmbus.errors import ModelError
from llmbus.providers.base import Completion, Provider, Request
from llmbus.providers.config import ModelConfig
from llmbus.providers.model import open_provider as open_registered
from llmbus.task.output import parse_json


class CascadeConfig(ModelConfig):
    """A cascade's entry in llmbus.yaml (written by `llmbus distill`): two model references and a threshold."""

    provider: Literal["cascade"] = "cascade"
    student: str | None = None
    teacher: str | None = None
    threshold: float = Field(default=0.9, ge=0, le=1)

    hint: ClassVar[str] = "define it in llmbus.yaml with student, teacher and threshold"

    def parts(self) -> tuple[str, ...]:
        """The student and the teacher: their prices make the cascade's."""
        return tuple(ref for ref in (self.student, self.teacher) if ref)


class CascadeProvider:
    """Student first, teacher on low confidence or a schema violation."""

    Config = CascadeConfig

    def __init__(self, config: CascadeConfig, open_provider: Callable[[str], Provider] | None = None):
        """`open_provider` opens the student and the teacher (default: llmbus's, through the registry)."""
        if not config.student or not config.teacher:
            raise ModelError(f"{config.name}: a cascade needs `student` and `teacher` in llmbus.yaml")
        open_provider = open_provider or open_registered
        self.name = config.name
        self.threshold = config.threshold
        self.student: Provider = open_provider(config.student)
        self.teacher: Provider = open_provider(config.teacher)

    def use_embeddings(self, cache: EmbeddingCache) -> None:
        """Share the run's MiniLM vectors with a student that embeds its input (the selection embedded it)."""
        for provider in (self.student, self.teacher):
            share = getattr(provider, "use_embeddings", None)
            if share is not None:
                share(cache)

    def check(self) -> None:
        """Both models must be usable before a run starts."""
        self.student.check()
        self.teacher.check()

    def complete(self, request: Request) -> Completion:
        """The student's answer, or the teacher's with the student's cost added."""
        if request.labels is None and request.json_schema is None:
            request = replace(request, want_confidence=True)  # free text: the answer's probability decides
        first = self.student.complete(request)
        reason = escalation_reason(first, request, self.threshold)
        decision = {"student_answer": first.text, "student_confidence": first.confidence,
                    "threshold": self.threshold}
        if reason is None:
            first.extra.update(route="student", **decision)
            return first
        second = self.teacher.complete(request)
        second.extra.update(route="teacher", reason=reason, **decision)
        second.cost_usd += first.cost_usd
        second.tokens_in += first.tokens_in
        second.tokens_out += first.tokens_out
        return second

    def close(self) -> None:
        """Close both providers."""
        self.student.close()
        self.teacher.close()


def escalation_reason(completion: Completion, request: Request, threshold: float) -> str | None:
    """Why the student's answer should go to the teacher, or None to keep it."""
    if request.json_schema is not None and parse_json(completion.text, request.json_schema).error_kind:
        return "schema"
    confidence = completion.confidence
    if (request.labels or request.want_confidence) and (confidence is None or confidence < threshold):
        return "low_confidence"
    return None
