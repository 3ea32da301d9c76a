"""`llmbus serve`: an OpenAI-compatible HTTP gateway (FastAPI) in front of `gateway.Gateway`.

Endpoints: POST /v1/chat/completions and /v1/completions (with `stream: true` as server-sent events, sent
as the backend produces them), GET /v1/models, /metrics (Prometheus; behind `metrics_key` when set), /health.
A served model with a `task` renders the task's prompt around the caller's text, so clients send the raw input
(an SMS, a tweet) and get the task's answer. Request bodies are checked field by field (`ChatBody`,
`CompletionBody`); a refused request is answered with an OpenAI-style error body, counted by kind
(`llmbus_gateway_refused_total`) and logged (`Gateway.refuse`). Monitored served models (`llmbus monitor`)
export their judge-corrected pass rate as `llmbus_quality_estimate{model, bound}`, read from the store; a
canary (canary.py) its candidate's share (`llmbus_canary_share{model}`) and the guard's decisions
(`llmbus_canary_decisions_total{model, decision}`, counted from the store, so they survive a restart).

The request path is async: a request is admitted on the event loop (in a worker thread when its key has
limits, kept in the store, or its model is a task whose prompt is rendered with nearest shots) and answered by
`Gateway.answer_async`, which awaits OpenAI-compatible backends and runs in-process ones in a bounded executor;
a streamed answer is pumped from a worker thread (gateway_stream.py).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import iterate_in_threadpool, run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from llmbus.errors import GatewayError, LlmbusError
from llmbus.providers import Request as ProviderRequest
from llmbus.providers.replicas import ReplicaStats
from llmbus.quality.estimate import Estimate
from llmbus.quality.monitor import latest_estimates
from llmbus.serve.access_log import AccessLog, AccessNote
from llmbus.serve.canary import decision_counts
from llmbus.serve.gateway import Gateway
from llmbus.serve.gateway_keys import KeyConfig
from llmbus.serve.gateway_stream import Answer, AnswerStream
from llmbus.serve.wire import body_turns, check_body, completion_body, error_body, sse_events
from llmbus.store.gateway_state import Hold
from llmbus.task.chat import transcript
from llmbus.telemetry import carry_generator, response_headers, span, tracer

log = logging.getLogger(__name__)


class ReplicaCollector:
    """The backends' per-replica series, read from the providers at each scrape (they keep the counts)."""

    def __init__(self, read: Callable[[], dict[str, list[ReplicaStats]]]):
        self.read = read

    def collect(self) -> Iterator[Metric]:
        """llmbus_replica_* by model reference and (masked) replica URL."""
        labels = ["model", "replica"]
        in_flight = GaugeMetricFamily("llmbus_replica_in_flight", "Requests in flight on each replica", labels=labels)
        healthy = GaugeMetricFamily("llmbus_replica_healthy", "1 while the replica is in rotation, 0 while ejected",
                                    labels=labels)
        requests = CounterMetricFamily("llmbus_replica_requests", "Requests each replica finished", labels=labels)
        errors = CounterMetricFamily("llmbus_replica_errors", "Requests that failed on each replica (connection, "
                                     "timeout, HTTP error)", labels=labels)
        ejections = CounterMetricFamily("llmbus_replica_ejections", "Times each replica was taken out of rotation",
                                        labels=labels)
        latency = HistogramMetricFamily("llmbus_replica_request_seconds", "Request latency on each replica",
                                        labels=labels)
        for model, replicas in self.read().items():
            for replica in replicas:
                values = [model, replica.url]
                in_flight.add_metric(values, replica.in_flight)
                healthy.add_metric(values, 1 if replica.healthy else 0)
                requests.add_metric(values, replica.requests)
                errors.add_metric(values, replica.errors)
                ejections.add_metric(values, replica.ejections)
                buckets = [(floatToGoString(bound), count) for bound, count in replica.latency_buckets]
                latency.add_metric(values, buckets, replica.latency_sum)
        yield from (in_flight, healthy, requests, errors, ejections, latency)


class QualityCollector:
    """The judge-corrected pass rate of each monitored served model (`llmbus monitor`), read from the store at
    each scrape."""

    def __init__(self, read: Callable[[], dict[str, Estimate]]):
        self.read = read

    def collect(self) -> Iterator[Metric]:
        """llmbus_quality_estimate by served model and bound (lower, point, upper of the 95% interval)."""
        gauge = GaugeMetricFamily("llmbus_quality_estimate", "Pass rate of the served model's monitored traffic: "
                                  "PPI++ from the judged sample and the human labels (llmbus quality)",
                                  labels=["model", "bound"])
        try:
            estimates = self.read()
        except LlmbusError:  # a store that cannot answer leaves the series out, never the scrape
            estimates = {}
        for model, estimate in estimates.items():
            for bound, value in (("lower", estimate.lo), ("point", estimate.value), ("upper", estimate.hi)):
                gauge.add_metric([model, bound], value)
        yield gauge


class CanaryCollector:
    """Each canary's share (from the running gateway) and its decisions (from the store) at each scrape."""

    def __init__(self, shares: Callable[[], dict[str, float]], decisions: Callable[[], dict[tuple[str, str], int]]):
        self.shares, self.decisions = shares, decisions

    def collect(self) -> Iterator[Metric]:
        """llmbus_canary_share by served model, llmbus_canary_decisions_total by served model and decision."""
        share = GaugeMetricFamily("llmbus_canary_share", "Share of the served model's traffic its canary "
                                  "candidate gets (0 after a rollback, 1 once promoted)", labels=["model"])
        decisions = CounterMetricFamily("llmbus_canary_decisions", "Canary guard decisions (promote, hold, "
                                        "rollback) by served model", labels=["model", "decision"])
        for model, value in self.shares().items():
            share.add_metric([model], value)
        try:
            counts = self.decisions()
        except LlmbusError:  # a store that cannot answer leaves the series out, never the scrape
            counts = {}
        for (model, decision), count in sorted(counts.items()):
            decisions.add_metric([model, decision], count)
        yield from (share, decisions)


class GatewayMetrics:
    """Prometheus series of one gateway (its own registry: no global state); `replicas` reads the backends'
    per-replica stats, `quality` the monitored models' estimates and `canaries` the canaries at scrape time."""

    def __init__(self, replicas: Callable[[], dict[str, list[ReplicaStats]]] | None = None,
                 quality: Callable[[], dict[str, Estimate]] | None = None,
                 canaries: CanaryCollector | None = None) -> None:
        self.registry = CollectorRegistry()
        if canaries is not None:
            self.registry.register(canaries)
        if replicas is not None:
            self.registry.register(ReplicaCollector(replicas))
        if quality is not None:
            self.registry.register(QualityCollector(quality))
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
        # by kind only: model names and keys of refused requests come from the caller (unbounded label values)
        self.refused = Counter("llmbus_gateway_refused_total", "Refused requests by kind (invalid_request, "
                               "invalid_api_key, model_not_found, rate_limit_exceeded, budget_exceeded)", ["kind"],
                               registry=self.registry)


def create_app(gateway: Gateway) -> FastAPI:
    """The FastAPI app; starting it starts every backend, stopping it stops them."""
    metrics = GatewayMetrics(gateway.replica_stats,
                             lambda: latest_estimates(gateway.store, list(gateway.config.models)),
                             CanaryCollector(gateway.canaries.shares, lambda: decision_counts(gateway.store)))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
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

    app = FastAPI(title="llmbus gateway", lifespan=lifespan)
    app.add_middleware(AccessLog)

    @app.exception_handler(GatewayError)
    async def _refused(_: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    def _unreadable(request: Request, _: RequestValidationError) -> JSONResponse:
        """A body that is not a JSON object (FastAPI says 422; OpenAI says 400). The key is checked first."""
        name, key = "", None
        try:
            key = gateway.keys.caller(request.headers.get("authorization"))
            error = GatewayError(400, "We could not parse the JSON body of your request: it must be a JSON object.")
        except GatewayError as exc:
            error = exc
        refused(error, name, key, "", request.state.access)
        return error_response(error)

    def refused(error: GatewayError, name: str, key: KeyConfig | None, prompt: str, note: AccessNote) -> None:
        """Count and log a refused request."""
        metrics.refused.labels(error.kind).inc()
        note.fill(name, "refused", key.name if key else None)
        gateway.refuse(name, error, key, prompt, note.arrival)

    @app.get("/health")
    def health() -> JSONResponse:
        """`ok` once every served task is warm and its backends are up, `starting` (503) until then."""
        ready = gateway.ready.is_set()
        return JSONResponse({"status": "ok" if ready else "starting", "models": sorted(gateway.config.models)},
                            status_code=200 if ready else 503)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "llmbus",
                                            "backend": route.model} for name, route in gateway.config.models.items()]}

    @app.get("/metrics")
    def prometheus(request: Request) -> PlainTextResponse:
        try:
            gateway.check_metrics_key(request.headers.get("authorization"))
        except GatewayError as exc:
            metrics.refused.labels(exc.kind).inc()  # counted, not logged: the call log is for model requests
            raise
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    def admit(name: str, body: dict[str, Any], authorization: str | None, chat: bool,
              note: AccessNote) -> tuple[KeyConfig | None, ProviderRequest, Hold | None]:
        """The key, the provider request and its budget hold, or a logged refusal (GatewayError)."""
        key, prompt = None, ""
        try:
            key = gateway.keys.authorize(authorization)
            check_body(body, chat)
            prompt = transcript(body_turns(body, chat))
            request = gateway.request_for(name, body, chat)
            prompt = request.prompt
            held = gateway.reserve(name, request, key)
        except GatewayError as exc:
            refused(exc, name, key, prompt, note)
            raise
        return key, request, held

    async def handle(body: dict[str, Any], authorization: str | None, chat: bool, note: AccessNote) -> Any:
        """Admit the request (in a worker thread when that may wait on the store or render a task's prompt),
        then answer it on the event loop, or stream it from a worker thread."""
        given_name = body.get("model")
        name = given_name if isinstance(given_name, str) else ""
        note.fill(name)
        if gateway.keys.limited or name in gateway.specs:
            key, request, held = await run_in_threadpool(admit, name, body, authorization, chat, note)
        else:
            key, request, held = admit(name, body, authorization, chat, note)
        note.fill(key=key.name if key else None)
        metrics.in_flight.inc()
        try:
            if body.get("stream"):
                stream = await run_in_threadpool(gateway.open_stream, name, request, key, held, note.arrival)
                usage = bool((body.get("stream_options") or {}).get("include_usage"))
                # stepped from other threads later: within this request's context (its call span nests here)
                events = carry_generator(sse_events(name, stream, chat, usage,
                                                    lambda: observe(name, stream.answer, key, note)))
                return StreamingResponse(stop_when_gone(events, stream), media_type="text/event-stream")
            answer = await gateway.answer_async(name, request, key, held, note.arrival)
        except Exception:  # refused, every backend failed, or a bug: counted as an error either way
            observe(name, None, key, note)
            raise
        observe(name, answer, key, note)
        return completion_body(name, answer, chat)

    def observe(name: str, answer: Answer | None, key: KeyConfig | None, note: AccessNote) -> None:
        """Count a finished request (None: it failed, before or during its stream)."""
        metrics.in_flight.dec()
        note.fill(route=answer.route if answer is not None else "failed")
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

    async def traced(body: dict[str, Any], request: Request, response: Response, chat: bool) -> Any:
        """`handle` inside the request's span (telemetry on: parent from an incoming traceparent), its trace id
        returned in the x-trace-id and traceresponse headers, refusals included."""
        name = body.get("model") if isinstance(body.get("model"), str) else ""
        with span(f"llmbus gateway {name}", {"llmbus.served_model": name, "url.path": request.url.path},
                  kind="SERVER", parent_headers=dict(request.headers)) as current:
            headers = response_headers(current)
            try:
                result = await handle(body, request.headers.get("authorization"), chat, request.state.access)
            except GatewayError as exc:
                exc.headers.update(headers)
                raise
            (result if isinstance(result, StreamingResponse) else response).headers.update(headers)
            return result

    @app.post("/v1/chat/completions")
    async def chat_completions(body: dict[str, Any], request: Request, response: Response) -> Any:
        return await traced(body, request, response, chat=True)

    @app.post("/v1/completions")
    async def completions(body: dict[str, Any], request: Request, response: Response) -> Any:
        return await traced(body, request, response, chat=False)

    app.state.gateway = gateway
    app.state.metrics = metrics
    return app


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
