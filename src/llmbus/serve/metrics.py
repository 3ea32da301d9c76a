"""The gateway's Prometheus series, each gateway on its own registry (no global state).

Counted by the request path (routes.py): requests by model, route and status, latency, time to first token,
tokens, spend by key, requests in flight, and refusals by kind (`llmbus_gateway_refused_total`). Read at each
scrape: the backends' per-replica load, health and latency (`llmbus_replica_*`, kept by the providers);
monitored served models' judge-corrected pass rate (`llmbus_quality_estimate{model, bound}`, `llmbus monitor`,
from the store); a canary's candidate share (`llmbus_canary_share{model}`) and the guard's decisions
(`llmbus_canary_decisions_total{model, decision}`, counted from the store, so they survive a restart).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from llmbus.errors import LlmbusError
from llmbus.providers.replicas import ReplicaStats
from llmbus.quality.estimate import Estimate
from llmbus.serve.gateway_keys import KeyConfig
from llmbus.serve.gateway_stream import Answer


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

    def count(self, name: str, answer: Answer | None, key: KeyConfig | None) -> None:
        """Count a finished request (None: it failed, before or during its stream)."""
        self.in_flight.dec()
        if answer is None:
            self.requests.labels(name, "none", "error").inc()
            return
        self.requests.labels(name, answer.route, "ok").inc()
        self.latency.labels(name, answer.route).observe(answer.latency_s)
        if "ttft_s" in answer.completion.extra:
            self.first_token.labels(name, answer.route).observe(answer.completion.extra["ttft_s"])
        self.tokens.labels(name, "in").inc(answer.completion.tokens_in)
        self.tokens.labels(name, "out").inc(answer.completion.tokens_out)
        if not answer.route.startswith("cache"):
            self.cost.labels(name, key.name if key else "").inc(answer.completion.cost_usd)

    def exposition(self) -> str:
        """The registry in Prometheus' text format (what /metrics answers)."""
        return generate_latest(self.registry).decode()
