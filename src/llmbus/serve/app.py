"""`llmbus serve`: an OpenAI-compatible HTTP gateway (FastAPI) in front of `gateway.Gateway`.

The endpoints are the methods of `routes.GatewayRoutes` (POST /v1/chat/completions and /v1/completions, with
`stream: true` as server-sent events; GET /v1/models, /metrics, /health); the OpenAI wire format (body checks,
response bodies, SSE framing) is wire.py; the Prometheus series are metrics.py. This module only binds them:
paths, error handlers, the access log and the lifespan that starts and stops the backends.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from llmbus.errors import GatewayError
from llmbus.serve.access_log import AccessLog
from llmbus.serve.gateway import Gateway
from llmbus.serve.metrics import CanaryCollector, GatewayMetrics, QualityCollector, ReplicaCollector
from llmbus.serve.routes import GatewayRoutes, error_response, stop_when_gone

# The collectors and helpers lived here before metrics.py and routes.py; callers still import them from here.
__all__ = ["CanaryCollector", "GatewayMetrics", "GatewayRoutes", "QualityCollector", "ReplicaCollector",
           "create_app", "error_response", "stop_when_gone"]


def create_app(gateway: Gateway) -> FastAPI:
    """The FastAPI app; starting it starts every backend, stopping it stops them."""
    routes = GatewayRoutes(gateway)
    app = FastAPI(title="llmbus gateway", lifespan=routes.lifespan)
    app.add_middleware(AccessLog)
    app.exception_handler(GatewayError)(routes.refusal)
    app.exception_handler(RequestValidationError)(routes.unreadable)
    app.get("/health")(routes.health)
    app.get("/v1/models")(routes.models)
    app.get("/metrics")(routes.prometheus)
    app.post("/v1/chat/completions")(routes.chat_completions)
    app.post("/v1/completions")(routes.completions)
    app.state.gateway = gateway
    app.state.metrics = routes.metrics
    return app
