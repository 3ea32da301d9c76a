"""OpenAI's wire format as pure functions: a `Request` → a /chat/completions or /completions body, a response
body (or a stream's chunks) → a `Completion`. Used by every backend that speaks it: `openai:` endpoints, and
`local:` models whose GGUF carries a chat template (llama-server's /v1/chat/completions).

A request that came through the gateway's pass-through carries the client's body (`Request.wire`): it is sent
as it came, `model` rewritten, and the backend's response body rides back on `Completion.response`.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from llmbus.errors import ProviderError
from llmbus.providers.base import Completion, Request, normalize_probs
from llmbus.task.chat import content_text
from llmbus.task.output import match_label

CHARS_PER_TOKEN = 4  # prompt tokens of a stream that reported no usage: OpenAI's rule of thumb for English


def wire_api(wire: dict[str, Any]) -> str:
    """Which endpoint a client body was written for: `chat` (it has messages) or `completions`."""
    return "chat" if "messages" in wire else "completions"


def relays(request: Request, api: str) -> bool:
    """Whether an endpoint of this API answers the request's client body as it came (a pass-through request
    written for the same endpoint), so its response and stream chunks go back to the client unchanged."""
    return request.wire is not None and wire_api(request.wire) == api


def to_payload(model: str, api: str, request: Request) -> dict[str, Any]:
    """The JSON body for /chat/completions (`api` chat) or /completions."""
    if request.wire is not None and relays(request, api):
        return {**request.wire, "model": model}  # pass-through: the client's body, only the model rewritten
    body: dict[str, Any] = {"model": model}
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.stop:
        body["stop"] = list(request.stop)
    body.update(request.options())
    if api == "chat":
        body["messages"] = [dict(turn) for turn in request.messages]
        if request.labels or request.want_confidence:
            body["logprobs"] = True
        if request.labels:
            body["top_logprobs"] = max(20, int(body.get("top_logprobs") or 0))
    else:
        body["prompt"] = request.prompt
        if request.labels or request.want_confidence:
            body["logprobs"] = 20 if request.labels else max(1, int(body.get("logprobs") or 0))
    if request.json_schema is not None and request.response_format is None:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "answer", "schema": request.json_schema}}
    return body


def from_response(api: str, data: dict[str, Any], request: Request) -> Completion:
    """Text, tool calls, usage and (for label sets) label probabilities from a response body (its first
    choice; the whole body rides along for a pass-through request)."""
    try:
        choice = data["choices"][0]
        message = choice["message"] if api == "chat" else {"content": choice["text"]}
    except (KeyError, IndexError, TypeError):
        raise ProviderError("bad_response", f"response has no choices[0] text: {str(data)[:200]}") from None
    if not isinstance(message, dict):
        raise ProviderError("bad_response", f"response's choices[0] is not a message: {str(data)[:200]}")
    text = content_text(message.get("content"))
    completion = usage_completion(text, data.get("usage") or {})
    completion.tool_calls = message.get("tool_calls") or None
    completion.reasoning = message.get("reasoning_content") or None
    completion.finish_reason, completion.response_model = choice.get("finish_reason"), data.get("model")
    completion.response = data if relays(request, api) else None
    if request.labels:
        label = match_label(text, request.labels)
        completion.text = label if label is not None else text
        completion.label_probs = label_probs_from_logprobs(api, choice, request.labels, label)
    elif request.want_confidence:
        completion.answer_prob = answer_prob_from_logprobs(api, choice)
    return completion


def usage_completion(text: str, usage: dict[str, Any]) -> Completion:
    """A Completion with an OpenAI usage object's token counts: prompt and completion tokens, and of them the
    prompt tokens read from the provider's cache and the hidden reasoning tokens (0 where not reported)."""
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    return Completion(text=text, tokens_in=int(usage.get("prompt_tokens") or 0),
                      tokens_out=int(usage.get("completion_tokens") or 0), tokens_cached=int(cached or 0),
                      tokens_reasoning=int(reasoning or 0))


def counted_usage(completion: Completion, prompt: str, pieces: int, finished: str | None) -> Completion:
    """Token counts for a stream that reported no usage (or ended without a finish reason): each streamed piece
    is one token (servers send a token a chunk), the prompt CHARS_PER_TOKEN characters a token. `extra` says
    the usage was counted, and that the answer never finished when so."""
    if not completion.tokens_out:
        completion.tokens_out = pieces
    if not completion.tokens_in:
        completion.tokens_in = max(1, math.ceil(len(prompt) / CHARS_PER_TOKEN))
    completion.extra["usage"] = "counted"
    if finished is None:
        completion.extra["finish_reason"] = None  # the body ended cleanly, but the answer may be cut short
    return completion


def answer_prob_from_logprobs(api: str, choice: dict[str, Any]) -> float | None:
    """Geometric mean probability of the generated tokens, from either API's logprobs shape."""
    logprobs = choice.get("logprobs") or {}
    values = [e.get("logprob") for e in logprobs.get("content") or []] if api == "chat" \
        else logprobs.get("token_logprobs") or []
    finite = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return math.exp(sum(finite) / len(finite)) if finite else None


def stream_piece(api: str, event: dict[str, Any]) -> tuple[str, str | None]:
    """The text one streamed chunk adds (empty for role-only and usage-only chunks) and its finish reason."""
    if isinstance(event.get("error"), dict | str):
        error = event["error"]
        raise ProviderError("stream_error", str(error.get("message", error) if isinstance(error, dict) else error))
    choices = event.get("choices") or []
    if not choices:
        return "", None
    choice = choices[0]
    text = (choice.get("delta") or {}).get("content") if api == "chat" else choice.get("text")
    return str(text or ""), choice.get("finish_reason")


def text_of(api: str, events: Generator[dict[str, Any], None, Completion]) -> Generator[str, None, Completion]:
    """The text pieces of a stream of chunks; returns the stream's Completion."""
    try:
        while True:
            try:
                event = next(events)
            except StopIteration as end:
                return end.value
            piece, _ = stream_piece(api, event)
            if piece:
                yield piece
    finally:
        events.close()


@dataclass
class StreamedAnswer:
    """A streamed answer put together chunk by chunk: the first choice's text, tool calls (their argument
    pieces joined by index), reasoning text, finish reason and the usage chunk."""

    api: str
    pieces: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    model: str | None = None  # the model the chunks name

    def add(self, event: dict[str, Any]) -> str:
        """Take one chunk; returns the text it adds."""
        piece, finish = stream_piece(self.api, event)
        self.usage = event.get("usage") or self.usage
        self.model = self.model or event.get("model")
        self.finish_reason = self.finish_reason or finish
        choices = event.get("choices") or []
        delta = (choices[0].get("delta") or {}) if choices and self.api == "chat" else {}
        if delta.get("reasoning_content"):
            self.reasoning.append(str(delta["reasoning_content"]))
        for call in delta.get("tool_calls") or []:
            self._add_call(call)
        if piece:
            self.pieces.append(piece)
        return piece

    def _add_call(self, call: dict[str, Any]) -> None:
        slot = self.tool_calls.setdefault(int(call.get("index", len(self.tool_calls))),
                                          {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        slot["id"] = call.get("id") or slot["id"]
        slot["type"] = call.get("type") or slot["type"]
        function = call.get("function") or {}
        slot["function"]["name"] += function.get("name") or ""
        slot["function"]["arguments"] += function.get("arguments") or ""

    @property
    def finished(self) -> bool:
        """Whether the backend said the answer was complete."""
        return self.finish_reason is not None

    def completion(self) -> Completion:
        """What the stream amounted to."""
        completion = usage_completion("".join(self.pieces), self.usage)
        completion.tool_calls = [self.tool_calls[i] for i in sorted(self.tool_calls)] or None
        completion.reasoning = "".join(self.reasoning) or None
        completion.finish_reason, completion.response_model = self.finish_reason, self.model
        return completion


def label_probs_from_logprobs(api: str, choice: dict[str, Any], labels: tuple[str, ...],
                              chosen: str | None) -> dict[str, float] | None:
    """Label distribution from the first answer token's top logprobs; None when none were returned."""
    alternatives = first_token_alternatives(api, choice)
    if not alternatives:
        return None
    scores = dict.fromkeys(labels, 0.0)
    for token, logprob in alternatives.items():
        piece = token.strip().lower()
        if not piece:
            continue
        matches = [label for label in labels if label.lower().startswith(piece)]
        if len(matches) == 1:
            scores[matches[0]] += math.exp(logprob)
    if chosen is not None and scores[chosen] == 0:
        return None  # the answer's first token did not name a single label: probabilities would lie
    return normalize_probs(scores)


def first_token_alternatives(api: str, choice: dict[str, Any]) -> dict[str, float]:
    """{token: logprob} for the first non-blank generated token, from either API's logprobs shape."""
    logprobs = choice.get("logprobs") or {}
    if api == "chat":
        for entry in logprobs.get("content") or []:
            if entry.get("token", "").strip():
                return {alt["token"]: alt["logprob"] for alt in entry.get("top_logprobs") or []}
        return {}
    tokens = logprobs.get("tokens") or []
    for token, top in zip(tokens, logprobs.get("top_logprobs") or [], strict=False):
        if token.strip():
            return dict(top or {})
    return {}
