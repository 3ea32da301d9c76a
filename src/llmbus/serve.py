"""`llmbus serve`: an OpenAI-compatible HTTP gateway (FastAPI) in front of `gateway.Gateway`.

Endpoints: POST /v1/chat/completions and /v1/completions (with `stream: true` as server-sent events, sent
as the backend produces them), GET /v1/models, /metrics (Prometheus), /health. A served model with a `task`
renders the task's prompt around the caller's text, so clients send the raw input (an SMS, a tweet) and get
the task's answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import iterate_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from llmbus.errors import ProviderError
from llmbus.gateway import Answer, Gateway, GatewayError, KeyConfig
from llmbus.gateway_stream import AnswerStream


class GatewayMetrics:
    """Prometheus series of one gateway (its own registry: no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("llmbus_gateway_requests_total", "Requests by model, route and status",
                                ["model", "route", "status"], registry=self.registry)
        self.latency = Histogram("llmbus_gateway_request_seconds", "Request latency", ["model", "route"],
                                 registry=self.registry,
                                 buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.cost = Counter("llmbus_gateway_cost_usd_total", "Spend by model and key", ["model", "key"],
                            registry=self.registry)
        self.tokens = Counter("llmbus_gateway_tokens_total", "Tokens by model and direction", ["model", "direction"],
                              registry=self.registry)
        self.first_token = Histogram("llmbus_gateway_time_to_first_token_seconds", "Streamed requests: time to the "
                                     "first text piece", ["model", "route"], registry=self.registry,
                                     buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.in_flight = Gauge("llmbus_gateway_in_flight", "Requests being answered", registry=self.registry)


def chat_to_prompt(messages: list[dict[str, Any]]) -> tuple[str, str]:
    """(prompt, raw input) from chat messages: a lone user message is used as is; a conversation becomes a
    plain transcript ending with 'Assistant:' (local base models have no chat template)."""
    if not messages:
        raise GatewayError(400, "messages must not be empty")
    contents = [(str(m.get("role", "user")), _text(m.get("content"))) for m in messages]
    last_user = next((c for role, c in reversed(contents) if role == "user"), contents[-1][1])
    if len(contents) == 1:
        return last_user, last_user
    transcript = "\n".join(f"{role.capitalize()}: {content}" for role, content in contents)
    return transcript + "\nAssistant:", last_user


def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content or "")


def create_app(gateway: Gateway) -> FastAPI:
    """The FastAPI app; starting it starts every backend, stopping it stops them."""
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        gateway.start()
        yield
        gateway.close()

    app = FastAPI(title="llmbus gateway", lifespan=lifespan)

    @app.exception_handler(GatewayError)
    async def _refused(_: Request, exc: GatewayError) -> JSONResponse:
        return JSONResponse({"error": {"message": str(exc), "type": "llmbus_error", "code": exc.status}},
                            status_code=exc.status, headers=exc.headers)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "models": sorted(gateway.config.models)}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "llmbus",
                                            "backend": route.model} for name, route in gateway.config.models.items()]}

    @app.get("/metrics")
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    def handle(body: dict[str, Any], authorization: str | None, chat: bool) -> Any:
        name = str(body.get("model", ""))
        key = gateway.authorize(authorization)
        if chat:
            prompt, raw_input = chat_to_prompt(body.get("messages") or [])
        else:
            given = body.get("prompt")
            prompt = "".join(given) if isinstance(given, list) else str(given or "")
            raw_input = prompt
        prompt = gateway.prompt_for(name, raw_input) or prompt
        request = gateway.request_for(name, prompt, raw_input, body)
        metrics.in_flight.inc()
        try:
            if body.get("stream"):
                stream = gateway.open_stream(name, request, key)
                usage = bool((body.get("stream_options") or {}).get("include_usage"))
                events = sse_events(name, stream, chat, usage, lambda: observe(name, stream.answer, key))
                return StreamingResponse(stop_when_gone(events, stream), media_type="text/event-stream")
            answer = gateway.answer(name, request, key)
        except Exception:  # refused, every backend failed, or a bug: counted as an error either way
            observe(name, None, key)
            raise
        observe(name, answer, key)
        return completion_body(name, answer, chat)

    def observe(name: str, answer: Answer | None, key: KeyConfig | None) -> None:
        """Count a finished request (None: it failed, before or during its stream)."""
        metrics.in_flight.dec()
        if answer is None:
            metrics.requests.labels(name, "none", "error").inc()
            return
        metrics.requests.labels(name, answer.route, "ok").inc()
        metrics.latency.labels(name, answer.route).observe(answer.latency_s)
        if "ttft_s" in answer.completion.extra:
            metrics.first_token.labels(name, answer.route).observe(answer.completion.extra["ttft_s"])
        metrics.tokens.labels(name, "in").inc(answer.completion.tokens_in)
        metrics.tokens.labels(name, "out").inc(answer.completion.tokens_out)
        if not answer.route.startswith("cache"):
            metrics.cost.labels(name, key.name if key else "").inc(answer.completion.cost_usd)

    @app.post("/v1/chat/completions")
    def chat_completions(body: dict[str, Any], request: Request) -> Any:
        return handle(body, request.headers.get("authorization"), chat=True)

    @app.post("/v1/completions")
    def completions(body: dict[str, Any], request: Request) -> Any:
        return handle(body, request.headers.get("authorization"), chat=False)

    app.state.gateway = gateway
    app.state.metrics = metrics
    return app


def completion_body(name: str, answer: Answer, chat: bool) -> dict[str, Any]:
    """An OpenAI response object (chat.completion or text_completion) with llmbus extras."""
    c = answer.completion
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
    if chat:
        choice["message"] = {"role": "assistant", "content": c.text}
    else:
        choice["text"] = c.text
    return {"id": f"llmbus-{answer.request_id}", "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": name, "choices": [choice],
            "usage": {"prompt_tokens": c.tokens_in, "completion_tokens": c.tokens_out,
                      "total_tokens": c.tokens_in + c.tokens_out},
            "llmbus": {"route": answer.route, "backend": answer.model, "confidence": c.confidence,
                       "label_probs": c.label_probs, "cost_usd": c.cost_usd, "latency_s": answer.latency_s}}


async def stop_when_gone(events: Generator[str, None, None], stream: AnswerStream) -> AsyncIterator[str]:
    """The events, made in a worker thread. When the client disconnects (this generator is cancelled), the
    backend stops decoding and the cut-short call is logged now, not when the abandoned generator is collected."""
    try:
        async for event in iterate_in_threadpool(events):
            yield event
    finally:
        stream.stop_backend()
        events.close()  # not running: a cancelled worker-thread step is waited for (one short log write here)


def sse_events(name: str, stream: AnswerStream, chat: bool, usage: bool,
               done: Callable[[], None]) -> Generator[str, None, None]:
    """Server-sent events in OpenAI's streaming shape: one chunk per text piece as it arrives, a final chunk,
    a usage chunk when asked for, and [DONE]; a backend failing mid-stream ends it with an error event.
    `done` runs when the stream ends, however it ends."""
    chunk_id = f"llmbus-{stream.request_id}"
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choice: dict[str, Any] | None, **extra: Any) -> str:
        return "data: " + json.dumps({"id": chunk_id, "object": kind, "created": int(time.time()), "model": name,
                                     "choices": [choice] if choice else [], **extra}) + "\n\n"

    first, failure = True, None
    try:
        for piece in stream:
            if chat:
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
        yield "data: " + json.dumps({"error": {"message": str(failure), "type": "llmbus_error",
                                               "code": failure.kind}}) + "\n\n"
        return
    yield event({"index": 0, "finish_reason": "stop", **({"delta": {}} if chat else {"text": ""})})
    if usage and stream.answer is not None:
        c = stream.answer.completion
        yield event(None, usage={"prompt_tokens": c.tokens_in, "completion_tokens": c.tokens_out,
                                 "total_tokens": c.tokens_in + c.tokens_out})
    yield "data: [DONE]\n\n"
