"""One model on several OpenAI-compatible servers (`base_urls:`): which replica answers each request, which are up.

Routing. Each request goes to the replica with the fewest requests in flight, ties taken in turn (round robin).
With `affinity: prefix`, prompts that share their first `prefix_chars` characters prefer one replica, chosen by
rendezvous (highest-random-weight) hashing of that prefix over the replicas in rotation, so the replica's KV
prefix cache is reused; the preferred replica is passed over when it has more than `affinity_slack` requests in
flight above the least-loaded one. Borrowed: the vLLM production-stack router (src/vllm_router/routers/
routing_logic.py) — SessionRouter hashes a session key over the current endpoints and falls back to the
lowest-QPS one without a key; PrefixAwareRouter sends a prompt where its longest prefix went before, whatever
the load (a trie of past prompts: here a hash of the first characters, which needs no state and no eviction;
the slack adds the load) — and the "cache-aware" policy of the SGLang / vLLM routers: prefix affinity while
the load is balanced, the shortest queue once it is skewed past an absolute threshold (`balance_abs_threshold`).
Rendezvous rather than a hash ring: nothing to maintain, and a replica that leaves moves only its own prefixes.

Health. Borrowed from Envoy's outlier detection (consecutive_5xx and base_ejection_time, 5 and 30 s by default
there; Envoy also lengthens each repeated ejection, we do not) and its active health checks: `eject_after`
consecutive failures — connection errors, timeouts, HTTP 5xx, never a 4xx, which is the caller's fault — eject a
replica for `eject_s` seconds. Then it is half-open: one trial request goes to it; success puts it back in
rotation, failure ejects it again. A background thread GETs each replica's /health every `health_interval_s`
while the provider is open: an unhealthy answer ejects, a healthy one readmits (so a replica that answers
/health but fails requests is out again after `eject_after` more failures). When every replica is ejected,
requests go to all of them anyway (Envoy's panic routing, which Envoy starts below 50% healthy, here only at
none): refusing helps nobody when there is nowhere else to go, and the first success readmits its replica.

The set keeps each replica's counters; `stats()` is what a metrics collector reads (serve/metrics.py), so nothing is
registered globally.
"""

from __future__ import annotations

import bisect
import hashlib
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

from llmbus.providers.openai_config import RoutingConfig
from llmbus.redact import masked_url

# ok: answered. fault: the replica failed (connection, timeout, 5xx): counts towards ejection. error: an answer
# that is an error but says nothing about the replica's health (4xx, unreadable). abandoned: the caller left.
Outcome = Literal["ok", "fault", "error", "abandoned"]

LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def outcome_of(kind: str) -> Outcome:
    """A failed call's error kind → whether it counts against the replica's health."""
    return "fault" if kind in ("connection", "timeout") or kind.startswith("http_5") else "error"


@dataclass(eq=False)  # compared by identity: two replicas are never the same one
class Replica:
    """One endpoint: its load, health and counters (changed only under its set's lock)."""

    url: str
    index: int
    in_flight: int = 0
    failures: int = 0  # consecutive faults
    ejected_until: float | None = None  # None: in rotation; past: half-open, waiting for its trial request
    on_trial: bool = False  # half-open and its trial request is in flight
    requests: int = 0
    errors: int = 0
    ejections: int = 0
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0


@dataclass(frozen=True)
class Lease:
    """A request's hold on a replica, from `acquire` to `release`."""

    replica: Replica
    trial: bool  # the replica was ejected when chosen: this request decides whether it comes back
    started: float


@dataclass(frozen=True)
class ReplicaStats:
    """A snapshot of one replica for metrics; the URL is masked."""

    url: str
    healthy: bool
    in_flight: int
    requests: int
    errors: int
    ejections: int
    latency_buckets: tuple[tuple[float, int], ...]  # (upper bound, cumulative count), the last bound inf
    latency_sum: float


def rendezvous_score(key: str, url: str) -> int:
    """The replica's weight for a key; the highest weight wins (stable across processes, unlike hash())."""
    return int.from_bytes(hashlib.blake2b(f"{url}\0{key}".encode(), digest_size=8).digest(), "big")


class ReplicaSet:
    """The replicas of one model, with routing and health; thread-safe. `clock` is injectable for tests."""

    def __init__(self, urls: Sequence[str], routing: RoutingConfig,
                 clock: Callable[[], float] = time.monotonic):
        if not urls:
            raise ValueError("a replica set needs at least one URL")
        self.replicas = [Replica(url, i) for i, url in enumerate(urls)]
        self.routing = routing
        self._clock = clock
        self._lock = threading.Lock()
        self._turn = 0  # round-robin position for ties
        self._stop = threading.Event()
        self._prober: threading.Thread | None = None

    # --- routing --------------------------------------------------------------------------------------------
    def acquire(self, prompt: str = "", avoid: Collection[Replica] = ()) -> Lease:
        """The replica for the next request, counted in flight until `release`; `avoid` (replicas this request
        already failed on) is honoured while another replica is in rotation."""
        with self._lock:
            now = self._clock()
            up = [r for r in self.replicas if self._usable(r, now)]
            pool = [r for r in up if r not in avoid] or up or self.replicas  # the last: panic, all are ejected
            choice = (self._affine(prompt, pool) if self.routing.affinity == "prefix" else None) \
                or self._least_loaded(pool)
            trial = choice.ejected_until is not None
            choice.on_trial = choice.on_trial or trial
            choice.in_flight += 1
            return Lease(choice, trial, now)

    def release(self, lease: Lease, outcome: Outcome) -> None:
        """Record how the leased request ended: counters, latency, and the health that follows from it."""
        with self._lock:
            now = self._clock()
            replica = lease.replica
            replica.in_flight -= 1
            if lease.trial:
                replica.on_trial = False
            if outcome == "abandoned":
                return
            replica.requests += 1
            seconds = max(0.0, now - lease.started)
            replica.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            replica.latency_sum += seconds
            if outcome == "ok":
                replica.failures = 0
                if lease.trial:
                    replica.ejected_until = None
                return
            replica.errors += 1
            if outcome == "fault":
                replica.failures += 1
                if lease.trial or (replica.ejected_until is None and replica.failures >= self.routing.eject_after):
                    self._eject(replica, now)

    def has_spare(self, avoid: Collection[Replica]) -> bool:
        """Whether a replica outside `avoid` is in rotation (somewhere else to send a failed request)."""
        with self._lock:
            now = self._clock()
            return any(self._usable(r, now) and r not in avoid for r in self.replicas)

    def _usable(self, replica: Replica, now: float) -> bool:
        if replica.ejected_until is None:
            return True
        return replica.ejected_until <= now and not replica.on_trial  # half-open: one trial at a time

    def _least_loaded(self, pool: list[Replica]) -> Replica:
        count = len(self.replicas)
        choice = min(pool, key=lambda r: (r.in_flight, (r.index - self._turn) % count))
        self._turn = (choice.index + 1) % count
        return choice

    def _affine(self, prompt: str, pool: list[Replica]) -> Replica | None:
        key = prompt[:self.routing.prefix_chars]
        preferred = max(pool, key=lambda r: rendezvous_score(key, r.url))
        least = min(r.in_flight for r in pool)
        return preferred if preferred.in_flight <= least + self.routing.affinity_slack else None

    # --- health ---------------------------------------------------------------------------------------------
    def mark(self, replica: Replica, healthy: bool) -> None:
        """An active probe's verdict: healthy readmits an ejected replica, unhealthy ejects (or keeps it out)."""
        with self._lock:
            now = self._clock()
            if healthy:
                replica.ejected_until, replica.failures = None, 0
            else:
                self._eject(replica, now)

    def _eject(self, replica: Replica, now: float) -> None:
        """Out of rotation for `eject_s` from now; counted when it was in rotation or half-open (a replica that
        is still out is only kept out longer)."""
        if replica.ejected_until is None or replica.ejected_until <= now:
            replica.ejections += 1
        replica.ejected_until = now + self.routing.eject_s

    def start_probes(self, probe: Callable[[str], bool], interval_s: float) -> None:
        """Probe every replica's health (`probe(url)` → healthy) every `interval_s` until `close`."""
        self._prober = threading.Thread(target=self._probe_loop, args=(probe, interval_s), daemon=True,
                                        name="llmbus-replica-probe")
        self._prober.start()

    def _probe_loop(self, probe: Callable[[str], bool], interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            for replica in self.replicas:
                if self._stop.is_set():
                    return
                self.mark(replica, probe(replica.url))

    def close(self, wait_s: float = 5.0) -> None:
        """Stop the health probes (waits for a probe under way, at most `wait_s`)."""
        self._stop.set()
        if self._prober is not None:
            self._prober.join(timeout=wait_s)

    # --- metrics --------------------------------------------------------------------------------------------
    def stats(self) -> list[ReplicaStats]:
        """Every replica's load, health and counters, for a metrics collector."""
        with self._lock:
            snapshot = []
            for r in self.replicas:
                cumulative = [sum(r.latency_counts[:i + 1]) for i in range(len(r.latency_counts))]
                snapshot.append(ReplicaStats(
                    url=masked_url(r.url), healthy=r.ejected_until is None, in_flight=r.in_flight,
                    requests=r.requests, errors=r.errors, ejections=r.ejections,
                    latency_buckets=tuple(zip((*LATENCY_BUCKETS, float("inf")), cumulative, strict=True)),
                    latency_sum=r.latency_sum))
            return snapshot
