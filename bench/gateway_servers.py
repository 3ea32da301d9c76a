"""The two servers bench/gateway.py starts under uvicorn, each in its own process:

- `stub_app`: an OpenAI-compatible chat endpoint that answers at once with a fixed body (a bare ASGI app: no
  framework, no JSON parsing, so it is never the bottleneck);
- `proxy_app`: the floor for any Python proxy — starlette + one pooled httpx.AsyncClient that forwards the body
  to $BENCH_UPSTREAM and returns the upstream's body, nothing else.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ANSWER = json.dumps({"id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "stub-model",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "ham"},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}).encode()
MODELS = json.dumps({"object": "list", "data": [{"id": "stub-model", "object": "model"}]}).encode()


async def stub_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Any POST: the fixed chat completion; any GET: the model list (health checks)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:  # read the whole body, as a real backend does
        message = await receive()
        more = message.get("more_body", False)
    body = ANSWER if scope["method"] == "POST" else MODELS
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def _client(app: Starlette) -> AsyncIterator[None]:
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024, keepalive_expiry=60)
    async with httpx.AsyncClient(base_url=os.environ.get("BENCH_UPSTREAM", ""), limits=limits,
                                 timeout=60) as client:
        app.state.client = client
        yield


async def _forward(request: Request) -> Response:
    upstream = await request.app.state.client.post(request.url.path.removeprefix("/v1"), content=await request.body(),
                                                   headers={"content-type": "application/json"})
    return Response(upstream.content, status_code=upstream.status_code, media_type="application/json")


proxy_app = Starlette(routes=[Route("/v1/chat/completions", _forward, methods=["POST"])], lifespan=_client)
