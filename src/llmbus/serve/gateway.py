"""The gateway's core, without HTTP: routes, API keys with rate limits and budgets, caches, fallbacks, logging.

`app.py` puts an OpenAI-compatible FastAPI app in front of it (its endpoints: routes.py). `answer` (and
`answer_async`, on the app's event loop) tries the caches (gateway_cache.py), then the route's model, then its
fallbacks; `open_stream` answers the same way piece by piece (gateway_stream.py): fallbacks apply until the
first piece is out, and a streamed call's meta adds its time to first token (`ttft_s`). Every request becomes
one row in the call log (gateway_log.py): a run per served model per gateway start, the route in each row's
meta (cache_exact, cache_semantic, backend, fallback or failed); a refused request (bad key, body or model, rate
limit, budget) is a row of the start's `gateway:refused` run, with the refusal as its error_kind.

serve.yaml is read by config.py; keys, rate limits and budgets (which hold each request's estimated cost while
it runs) are in gateway_keys.py; a served model's `canary:` (a candidate on a share of its traffic, promoted or
rolled back window by window) is in canary.py: the canary arm's route is the candidate with the incumbent as its
first fallback, its answers are cached under the candidate, and each call's meta says its `arm`.
"""

from __future__ import annotations

import hmac
import threading
import time
import uuid
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from typing import Any

from anyio import to_thread

from llmbus.embed import StageCallback
from llmbus.errors import GatewayError, ProviderError, SpecError
from llmbus.providers import Provider, Request, open_provider
from llmbus.providers.base import Completion
from llmbus.providers.config import load_model_configs, resolve_model
from llmbus.providers.openai import OpenAIProvider
from llmbus.providers.openai_wire import wire_api
from llmbus.providers.replicas import ReplicaStats
from llmbus.run.adapter import build_request, example_fields
from llmbus.serve.backend_calls import call_with_fallbacks
from llmbus.serve.call_writer import Arrival
from llmbus.serve.canary import Canaries
from llmbus.serve.config import CacheConfig, RouteConfig, ServeConfig, load_serve_config
from llmbus.serve.gateway_cache import GatewayCaches
from llmbus.serve.gateway_keys import (
    KeyConfig,
    bearer_token,
    check_budgets_priced,
    check_secrets,
    estimate_cost,
    route_price,
    secret_value,
)
from llmbus.serve.gateway_log import TrafficLog
from llmbus.serve.gateway_stream import Answer, AnswerStream, Event, Piece, Pump, word_pieces
from llmbus.serve.limits import Keys
from llmbus.serve.warmup import served_specs, warm_selectors
from llmbus.serve.wire import passthrough_request, piece_text, raw_input_of, sampling_fields
from llmbus.store import Store
from llmbus.store.gateway_state import Hold, KeyLedger
from llmbus.task.data import Item, load_items, split_items
from llmbus.task.fewshot import ExampleSelector
from llmbus.task.render import render
from llmbus.telemetry import observe_call

# serve.yaml's models live in config.py; callers import them from here too.
__all__ = ["HOLD_GRACE_S", "CacheConfig", "Gateway", "RouteConfig", "ServeConfig", "load_serve_config"]

# A budget hold outlives its route's timeouts by this much (queueing, logging) before it lapses on its own.
HOLD_GRACE_S = 60.0


class Gateway:
    """Shared state of a running gateway; thread-safe: answers are made on the app's event loop
    (`answer_async`), streams and store work in worker threads."""

    def __init__(self, config: ServeConfig, store: Store):
        check_secrets(config.source or "serve config", config.secret_refs())
        self.config, self.store = config, store
        self.specs = served_specs(config.models, config.source)
        self.selectors = {name: ExampleSelector(spec, split_items(spec, load_items(spec)).pool, store.embeddings)
                          for name, spec in self.specs.items()}
        refs = {ref for route in config.models.values() for ref in [route.model, *route.fallbacks]}
        self.canaries = Canaries(store, config.canary, {name: config.models[name].model for name in config.canary})
        # a rolled-back candidate gets no traffic, so it is not started either
        refs |= {canary.candidate for name, canary in config.canary.items()
                 if self.canaries.states[name].status != "rolled_back"}
        self._model_configs = load_model_configs()
        self.models = {ref: resolve_model(ref, self._model_configs) for ref in sorted(refs)}
        if config.budget_unpriced == "refuse":
            check_budgets_priced(config.keys, self.models, self._model_configs, config.source or "serve config")
        self.providers: dict[str, Provider] = {ref: open_provider(model) for ref, model in self.models.items()}
        self.caches = GatewayCaches(store, config.cache)
        self.keys = Keys(config.keys, KeyLedger(store.engine))
        self.traffic = TrafficLog(store, self.specs, config.log_prompt_chars)
        self.calls = self.traffic.calls  # the call log, written in batches off the request path
        self.metrics_secret = secret_value(config.metrics_key) if config.metrics_key else None
        self.ready = threading.Event()  # set by `start` once pools are embedded and backends are up
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="llmbus-gateway")
        self.traffic.open_runs({name: (route.model, route_price(route.model, [route.model, *route.fallbacks],
                                                                 self.models, self._model_configs))
                                for name, route in config.models.items()})
        self.run_ids = self.traffic.run_ids  # served model → the run of its calls

    def start(self, progress: StageCallback | None = None) -> None:
        """Warm up before the first request: embed each served task's nearest-shot pool (vectors the store's
        embedding cache holds are read, not computed), load the saved semantic cache and start every backend
        (load errors surface here, not on the first request). Idempotent; `ready` is set once done."""
        if self.ready.is_set():
            return
        warm_selectors(self.selectors, self.store.embeddings, progress)
        self.caches.load(list(self.config.models))
        for ref, provider in self.providers.items():
            if progress:
                progress(f"starting {ref}", None, None)
            provider.check()
        self.ready.set()

    def close(self) -> None:
        """Stop backends and worker threads; write the call-log rows still queued."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.traffic.close()
        for provider in self.providers.values():
            provider.close()

    def replica_stats(self) -> dict[str, list[ReplicaStats]]:
        """Load, health and counters of each OpenAI-compatible backend's replicas, by model reference (what
        /metrics shows as llmbus_replica_*)."""
        return {ref: provider.replicas.stats() for ref, provider in self.providers.items()
                if isinstance(provider, OpenAIProvider)}

    def open_warning(self) -> str | None:
        """The line to print at startup when anyone who can reach the gateway may use it."""
        if self.keys.by_secret:
            return None
        return "llmbus gateway: warning: serve.yaml has no `keys:`, so the gateway is open to anyone who can reach it"

    # --- admission (the keys themselves: gateway_keys.Keys) -----------------------------------------------
    def check_metrics_key(self, header: str | None) -> None:
        """401 unless /metrics is open or the header carries the metrics key."""
        if self.metrics_secret and not hmac.compare_digest(bearer_token(header).encode(), self.metrics_secret.encode()):
            raise GatewayError(401, "/metrics needs the metrics key (Authorization: Bearer …)")

    def reserve(self, name: str, request: Request, key: KeyConfig | None) -> Hold | None:
        """Hold the request's estimated cost against its key's budget (the most any of the route's models
        could charge) for as long as the route can take; returns the hold, for `answer`/`open_stream` to settle
        once the call is logged."""
        if key is None or key.budget_usd is None:
            return None
        route = self.config.models[name]
        candidate = [c.candidate for n, c in self.config.canary.items() if n == name and c.candidate in self.models]
        refs = [route.model, *route.fallbacks, *candidate]
        return self.keys.hold(key, max(estimate_cost(self.models[ref], request, route.timeout_s, self._model_configs)
                                       for ref in refs), ttl_s=HOLD_GRACE_S + route.timeout_s * len(refs))

    # --- answering ---------------------------------------------------------------------------------------
    def request_for(self, name: str, body: dict[str, Any], chat: bool) -> Request:
        """The provider request for a checked body: a served task renders its prompt (or turns) around the
        caller's text, with the task's output contract and the caller's sampling fields; any other route passes
        the body through (serve/wire.py)."""
        if name not in self.config.models:
            raise GatewayError(404, f"model {name!r} is not served here (see /v1/models)")
        spec = self.specs.get(name)
        if spec is None:
            return passthrough_request(body, chat)
        raw_input = raw_input_of(body, chat)
        item = Item(id="request", fields={spec.data.input: raw_input}, expected=None)
        try:
            rendered = render(spec, dict(item.fields), example_fields(self.selectors[name].select(item), spec))
        except SpecError as exc:
            raise GatewayError(400, f"task {spec.name} cannot render a prompt from one input: {exc}") from None
        fields = sampling_fields(body)
        request = build_request(spec, rendered, raw_input, max_tokens=fields.pop("max_tokens"),
                                temperature=fields.pop("temperature"), stop=fields.pop("stop") or None)
        return replace(request, **{k: v for k, v in fields.items() if v is not None})

    def answer(self, name: str, request: Request, key: KeyConfig | None, hold: Hold | None = None,
               arrival: Arrival | None = None) -> Answer:
        """Cache, then the model, then its fallbacks; logs the call either way. `hold` (from `reserve`) is
        settled once the real cost is logged; latency counts from `arrival` (when the request came in)."""
        route, arm = self._route(name, request)
        tick = arrival.tick if arrival else time.perf_counter()
        try:
            hit = self.caches.cached(name, route.model, request)
            if hit is not None:
                completion, kind = hit
                answer = Answer(completion, kind, route.model, time.perf_counter() - tick, arm=arm)
            else:
                try:
                    completion, used, kind = self._call_with_fallbacks(route, request)
                except GatewayError as exc:
                    failed = Answer(Completion(""), "failed", route.model, time.perf_counter() - tick, arm=arm)
                    self._log(name, request, failed, key, ProviderError("all_failed", str(exc)), hold)
                    raise
                answer = Answer(completion, kind, used, time.perf_counter() - tick, arm=arm)
                self.caches.remember(name, route.model, request, completion)
            self._log(name, request, answer, key, hold=hold)
            return answer
        finally:
            self.keys.release(hold)

    async def answer_async(self, name: str, request: Request, key: KeyConfig | None, hold: Hold | None = None,
                           arrival: Arrival | None = None) -> Answer:
        """`answer` on the event loop (the HTTP app's path): the backend call is awaited (backend_calls.py); the
        steps that may touch the store (caches, a budgeted key's settling) run in a worker thread, the rest —
        queueing the call-log row included — inline."""
        route, arm = self._route(name, request)
        tick = arrival.tick if arrival else time.perf_counter()
        blocking = self.caches.on or hold is not None
        try:
            hit = await to_thread.run_sync(self.caches.cached, name, route.model, request) if blocking else None
            if hit is not None:
                answer = Answer(hit[0], hit[1], route.model, time.perf_counter() - tick, arm=arm)
                await self._off_loop(blocking, self._log, name, request, answer, key, None, hold)
                return answer
            try:
                completion, used, kind = await call_with_fallbacks(
                    self.providers, [route.model, *route.fallbacks], request, self._pool, route.timeout_s)
            except GatewayError as exc:
                failed = Answer(Completion(""), "failed", route.model, time.perf_counter() - tick, arm=arm)
                await self._off_loop(blocking, self._log, name, request, failed, key,
                                     ProviderError("all_failed", str(exc)), hold)
                raise
            answer = Answer(completion, kind, used, time.perf_counter() - tick, arm=arm)
            await self._off_loop(blocking, self.caches.remember, name, route.model, request, completion)
            await self._off_loop(blocking, self._log, name, request, answer, key, None, hold)
            return answer
        finally:
            if hold is not None and not hold.settled:
                await to_thread.run_sync(self.keys.release, hold)

    @staticmethod
    async def _off_loop(blocking: bool, step: Callable[..., None], *args: Any) -> None:
        """Run a step in a worker thread when it may wait on the store, else right here."""
        if blocking:
            await to_thread.run_sync(step, *args)
        else:
            step(*args)

    def open_stream(self, name: str, request: Request, key: KeyConfig | None, hold: Hold | None = None,
                    arrival: Arrival | None = None) -> AnswerStream:
        """`answer`, piece by piece as the backend produces them. Returns once the first piece (or a cached
        answer) is there, so a backend that fails before it still falls back and a request that nobody can
        answer is a plain 502; later, a failing backend ends the iteration with ProviderError (logged)."""
        route, arm = self._route(name, request)
        tick = arrival.tick if arrival else time.perf_counter()
        request_id = uuid.uuid4().hex[:16]
        relayed = False  # the relay logs the answer and releases the hold
        try:
            hit = self.caches.cached(name, route.model, request)
            if hit is not None:
                answer = Answer(hit[0], hit[1], route.model, time.perf_counter() - tick, request_id, arm)
                answer.completion.extra["ttft_s"] = round(answer.latency_s, 6)
                self._log(name, request, answer, key, hold=hold)
                return AnswerStream(_replay(answer), request_id)
            errors = []
            for position, ref in enumerate([route.model, *route.fallbacks]):
                pump = Pump(self._pool, self.providers[ref], request, route.timeout_s)
                first = pump.next()
                if first.kind in ("piece", "done"):
                    kind = "backend" if position == 0 else "fallback"
                    relay = self._relay(name, route.model, request, key,
                                        Answer(Completion(""), kind, ref, 0.0, request_id, arm),
                                        tick, hold, pump, first)
                    relayed = True
                    return AnswerStream(relay, request_id, stop_backend=pump.cancel)
                pump.cancel()
                errors.append(f"{ref}: {first.failure(route.timeout_s)}")
            message = "all backends failed: " + "; ".join(errors)
            self._log(name, request, Answer(Completion(""), "failed", route.model, time.perf_counter() - tick,
                                            request_id, arm), key, ProviderError("all_failed", message), hold)
            raise GatewayError(502, message)
        finally:
            if not relayed:
                self.keys.release(hold)

    def _relay(self, name: str, primary: str, request: Request, key: KeyConfig | None, answer: Answer,
               tick: float, hold: Hold | None, pump: Pump, event: Event) -> Generator[Piece, None, Answer]:
        """Hand the pump's pieces on; once done, cache and log the whole answer (or log the failure), then
        release the request's budget hold."""
        pieces: list[str] = []
        chat = request.wire is None or wire_api(request.wire) == "chat"
        ttft = None
        try:
            while event.kind == "piece":
                ttft = ttft if ttft is not None else time.perf_counter() - tick
                pieces.append(piece_text(event.value, chat))
                yield event.value
                event = pump.next()
        except GeneratorExit:  # the client went away: stop the backend, keep the row
            event = Event("error", ProviderError("client_closed", "the client closed the stream"))
            raise
        finally:
            answer.latency_s = time.perf_counter() - tick
            try:
                if event.kind == "done":
                    answer.completion = event.value
                    answer.completion.extra["ttft_s"] = round(ttft if ttft is not None else answer.latency_s, 6)
                    self.caches.remember(name, primary, request, answer.completion)
                    self._log(name, request, answer, key, hold=hold)
                else:
                    pump.cancel()
                    answer.completion.text = "".join(pieces)
                    self._log(name, request, answer, key, event.failure(self.config.models[name].timeout_s), hold)
            finally:
                self.keys.release(hold)
        if event.kind != "done":
            raise event.failure(self.config.models[name].timeout_s)
        return answer

    def _route(self, name: str, request: Request) -> tuple[RouteConfig, str | None]:
        """The route this request takes and its canary arm (None without a canary): the canary arm's route is
        the candidate, with the incumbent as its first fallback."""
        route = self.config.models[name]
        arm = self.canaries.arm(name, request.input if request.input is not None else request.prompt)
        if arm != "canary":
            return route, arm
        candidate = self.config.canary[name].candidate
        return route.model_copy(update={"model": candidate, "fallbacks": [route.model, *route.fallbacks]}), arm

    def _call_with_fallbacks(self, route: RouteConfig, request: Request) -> tuple[Completion, str, str]:
        errors = []
        for position, ref in enumerate([route.model, *route.fallbacks]):
            future = self._pool.submit(self.providers[ref].complete, request)
            try:
                return future.result(timeout=route.timeout_s), ref, "backend" if position == 0 else "fallback"
            except FutureTimeout:
                errors.append(f"{ref}: no answer within {route.timeout_s:g}s")
            except ProviderError as exc:
                errors.append(f"{ref}: {exc}")
        raise GatewayError(502, "all backends failed: " + "; ".join(errors))

    def _log(self, name: str, request: Request, answer: Answer, key: KeyConfig | None,
             error: ProviderError | None = None, hold: Hold | None = None) -> None:
        """Queue the call's row and count its cost against the key (a budgeted key's at once, settling its hold;
        others' with the row); telemetry and the canary's guard see the call too."""
        cost = 0.0 if answer.route.startswith("cache") else answer.completion.cost_usd
        record = self.traffic.record(name, request, answer, key, cost, error)
        counted = self.keys.settle(key, hold, cost)
        self.calls.write(record, spend_key=key.name if key and not counted else None)
        observe_call(record, request, answer.completion, self.providers.get(answer.model), answer.route)
        self.canaries.observe(name, answer.arm, answer.route, error is not None and error.kind != "client_closed",
                              answer.latency_s, answer.request_id)

    def refuse(self, name: str, error: GatewayError, key: KeyConfig | None, prompt: str = "",
               arrival: Arrival | None = None) -> None:
        """Log a refused request as a row of this start's `gateway:refused` run (route `refused`)."""
        self.traffic.refuse(name, error, key, prompt, arrival)


def _replay(answer: Answer) -> Generator[str, None, Answer]:
    """A cached answer as a stream of word-sized pieces."""
    yield from word_pieces(answer.completion.text)
    return answer
