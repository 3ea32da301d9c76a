"""What every provider takes and returns. A provider is a small class with one `complete` method.

A provider that can hand out text while it is generated also has `stream(request)`: a generator of text pieces
whose return value is the final Completion. `stream_pieces` gives every provider that shape.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Generator, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from llmbus.errors import ProviderError
from llmbus.task.chat import Message, transcript, user_turn

# Fields added to Request after cache keys were first stored: they join a key only when set, so a request
# that does not use them keeps the key (and the cached answer) it always had.
_LATER_FIELDS = ("messages", "top_p", "seed", "n", "tools", "tool_choice", "response_format", "logprobs",
                 "top_logprobs", "user", "metadata", "wire")
# OpenAI fields a Request carries and sends to chat/completion endpoints when they are set.
OPENAI_OPTIONS = ("top_p", "seed", "n", "tools", "tool_choice", "response_format", "logprobs", "top_logprobs",
                  "user", "metadata")


@dataclass(frozen=True)
class Request:
    """One call: a chat request (turns + the OpenAI fields that shape the answer) plus llmbus's output contract.

    `messages` are the turns chat endpoints get; `prompt` is the same conversation as one text, what completion
    endpoints and models without a chat template read. Give either: a lone `prompt` is one user turn, lone
    `messages` get their transcript (task.chat). Optional OpenAI fields are None when not given, and then not
    sent. `wire` is set by the gateway on routes without a task: the client's body, which an OpenAI-compatible
    backend gets as it came, with only `model` rewritten (the typed fields are read from it, for llmbus's own
    decisions: cache, budget, local models)."""

    prompt: str = ""
    max_tokens: int | None = 64  # None: not given (the backend's default)
    temperature: float | None = 0.0  # None: not given (the backend's default, usually sampling)
    stop: tuple[str, ...] = ()
    labels: tuple[str, ...] | None = None  # classify: answer with one of these, with its probability
    json_schema: dict[str, Any] | None = None  # extract: answer is JSON valid under this schema
    input: str | None = None  # the item's raw input: what small students read instead of the prompt
    # generate: also report how sure the model was of its answer (a cascade's escalation signal); costs a
    # softmax over the vocabulary per generated token, so only asked for when needed
    want_confidence: bool = False
    messages: tuple[Message, ...] = ()
    top_p: float | None = None
    seed: int | None = None
    n: int | None = None
    tools: tuple[dict[str, Any], ...] | None = None  # OpenAI function schemas
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None  # as given; else a json_schema contract sends its own
    logprobs: bool | int | None = None  # chat: a boolean; completions: how many alternatives
    top_logprobs: int | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None
    wire: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.messages:
            object.__setattr__(self, "messages", (user_turn(self.prompt),))
        elif not self.prompt:
            object.__setattr__(self, "prompt", transcript(self.messages))

    @property
    def greedy(self) -> bool:
        """Whether the same request always gets the same answer (what the caches may keep): temperature 0, or
        not given on a request that names no sampling of its own (a cache hit then stands for the answer)."""
        return not self.temperature and (self.n or 1) == 1

    def cache_key(self, model: str) -> str:
        """Response-cache key: model + the whole request (a gateway request: its whole body)."""
        if self.wire is not None:
            payload: dict[str, Any] = {"model": model, "wire": self.wire, "labels": self.labels,
                                       "json_schema": self.json_schema}
        else:
            payload = {"model": model, **{name: value for name, value in asdict(self).items()
                                          if name not in _LATER_FIELDS or value not in (None, ())}}
            if list(payload.get("messages", ())) == [user_turn(self.prompt)]:
                del payload["messages"]  # a plain prompt: the key it had before requests held turns
        text = json.dumps(payload, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()

    def options(self) -> dict[str, Any]:
        """The optional OpenAI fields that are set, as a body's fields (tools as a list)."""
        found = {name: getattr(self, name) for name in OPENAI_OPTIONS if getattr(self, name) is not None}
        if "tools" in found:
            found["tools"] = list(found["tools"])
        return found


@dataclass
class Completion:
    """What came back: the text, token counts, and for label sets the probability of each label.

    For chat answers also the tool calls, the reasoning text of reasoning models and the finish reason; an
    OpenAI-compatible backend's whole response body rides in `response` when the request came through the
    gateway's pass-through (`Request.wire`), so the client gets it unchanged."""

    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    label_probs: dict[str, float] | None = None
    answer_prob: float | None = None  # generate: geometric mean probability of the generated tokens
    cost_usd: float = 0.0
    cpu_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    tool_calls: list[dict[str, Any]] | None = None
    reasoning: str | None = None  # reasoning_content of reasoning models (not part of the answer)
    finish_reason: str | None = None
    response: dict[str, Any] | None = None
    response_model: str | None = None  # the model the backend says answered, when it says
    tokens_cached: int = 0  # of tokens_in, those read from the backend's prompt cache
    tokens_reasoning: int = 0  # of tokens_out, hidden reasoning tokens

    def cache_dict(self) -> dict[str, Any]:
        """The fields a response cache keeps (cost and timing belong to the original call only)."""
        kept = {"text": self.text, "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "label_probs": self.label_probs, "answer_prob": self.answer_prob,
                "tokens_cached": self.tokens_cached, "tokens_reasoning": self.tokens_reasoning}
        chat = {"tool_calls": self.tool_calls, "reasoning": self.reasoning, "finish_reason": self.finish_reason,
                "response": self.response}
        return {**kept, **{name: value for name, value in chat.items() if value is not None}}

    @property
    def confidence(self) -> float | None:
        """Probability of the chosen label, or of a generated answer (None when the backend gave none)."""
        if not self.label_probs:
            return self.answer_prob
        return self.label_probs.get(self.text.strip())


class Provider(Protocol):
    """A model backend. `check` fails fast with Unreachable; `close` releases servers and sockets."""

    name: str

    def complete(self, request: Request) -> Completion: ...

    def check(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class BatchProvider(Protocol):
    """A provider that answers many requests in one pass (in-process students and heads: one forward pass
    over a batch costs little more than over one item)."""

    batch_size: int

    def complete_batch(self, requests: list[Request]) -> list[Completion]: ...


def reads_prompt(provider: Provider) -> bool:
    """Whether the provider reads the rendered prompt. In-process students and heads set `reads_prompt = False`:
    they read `request.input` only, so a run neither renders their prompts nor selects few-shot examples."""
    return bool(getattr(provider, "reads_prompt", True))


def batch_size(provider: Provider) -> int:
    """How many requests the provider wants at once (1 for everything answering over HTTP)."""
    return provider.batch_size if isinstance(provider, BatchProvider) else 1


def complete_many(provider: Provider, requests: list[Request]) -> list[Completion]:
    """Answers to `requests`, in one pass when the provider batches."""
    # The length first: a runtime Protocol check costs more than an HTTP provider's own bookkeeping for a call.
    if len(requests) > 1 and isinstance(provider, BatchProvider):
        return provider.complete_batch(requests)
    return [provider.complete(request) for request in requests]


def stream_pieces(provider: Provider, request: Request) -> Generator[str, None, Completion]:
    """Text pieces as the provider produces them, returning the Completion; providers without `stream`
    (encoders, cascades, label scoring) yield their whole answer once."""
    stream = getattr(provider, "stream", None)
    if stream is not None:
        return (yield from stream(request))
    return (yield from whole(provider.complete(request)))


def whole(completion: Completion) -> Generator[str, None, Completion]:
    """A finished Completion as a stream: its text as one piece."""
    if completion.text:
        yield completion.text
    return completion


def sse_data(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream's `data:` lines, up to `data: [DONE]`."""
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, comments, `event:` lines
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        if payload:
            try:
                yield json.loads(payload)
            except ValueError:
                raise ProviderError("bad_response", f"stream event is not JSON: {payload[:120]!r}") from None


def normalize_probs(scores: dict[str, float]) -> dict[str, float]:
    """Scale non-negative scores to sum to 1 (uniform when all are zero)."""
    total = sum(scores.values())
    if total <= 0 or not math.isfinite(total):
        return {k: 1 / len(scores) for k in scores}
    return {k: v / total for k, v in scores.items()}


def label_completion(probs: dict[str, float], labels: tuple[str, ...] | None) -> Completion:
    """The most likely label with its distribution (over the request's label set when it names one)."""
    if labels:
        probs = {label: probs.get(label, 0.0) for label in labels}
    return Completion(text=max(probs, key=lambda k: probs[k]), label_probs=probs)
