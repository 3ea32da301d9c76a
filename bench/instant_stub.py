"""An OpenAI-compatible stub that answers at once: a bare Starlette app under uvicorn, for benches that measure the
client side (the run engine, a gateway) and must never be limited by the server.

    python bench/instant_stub.py PORT

POST /v1/chat/completions and /v1/completions get one fixed, complete answer ("ham" or "spam" by a byte test on
the body, with usage and no logprobs); GET /v1/models the model list. The body is read but never parsed: the
server's own cost stays far below any Python client's. The benches run it in its own process, on 127.0.0.1.
"""

from __future__ import annotations

import json
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def _answer(text: str, chat: bool) -> bytes:
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} if chat
              else {"index": 0, "text": text, "finish_reason": "stop"})
    return json.dumps({"id": "stub", "object": "chat.completion" if chat else "text_completion",
                       "choices": [choice], "usage": {"prompt_tokens": 40, "completion_tokens": 1}}).encode()


ANSWERS = {(label, chat): _answer(label, chat) for label in ("ham", "spam") for chat in (True, False)}
MODELS = json.dumps({"object": "list", "data": [{"id": "stub-model"}]}).encode()


async def complete(request: Request) -> Response:
    """The fixed answer: spam when the item's line names a prize (the bench task's spam texts), else ham."""
    body = await request.body()
    label = "spam" if b"prize" in body[-120:] else "ham"
    return Response(ANSWERS[label, request.url.path.endswith("/chat/completions")], media_type="application/json")


async def models(_: Request) -> Response:
    """The model list (what providers ask to check the endpoint is up)."""
    return Response(MODELS, media_type="application/json")


app = Starlette(routes=[Route("/v1/chat/completions", complete, methods=["POST"]),
                        Route("/v1/completions", complete, methods=["POST"]),
                        Route("/v1/models", models)])


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False,
                timeout_keep_alive=60)
