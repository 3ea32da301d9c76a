"""The gateway's endpoints as plain methods (serve/routes.py), called without an ASGI app or a server: a
scripted backend answers (no HTTP is under test here; test_serve.py drives the same routes over HTTP)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
import yaml
from starlette.requests import Request
from starlette.responses import Response

from llmbus.errors import GatewayError
from llmbus.serve.access_log import AccessNote
from llmbus.serve.call_writer import Arrival
from llmbus.serve.gateway import Gateway, RouteConfig, ServeConfig
from llmbus.serve.gateway_keys import KeyConfig
from llmbus.serve.routes import GatewayRoutes
from llmbus.store import Store
from llmbus.testing import ScriptedProvider

HELLO = {"model": "chat", "messages": [{"role": "user", "content": "Say hello"}]}


def scope(path: str, note: AccessNote, authorization: str | None = None) -> Request:
    """The Starlette request an endpoint receives, made from its scope alone."""
    headers = [(b"authorization", authorization.encode())] if authorization else []
    return Request({"type": "http", "method": "POST", "path": path, "headers": headers, "query_string": b"",
                    "state": {"access": note}})


def test_every_endpoint_is_a_method_callable_without_an_app(tmp_path: Path):
    Path(os.environ["LLMBUS_CONFIG"]).write_text(yaml.safe_dump({"models": {
        "openai:backend": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}}}))  # never called: scripted below
    config = ServeConfig(models={"chat": RouteConfig(model="openai:backend")},
                         keys=[KeyConfig(key="sk-a", name="team-a")])
    gateway = Gateway(config, Store(str(tmp_path / "gw.db")))
    gateway.providers["openai:backend"].close()
    backend = gateway.providers["openai:backend"] = ScriptedProvider(["hello there"])
    routes = GatewayRoutes(gateway)
    try:
        assert routes.health().status_code == 503  # not started yet
        gateway.start()
        assert json.loads(routes.health().body) == {"status": "ok", "models": ["chat"]}
        assert routes.models()["data"] == [{"id": "chat", "object": "model", "owned_by": "llmbus",
                                            "backend": "openai:backend"}]

        note = AccessNote(Arrival.now())
        body = asyncio.run(routes.handle(HELLO, "Bearer sk-a", True, note))
        assert body["choices"][0]["message"] == {"role": "assistant", "content": "hello there"}
        assert (note.model, note.route, note.key) == ("chat", "backend", "team-a")
        assert backend.requests[0].messages[-1] == {"role": "user", "content": "Say hello"}

        note = AccessNote(Arrival.now())  # the endpoint itself: the same answer, now from the exact cache
        body = asyncio.run(routes.chat_completions(HELLO, scope("/v1/chat/completions", note, "Bearer sk-a"),
                                                   Response()))
        assert body["choices"][0]["message"]["content"] == "hello there" and note.route == "cache_exact"
        assert len(backend.requests) == 1

        refused = AccessNote(Arrival.now())
        with pytest.raises(GatewayError) as caught:
            asyncio.run(routes.handle(HELLO, "Bearer sk-wrong", True, refused))
        assert caught.value.status == 401 and refused.route == "refused"
        error = asyncio.run(routes.refusal(scope("/v1/chat/completions", refused), caught.value))
        assert error.status_code == 401 and json.loads(error.body)["error"]["code"] == "invalid_api_key"

        exposition = routes.prometheus(scope("/metrics", AccessNote(Arrival.now()))).body.decode()
        assert 'llmbus_gateway_requests_total{model="chat",route="backend",status="ok"} 1.0' in exposition
        assert 'llmbus_gateway_requests_total{model="chat",route="cache_exact",status="ok"} 1.0' in exposition
        assert 'llmbus_gateway_refused_total{kind="invalid_api_key"} 1.0' in exposition
        assert "llmbus_gateway_in_flight 0.0" in exposition
    finally:
        gateway.close()
    rows = [c for run in gateway.run_ids.values() for c in gateway.store.iter_calls(run)]
    assert [r["meta"]["route"] for r in rows] == ["backend", "cache_exact"]
