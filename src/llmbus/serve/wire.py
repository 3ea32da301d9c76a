"""The gateway's side of OpenAI's wire format: request bodies checked field by field, a body → the `Request`
llmbus acts on, and response bodies and server-sent events back to the client.

Pass-through: on a route without a task the client's body rides on `Request.wire` and reaches an
OpenAI-compatible backend as it came (only `model` rewritten); the backend's response body comes back as it
was, with `id` and `model` set to the gateway's and llmbus's own `llmbus` object added. The typed fields llmbus
reads from the body (max_tokens, temperature, n, tools…) decide caching, budgets and what backends that do not
speak OpenAI (local base models, students) get. A field the gateway does not know is passed on untouched.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmbus.errors import GatewayError, ProviderError
from llmbus.providers import Request
from llmbus.providers.base import Completion
from llmbus.providers.openai_wire import stream_piece
from llmbus.serve.gateway_stream import Answer, AnswerStream
from llmbus.task.chat import last_user_text, transcript, user_turn


class StreamOptions(BaseModel):
    """`stream_options`."""

    model_config = ConfigDict(extra="allow", strict=True)

    include_usage: bool | None = None


class Message(BaseModel):
    """One chat message: content as text or as content parts (tool calls and ids ride along as given)."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: str = "user"
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class _Body(BaseModel):
    """The fields of a request body the gateway reads or checks, with OpenAI's types (others pass on as given)."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None


class ChatBody(_Body):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class CompletionBody(_Body):
    """POST /v1/completions (token-id prompts are not supported: the gateway works on text)."""

    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=20)


# What each field's value should be, in OpenAI's words (for error messages).
EXPECTED = {"model": "a string", "max_tokens": "an integer", "max_completion_tokens": "an integer",
            "temperature": "a number", "top_p": "a number", "n": "an integer", "seed": "an integer",
            "presence_penalty": "a number", "frequency_penalty": "a number",
            "stop": "a string or an array of strings", "stream": "a boolean", "stream_options": "an object",
            "include_usage": "a boolean", "user": "a string", "metadata": "an object",
            "messages": "an array of message objects", "role": "a string",
            "content": "a string or an array of content parts", "tool_calls": "an array of tool call objects",
            "tool_call_id": "a string", "name": "a string", "tools": "an array of tool objects",
            "tool_choice": "a string or an object", "response_format": "an object", "logprobs": "a boolean",
            "top_logprobs": "an integer", "prompt": "a string or an array of strings"}
ITEM_EXPECTED = {"messages": "a message object", "content": "a content part object", "stop": "a string",
                 "prompt": "a string", "tools": "a tool object", "tool_calls": "a tool call object"}


def check_body(body: dict[str, Any], chat: bool) -> None:
    """Raise a 400 GatewayError naming the first field of the body that is missing or of the wrong type."""
    try:
        (ChatBody if chat else CompletionBody).model_validate(body)
    except ValidationError as exc:
        raise body_error(body, exc, chat) from None


def body_error(body: dict[str, Any], exc: ValidationError, chat: bool = True) -> GatewayError:
    """OpenAI's wording for the first validation error: missing, invalid type, or invalid value."""
    error = exc.errors()[0]
    # the location without pydantic's union-branch tags ("str", "list[str]"): field names and list positions
    path = [part for part in error["loc"] if isinstance(part, int) or part in EXPECTED]
    param = ".".join(str(part) for part in path)
    if error["type"] == "missing":
        return GatewayError(400, f"Missing required parameter: '{param}'.", param=param)
    if not error["type"].endswith("_type"):  # a value out of range, an empty list
        return GatewayError(400, f"Invalid value for '{param}': {error['msg']}.", param=param)
    value: Any = body
    for part in path:
        value = value[part]
    last = path[-1] if path else "model"
    expected = EXPECTED[last] if isinstance(last, str) else ITEM_EXPECTED.get(str(path[-2]), "an object")
    if last == "logprobs" and not chat:
        expected = "an integer"
    return GatewayError(400, f"Invalid type for '{param}': expected {expected}, but got {json_type(value)} instead.",
                        param=param)


def json_type(value: Any) -> str:
    """A JSON value's type in words ("an array of integers")."""
    if isinstance(value, list):
        kinds = {json_type(v) for v in value}
        return f"an array of {kinds.pop().removeprefix('an ').removeprefix('a ')}s" if len(kinds) == 1 else "an array"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "an object",
            type(None): "null"}.get(type(value), "a value")


def body_turns(body: dict[str, Any], chat: bool) -> list[dict[str, Any]]:
    """A checked body's conversation: its messages, or its prompt (an array of strings joined) as one turn."""
    if chat:
        return [dict(turn) for turn in body["messages"]]
    given = body["prompt"]
    return [user_turn("".join(given) if isinstance(given, list) else given)]


def raw_input_of(body: dict[str, Any], chat: bool) -> str:
    """The caller's own text: the last user turn (a served task renders its prompt around it)."""
    return last_user_text(body_turns(body, chat))


def sampling_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The body's sampling fields as `Request` fields (None where not given)."""
    stop = body.get("stop") or ()
    return {"max_tokens": body.get("max_tokens") or body.get("max_completion_tokens"),
            "temperature": body.get("temperature"), "stop": tuple([stop] if isinstance(stop, str) else stop),
            "top_p": body.get("top_p"), "seed": body.get("seed"), "user": body.get("user"),
            "metadata": body.get("metadata")}


def passthrough_request(body: dict[str, Any], chat: bool) -> Request:
    """The request for a route without a task: the client's body (all but `model` and `stream`, which the
    gateway sets) on `wire`, and the fields llmbus acts on read from it. A body without `temperature` is
    answered greedily by backends llmbus drives itself (base models, students) and cached like a greedy one, as
    the gateway always did; an OpenAI-compatible backend gets the body as it came (its own default applies)."""
    turns = body_turns(body, chat)
    tools = body.get("tools")
    fields = sampling_fields(body)
    fields["temperature"] = 0.0 if fields["temperature"] is None else fields["temperature"]
    return Request(prompt=transcript(turns), messages=tuple(turns), input=last_user_text(turns),
                   n=body.get("n"), tools=tuple(tools) if tools else None, tool_choice=body.get("tool_choice"),
                   response_format=body.get("response_format"), logprobs=body.get("logprobs"),
                   top_logprobs=body.get("top_logprobs"),
                   wire={k: v for k, v in body.items() if k not in ("model", "stream")}, **fields)


# OpenAI's error `type` for each refusal status
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
               429: "rate_limit_error"}


def error_body(error: GatewayError) -> dict[str, Any]:
    """An OpenAI-style error: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": str(error), "type": ERROR_TYPES.get(error.status, "api_error"),
                      "param": error.param, "code": error.kind}}


def llmbus_fields(answer: Answer) -> dict[str, Any]:
    """llmbus's own fields on a response: route, backend, confidence, cost, latency."""
    c = answer.completion
    return {"route": answer.route, "backend": answer.model, "confidence": c.confidence,
            "label_probs": c.label_probs, "cost_usd": c.cost_usd, "latency_s": answer.latency_s}


def completion_body(name: str, answer: Answer, chat: bool) -> dict[str, Any]:
    """The response body: the backend's own when it came through the pass-through (id and model set to the
    gateway's), else an OpenAI response object made from the answer; llmbus's fields added under `llmbus`."""
    c = answer.completion
    gateway_id = f"llmbus-{answer.request_id}"
    if c.response is not None and isinstance(c.response.get("choices"), list):
        return {**c.response, "id": gateway_id, "model": name, "llmbus": llmbus_fields(answer)}
    choice: dict[str, Any] = {"index": 0, "finish_reason": c.finish_reason or "stop"}
    if chat:
        choice["message"] = {"role": "assistant", "content": c.text,
                             **({"tool_calls": c.tool_calls} if c.tool_calls else {})}
    else:
        choice["text"] = c.text
    return {"id": gateway_id, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": name, "choices": [choice], "usage": usage_of(c),
            "llmbus": llmbus_fields(answer)}


def usage_of(completion: Completion) -> dict[str, int]:
    """OpenAI's usage object for an answer."""
    return {"prompt_tokens": completion.tokens_in, "completion_tokens": completion.tokens_out,
            "total_tokens": completion.tokens_in + completion.tokens_out}


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event."""
    return "data: " + (payload if isinstance(payload, str) else json.dumps(payload)) + "\n\n"


def sse_events(name: str, stream: AnswerStream, chat: bool, usage: bool,
               done: Callable[[], None]) -> Generator[str, None, None]:
    """Server-sent events in OpenAI's streaming shape. A backend's own chunks (the pass-through) go out as
    they came, `id` and `model` set to the gateway's and its usage chunk left out unless the client asked for
    it; text pieces (other backends, cached answers) become chunks, then a final chunk (with any tool calls) and
    a usage chunk when asked for. A backend failing mid-stream ends it with an error event. `done` runs when
    the stream ends, however it ends."""
    chunk_id = f"llmbus-{stream.request_id}"
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choice: dict[str, Any] | None, **extra: Any) -> str:
        return sse({"id": chunk_id, "object": kind, "created": int(time.time()), "model": name,
                    "choices": [choice] if choice else [], **extra})

    first, relayed, failure = True, False, None
    try:
        for piece in stream:
            if isinstance(piece, dict):  # the backend's own chunk
                relayed = True
                chunk = relayed_chunk(piece, chunk_id, name, usage)
                if chunk is not None:
                    yield sse(chunk)
            elif chat:
                delta: dict[str, Any] = {"content": piece, **({"role": "assistant"} if first else {})}
                yield event({"index": 0, "delta": delta, "finish_reason": None})
            else:
                yield event({"index": 0, "text": piece, "finish_reason": None})
            first = False
    except ProviderError as exc:
        failure = exc
    finally:
        stream.close()
        done()  # before the last events: a client that has seen [DONE] finds the request counted
    if failure is not None:
        yield sse({"error": {"message": str(failure), "type": "llmbus_error", "code": failure.kind}})
        return
    if not relayed:
        yield from _closing_events(event, stream, chat, usage)
    yield sse("[DONE]")


def _closing_events(event: Callable[..., str], stream: AnswerStream, chat: bool,
                    usage: bool) -> Generator[str, None, None]:
    """The final chunk (carrying the answer's tool calls) and the usage chunk of a stream made from text."""
    completion = stream.answer.completion if stream.answer is not None else None
    calls = completion.tool_calls if completion is not None else None
    finish = (completion.finish_reason if completion is not None else None) or ("tool_calls" if calls else "stop")
    if chat:
        delta = {"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]} if calls else {}
        yield event({"index": 0, "finish_reason": finish, "delta": delta})
    else:
        yield event({"index": 0, "finish_reason": finish, "text": ""})
    if usage and completion is not None:
        yield event(None, usage=usage_of(completion))


def relayed_chunk(chunk: dict[str, Any], chunk_id: str, name: str, usage: bool) -> dict[str, Any] | None:
    """A backend's stream chunk as the client gets it: id and model the gateway's; without the usage llmbus
    asked for on its own account (None for the usage-only chunk then)."""
    out = {**chunk, "id": chunk_id, "model": name}
    if not usage:
        if not out.get("choices") and "usage" in out:
            return None
        out.pop("usage", None)
    return out


def piece_text(piece: str | dict[str, Any], chat: bool) -> str:
    """The answer text a stream item adds (a backend chunk's first-choice text)."""
    return piece if isinstance(piece, str) else stream_piece("chat" if chat else "completions", piece)[0]
