"""The gateway's HTTP endpoints as one class, a method per endpoint (`app.py` binds them to paths):

    POST /v1/chat/completions, /v1/completions   chat_completions, completions (`stream: true`: server-sent
                                                 events, sent as the backend produces them)
    GET  /v1/models, /health, /metrics           models, health, prometheus (behind `metrics_key` when set)

A served model with a `task` renders the task's prompt around the caller's text, so clients send the raw input
(an SMS, a tweet) and get the task's answer. Request bodies are checked field by field (wire.py); a refused
request is answered with an OpenAI-style error body, counted by kind and logged (`Gateway.refuse`).

The request path is async: a request is admitted on the event loop (in a worker thread when its key has
limits, kept in the store, or its model is a task whose prompt is rendered with nearest shots) and answered by
`Gateway.answer_async`, which awaits OpenAI-compatible backends and runs in-process ones in a bounded executor;
a streamed answer is pumped from a worker thread (gateway_stream.py). Nothing here needs a running app: a test
calls the methods with a body, a Starlette `Request` built from a scope, and an `AccessNote`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import iterate_in_threadpool, run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from llmbus.errors import GatewayError
from llmbus.providers import Request as ProviderRequest
from llmbus.quality.monitor import latest_estimates
from llmbus.serve.access_log import AccessNote
from llmbus.serve.canary import decision_counts
from llmbus.serve.gateway import Gateway
from llmbus.serve.gateway_keys import KeyConfig
from llmbus.serve.gateway_stream import Answer, AnswerStream
from llmbus.serve.metrics import CanaryCollector, GatewayMetrics
from llmbus.serve.wire import body_turns, check_body, completion_body, error_body, sse_events
from llmbus.store.gateway_state import Hold
from llmbus.task.chat import transcript
from llmbus.telemetry import carry_generator, response_headers, span, tracer

log = logging.getLogger("llmbus.serve.app")  # the name docs/telemetry.md gives for the start line


def gateway_metrics(gateway: Gateway) -> GatewayMetrics:
    """The gateway's series, with its replicas, monitored models and canaries read at each scrape."""
    return GatewayMetrics(gateway.replica_stats,
                          lambda: latest_estimates(gateway.store, list(gateway.config.models)),
                          CanaryCollector(gateway.canaries.shares, lambda: decision_counts(gateway.store)))


class GatewayRoutes:
    """The endpoints of one gateway, counting into its own metrics."""

    def __init__(self, gateway: Gateway, metrics: GatewayMetrics | None = None):
        self.gateway = gateway
        self.metrics = metrics or gateway_metrics(gateway)

    @asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        """Start every backend before the first request; stop them when the app stops."""
        gateway = self.gateway
        warning = gateway.open_warning()
        if warning:
            print(warning, file=sys.stderr)
        tracer()  # telemetry on: set up before the first request, so the server's own HTTP spans join too
        gateway.start()
        log.info("gateway started: %s", ", ".join(f"{name} → {route.model}"
                                                 for name, route in gateway.config.models.items()))
        yield
        for provider in gateway.providers.values():  # async pools close on the loop that used them
            aclose = getattr(provider, "aclose", None)
            if aclose is not None:
                await aclose()
        gateway.close()

    # --- endpoints ---------------------------------------------------------------------------------------
    def health(self) -> JSONResponse:
        """`ok` once every served task is warm and its backends are up, `starting` (503) until then."""
        ready = self.gateway.ready.is_set()
        return JSONResponse({"status": "ok" if ready else "starting", "models": sorted(self.gateway.config.models)},
                            status_code=200 if ready else 503)

    def models(self) -> dict[str, Any]:
        """The served model names, each with the model reference behind it."""
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "llmbus",
                                            "backend": route.model}
                                           for name, route in self.gateway.config.models.items()]}

    def prometheus(self, request: Request) -> PlainTextResponse:
        """The Prometheus exposition (401 without the metrics key when one is set)."""
        try:
            self.gateway.check_metrics_key(request.headers.get("authorization"))
        except GatewayError as exc:
            self.metrics.refused.labels(exc.kind).inc()  # counted, not logged: the call log is for model requests
            raise
        return PlainTextResponse(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def chat_completions(self, body: dict[str, Any], request: Request, response: Response) -> Any:
        """POST /v1/chat/completions."""
        return await self.traced(body, request, response, chat=True)

    async def completions(self, body: dict[str, Any], request: Request, response: Response) -> Any:
        """POST /v1/completions."""
        return await self.traced(body, request, response, chat=False)

    # --- errors ------------------------------------------------------------------------------------------
    async def refusal(self, _: Request, exc: GatewayError) -> JSONResponse:
        """A refused request (raised anywhere on the request path) as its OpenAI-style error."""
        return error_response(exc)

    def unreadable(self, request: Request, _: RequestValidationError) -> JSONResponse:
        """A body that is not a JSON object (FastAPI says 422; OpenAI says 400). The key is checked first."""
        name, key = "", None
        try:
            key = self.gateway.keys.caller(request.headers.get("authorization"))
            error = GatewayError(400, "We could not parse the JSON body of your request: it must be a JSON object.")
        except GatewayError as exc:
            error = exc
        self.refused(error, name, key, "", request.state.access)
        return error_response(error)

    def refused(self, error: GatewayError, name: str, key: KeyConfig | None, prompt: str, note: AccessNote) -> None:
        """Count and log a refused request."""
        self.metrics.refused.labels(error.kind).inc()
        note.fill(name, "refused", key.name if key else None)
        self.gateway.refuse(name, error, key, prompt, note.arrival)

    # --- the request path --------------------------------------------------------------------------------
    async def traced(self, body: dict[str, Any], request: Request, response: Response, chat: bool) -> Any:
        """`handle` inside the request's span (telemetry on: parent from an incoming traceparent), its trace id
        returned in the x-trace-id and traceresponse headers, refusals included."""
        name = body.get("model") if isinstance(body.get("model"), str) else ""
        with span(f"llmbus gateway {name}", {"llmbus.served_model": name, "url.path": request.url.path},
                  kind="SERVER", parent_headers=dict(request.headers)) as current:
            headers = response_headers(current)
            try:
                result = await self.handle(body, request.headers.get("authorization"), chat, request.state.access)
            except GatewayError as exc:
                exc.headers.update(headers)
                raise
            (result if isinstance(result, StreamingResponse) else response).headers.update(headers)
            return result

    async def handle(self, body: dict[str, Any], authorization: str | None, chat: bool, note: AccessNote) -> Any:
        """Admit the request (in a worker thread when that may wait on the store or render a task's prompt),
        then answer it on the event loop (a completion body), or stream it from a worker thread."""
        gateway = self.gateway
        given_name = body.get("model")
        name = given_name if isinstance(given_name, str) else ""
        note.fill(name)
        if gateway.keys.limited or name in gateway.specs:
            key, request, held = await run_in_threadpool(self.admit, name, body, authorization, chat, note)
        else:
            key, request, held = self.admit(name, body, authorization, chat, note)
        note.fill(key=key.name if key else None)
        self.metrics.in_flight.inc()
        try:
            if body.get("stream"):
                stream = await run_in_threadpool(gateway.open_stream, name, request, key, held, note.arrival)
                usage = bool((body.get("stream_options") or {}).get("include_usage"))
                # stepped from other threads later: within this request's context (its call span nests here)
                events = carry_generator(sse_events(name, stream, chat, usage,
                                                    lambda: self.observe(name, stream.answer, key, note)))
                return StreamingResponse(stop_when_gone(events, stream), media_type="text/event-stream")
            answer = await gateway.answer_async(name, request, key, held, note.arrival)
        except Exception:  # refused, every backend failed, or a bug: counted as an error either way
            self.observe(name, None, key, note)
            raise
        self.observe(name, answer, key, note)
        return completion_body(name, answer, chat)

    def admit(self, name: str, body: dict[str, Any], authorization: str | None, chat: bool,
              note: AccessNote) -> tuple[KeyConfig | None, ProviderRequest, Hold | None]:
        """The key, the provider request and its budget hold, or a logged refusal (GatewayError)."""
        gateway = self.gateway
        key, prompt = None, ""
        try:
            key = gateway.keys.authorize(authorization)
            check_body(body, chat)
            prompt = transcript(body_turns(body, chat))
            request = gateway.request_for(name, body, chat)
            prompt = request.prompt
            held = gateway.reserve(name, request, key)
        except GatewayError as exc:
            self.refused(exc, name, key, prompt, note)
            raise
        return key, request, held

    def observe(self, name: str, answer: Answer | None, key: KeyConfig | None, note: AccessNote) -> None:
        """Count a finished request (None: it failed, before or during its stream) and note its route."""
        note.fill(route=answer.route if answer is not None else "failed")
        self.metrics.count(name, answer, key)


def error_response(error: GatewayError) -> JSONResponse:
    """An OpenAI-style error response with the refusal's status."""
    return JSONResponse(error_body(error), status_code=error.status, headers=error.headers)


async def stop_when_gone(events: Generator[str, None, None], stream: AnswerStream) -> AsyncIterator[str]:
    """The events, made in a worker thread. When the client disconnects (this generator is cancelled), the
    backend stops decoding and the cut-short call is logged now, not when the abandoned generator is collected."""
    try:
        async for event in iterate_in_threadpool(events):
            yield event
    finally:
        stream.stop_backend()
        events.close()  # not running: a cancelled worker-thread step is waited for (one short log write here)
