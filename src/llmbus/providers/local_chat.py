"""A local model whose GGUF carries a chat template: called on llama-server's OpenAI-compatible endpoints,
which apply the model's own template (and parse its tool calls), through the same wire functions as `openai:`
endpoints (openai_wire.py). Label scoring stays llmbus's own: the conversation is templated by the server
(`/apply-template`) and the labels are scored as the text that follows it.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from llmbus.errors import ProviderError
from llmbus.providers.base import Completion, Request, sse_data
from llmbus.providers.llamacpp import LlamaServer
from llmbus.providers.openai_wire import StreamedAnswer, from_response, to_payload, wire_api
from llmbus.task.chat import Message

PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


def endpoint(request: Request) -> tuple[str, dict[str, Any]]:
    """The API, and the body llama-server gets: a pass-through body as it came, else the request's turns."""
    api = wire_api(request.wire) if request.wire is not None else "chat"
    body = to_payload("local", api, request)
    if request.wire is None and request.temperature == 0:
        body.update(top_k=1)  # greedy without the default sampler chain's cost (see LocalProvider._body)
    return api, body


def chat_complete(server: LlamaServer, request: Request) -> Completion:
    """One answer from llama-server's chat (or completions) endpoint."""
    api, body = endpoint(request)
    data = server.post(PATHS[api], body)
    completion = from_response(api, data, request)
    completion.extra["prompt_evaluated"] = int((data.get("timings") or {}).get("prompt_n", completion.tokens_in))
    return completion


def chat_events(server: LlamaServer, request: Request) -> Generator[dict[str, Any], None, Completion]:
    """llama-server's stream chunks as they come; returns the Completion they add up to."""
    api, body = endpoint(request)
    body.update(stream=True, stream_options={**(body.get("stream_options") or {}), "include_usage": True})
    streamed = StreamedAnswer(api)
    for event in sse_data(server.stream_lines(PATHS[api], body)):
        streamed.add(event)
        yield event
    if not streamed.finished:
        raise ProviderError("bad_response", "llama-server's stream ended before the answer was finished")
    return streamed.completion()


def templated(server: LlamaServer, messages: tuple[Message, ...]) -> str:
    """The conversation as the model's chat template writes it, ready for the assistant's answer."""
    data = server.post("/apply-template", {"messages": list(messages)})
    if not isinstance(data.get("prompt"), str):
        raise ProviderError("bad_response", "llama-server's /apply-template returned no prompt")
    return str(data["prompt"])
