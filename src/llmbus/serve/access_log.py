"""One access-log line per gateway request, on the `llmbus.serve.access` logger (uvicorn's shape, plus what a
gateway operator asks first: which served model, which route answered, which key — by name, never its secret —
and the latency the client saw, to the end of the response body):

    127.0.0.1:50312 - "POST /v1/chat/completions HTTP/1.1" 200 model=chat route=backend key=team-a 12.4ms

`AccessLog` is a plain ASGI middleware (no per-request task or body copy): it stamps each request's arrival
into the scope's state (`request.state.access`, which the handlers fill in and the call log's row starts from)
and writes the line when the response has been sent. `llmbus serve` sends the logger to stderr;
`--no-access-log` turns it off.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from llmbus.serve.call_writer import Arrival

log = logging.getLogger("llmbus.serve.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class AccessNote:
    """What one request's access line says beyond the HTTP basics; the handler fills it in."""

    arrival: Arrival
    model: str = "-"
    route: str = "-"
    key: str = "-"

    def fill(self, model: str | None = None, route: str | None = None, key: str | None = None) -> None:
        """Set the fields known so far (a refusal knows no route; an open gateway no key)."""
        self.model = _token(model) if model else self.model
        self.route = route or self.route
        self.key = _token(key) if key else self.key


class AccessLog:
    """ASGI middleware: an `AccessNote` per HTTP request, one log line when its response is sent."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        note = AccessNote(Arrival.now())
        scope.setdefault("state", {})["access"] = note
        status = 500  # what the client gets when the app fails before it starts a response

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if log.isEnabledFor(logging.INFO):
                log.info(access_line(scope, status, note))


def _token(value: str) -> str:
    """A caller-given name as one log token: no spaces or control characters (one request, one line)."""
    return "".join(c if c.isprintable() and not c.isspace() else "?" for c in value[:200])


def access_line(scope: Scope, status: int, note: AccessNote) -> str:
    """The line for one finished request."""
    client = scope.get("client")
    where = f"{client[0]}:{client[1]}" if client else "-"
    query = scope.get("query_string", b"")
    path = scope.get("path", "") + (f"?{query.decode('latin-1')}" if query else "")
    elapsed_ms = note.arrival.stamps()[2] * 1000
    return (f'{where} - "{scope.get("method", "-")} {path} HTTP/{scope.get("http_version", "1.1")}" {status} '
            f"model={note.model} route={note.route} key={note.key} {elapsed_ms:.1f}ms")
