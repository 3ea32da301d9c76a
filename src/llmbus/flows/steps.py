"""What a flow's steps share, below the engine: a step body's result, the pause signal, an LLM step's answer,
and `Steps`, the part of the flow context that step helpers (the agent loop) call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmbus.flows.log import FlowLog


@dataclass
class LlmAnswer:
    """An LLM step's answer: the text, label probabilities when labels were scored, and the tool calls a chat
    model made."""

    text: str
    label_probs: dict[str, float] | None = None
    tool_calls: list[dict[str, Any]] | None = None


class FlowPaused(Exception):
    """Raised inside a flow by a review step that waits for a human; the run pauses."""


@dataclass
class StepResult:
    """What a step body returns: its output plus what the step row should record."""

    output: Any
    detail: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0


class Steps(Protocol):
    """The durable-step surface of `flows.engine.FlowContext` that helpers running inside a flow use."""

    run_id: str
    log: FlowLog

    def step(self, key: str, kind: str, body: Callable[[], StepResult], step_input: Any = None) -> Any:
        """Run `body` once per run; a recorded done step returns its stored output."""
        ...

    def llm(self, key: str, prompt: str | None = None, *, messages: list[dict[str, Any]] | None = None,
            model: str | None = None, max_tokens: int = 64, stop: tuple[str, ...] = (),
            labels: tuple[str, ...] | None = None, temperature: float = 0.0,
            json_schema: dict[str, Any] | None = None, tools: list[dict[str, Any]] | None = None) -> LlmAnswer:
        """One logged model call."""
        ...
