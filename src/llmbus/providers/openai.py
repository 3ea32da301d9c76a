"""Any OpenAI-compatible endpoint (vLLM, TGI, llama.cpp server, hosted APIs) over plain HTTP.

Pure functions translate the wire format; the class adds timeouts, bounded concurrency and retries
with exponential backoff on 429, 5xx and connection errors, honouring Retry-After. `stream` asks the endpoint
for server-sent events and yields the text as it arrives (retries apply until the stream has started).
A model with several `base_urls` sends each request to one replica (replicas.py: least in flight, optional
prefix affinity, ejection of failing replicas); a request whose connection could not even open moves at once
to another replica.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Generator
from typing import Any

import httpx

from llmbus.errors import ProviderError, Unreachable
from llmbus.providers.abort import Sockets, track_sockets
from llmbus.providers.base import Completion, Request, sse_data, whole
from llmbus.providers.openai_config import OpenAIConfig
from llmbus.providers.openai_wire import (
    StreamedAnswer,
    counted_usage,
    from_response,
    relays,
    text_of,
    to_payload,
    wire_api,
)
from llmbus.providers.prices import price_of, usage_of
from llmbus.providers.replicas import Lease, Outcome, Replica, ReplicaSet, outcome_of
from llmbus.redact import masked_url

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
PATHS = {"chat": "/chat/completions", "completions": "/completions"}


class OpenAIProvider:
    """Calls one model on an OpenAI-compatible endpoint, or on any of its replicas (`base_urls`)."""

    Config = OpenAIConfig

    def __init__(self, config: OpenAIConfig):
        if not config.urls:
            raise Unreachable(f"{config.name}: no base_url configured")
        self.name = config.name
        self.config = config
        self.remote_model = config.remote_model
        self.price = price_of(config)
        headers = {}
        key = os.environ.get(config.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        timeout = httpx.Timeout(config.timeout_s, connect=min(10.0, config.timeout_s))
        self._headers, self._timeout = headers, timeout
        self._async_clients: dict[str, httpx.AsyncClient] = {}  # made on first use, on the gateway's loop
        self._async_slots: asyncio.Semaphore | None = None
        self.clients = {url: httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout,
                                          limits=httpx.Limits(max_connections=config.max_concurrency))
                        for url in config.urls}
        # `close` shuts down the sockets of calls in flight: a stopped run does not wait for their answers
        self._sockets: list[Sockets] = [tracked for client in self.clients.values()
                                        if (tracked := track_sockets(client)) is not None]
        self.replicas = ReplicaSet(config.urls, config.routing)
        # max_concurrency is per replica: two servers take twice the requests at once
        self._slots = threading.BoundedSemaphore(config.max_concurrency * len(config.urls))
        self._probe_client = httpx.Client(headers=headers, timeout=min(2.0, config.timeout_s))
        if len(config.urls) > 1 and config.routing.health_interval_s > 0:
            self.replicas.start_probes(self._healthy, config.routing.health_interval_s)

    def check(self) -> None:
        """Fail fast when nothing listens at any replica (any HTTP answer counts as reachable); a replica that
        does not answer starts out ejected."""
        down: list[tuple[Replica, httpx.HTTPError]] = []
        for replica in self.replicas.replicas:
            try:
                self.clients[replica.url].get("/models", timeout=10.0)
            except httpx.HTTPError as exc:
                down.append((replica, exc))
        if len(down) == len(self.replicas.replicas):
            urls = ", ".join(masked_url(replica.url) for replica, _ in down)
            raise Unreachable(f"{self.name}: cannot reach {urls}: {down[0][1].__class__.__name__}")
        for replica, _ in down:
            self.replicas.mark(replica, healthy=False)

    def complete(self, request: Request) -> Completion:
        """One call with retries; raises ProviderError with a kind once retries are spent."""
        api = self._api(request)
        body = to_payload(self.remote_model, api, request)
        with self._slots:
            lease, data = self._post_with_retries(PATHS[api], body, request.prompt)
            self.replicas.release(lease, "ok")
        return self._priced(from_response(api, data, request))

    async def acomplete(self, request: Request) -> Completion:
        """`complete` on the event loop (the gateway's request path): the same retries, replicas and errors over
        an httpx.AsyncClient, so a request waiting on its backend holds no thread."""
        api = self._api(request)
        body = to_payload(self.remote_model, api, request)
        if self._async_slots is None:  # made on the loop that uses it
            self._async_slots = asyncio.Semaphore(self.config.max_concurrency * len(self.config.urls))
        async with self._async_slots:
            tries = _Tries(self.replicas, request.prompt, self.config.max_retries)
            while True:
                lease = tries.lease()
                try:
                    data = await self._apost_once(lease.replica.url, PATHS[api], body)
                    self.replicas.release(lease, "ok")
                    return self._priced(from_response(api, data, request))
                except _Retryable as retry:
                    wait = tries.failed(lease, retry)
                except BaseException as error:
                    tries.stopped(lease, error)
                    raise
                await asyncio.sleep(wait)

    async def _apost_once(self, url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if url not in self._async_clients:
            self._async_clients[url] = httpx.AsyncClient(
                base_url=url.rstrip("/"), headers=self._headers, timeout=self._timeout,
                limits=httpx.Limits(max_connections=self.config.max_concurrency,
                                    max_keepalive_connections=self.config.max_concurrency))
        where = self._where(url)
        try:
            response = await self._async_clients[url].post(path, json=body)
        except httpx.TimeoutException as exc:
            raise _Retryable(ProviderError("timeout", f"{where}: no answer within {self.config.timeout_s:g}s"),
                             unsent=isinstance(exc, httpx.ConnectTimeout)) from None
        except httpx.TransportError as exc:
            raise _Retryable(ProviderError("connection", f"{where}: {exc.__class__.__name__}: {exc}"),
                             unsent=isinstance(exc, httpx.ConnectError)) from None
        return _json_answer(response, where)

    def stream(self, request: Request) -> Generator[str, None, Completion]:
        """Text pieces as the endpoint streams them; returns the Completion (usage from the last chunk).
        Label sets are answered whole: their probabilities come from the logprobs of a complete answer."""
        if request.labels:
            return (yield from whole(self.complete(request)))
        return (yield from text_of(self._api(request), self.stream_events(request)))

    def relays(self, request: Request) -> bool:
        """Whether the gateway may relay this endpoint's own response and chunks: a pass-through request,
        which goes to the endpoint its client wrote it for."""
        return relays(request, self._api(request))

    def _api(self, request: Request) -> str:
        """The endpoint a request goes to: the one a pass-through body was written for (the backend answers
        as it would answer the client directly), else the model's configured `api`."""
        return wire_api(request.wire) if request.wire is not None else self.config.api

    def stream_events(self, request: Request) -> Generator[dict[str, Any], None, Completion]:
        """The endpoint's stream chunks as they come (the gateway relays them unchanged); returns the
        Completion they add up to. Usage is always asked for (`stream_options.include_usage`): it prices the
        call; a relay leaves it out when its client did not ask."""
        api = self._api(request)
        body = to_payload(self.remote_model, api, request)
        body.update(stream=True, stream_options={**(body.get("stream_options") or {}), "include_usage": True})
        streamed = StreamedAnswer(api)
        with self._slots:
            lease, response = self._post_with_retries(PATHS[api], body, request.prompt, stream=True)
            where = self._where(lease.replica.url)
            outcome: Outcome = "abandoned"  # unless the stream ends: the caller stopped reading
            try:
                for event in sse_data(response.iter_lines()):
                    streamed.add(event)
                    yield event
                outcome = "ok" if streamed.finished else "fault"
            except httpx.TimeoutException:
                outcome = "fault"
                raise ProviderError("timeout", f"{where}: stream stalled for {self.config.timeout_s:g}s") from None
            except httpx.TransportError as exc:
                outcome = "fault"
                raise ProviderError("connection", f"{where}: stream broke: {exc.__class__.__name__}") from None
            except ProviderError:
                outcome = "error"
                raise
            finally:
                response.close()
                self.replicas.release(lease, outcome)
        completion = streamed.completion()
        if not streamed.usage or not streamed.finished:  # the tokens were still generated, so paid for: count them
            completion = counted_usage(completion, request.prompt, len(streamed.pieces), streamed.finish_reason)
        return self._priced(completion)

    def _where(self, url: str) -> str:
        """The model's name in an error, with the replica's (masked) URL when there are several."""
        return self.name if len(self.clients) == 1 else f"{self.name} at {masked_url(url)}"

    def _priced(self, completion: Completion) -> Completion:
        # an unknown price costs 0 here: the run's stored price says its cost is unknown (shown as ?)
        completion.cost_usd = self.price.cost(usage_of(completion)) or 0.0
        return completion

    def _post_with_retries(self, path: str, body: dict[str, Any], prompt: str,
                           stream: bool = False) -> tuple[Lease, Any]:
        """The JSON answer, or with `stream` the open 200 response (the caller reads and closes it), with the
        lease of the replica that gave it (the caller releases it). A connection that never opened moves once,
        at once, to another replica in rotation (nothing was sent); other retryable failures wait and retry,
        on another replica when there is one."""
        tries = _Tries(self.replicas, prompt, self.config.max_retries)
        while True:
            lease = tries.lease()
            try:
                return lease, self._post_once(lease.replica.url, path, body, stream)
            except _Retryable as retry:
                wait = tries.failed(lease, retry)
            except BaseException as error:
                tries.stopped(lease, error)
                raise
            time.sleep(wait)

    def _post_once(self, url: str, path: str, body: dict[str, Any], stream: bool) -> Any:
        client, where = self.clients[url], self._where(url)
        try:
            response = client.send(client.build_request("POST", path, json=body), stream=stream)
        except httpx.TimeoutException as exc:
            raise _Retryable(ProviderError("timeout", f"{where}: no answer within {self.config.timeout_s:g}s"),
                             unsent=isinstance(exc, httpx.ConnectTimeout)) from None
        except httpx.TransportError as exc:
            raise _Retryable(ProviderError("connection", f"{where}: {exc.__class__.__name__}: {exc}"),
                             unsent=isinstance(exc, httpx.ConnectError)) from None
        if response.status_code == 200 and stream:
            return response
        if stream:
            response.read()
            response.close()
        return _json_answer(response, where)

    def _healthy(self, url: str) -> bool:
        """The active probe: GET /health at the server's root (llama-server, vLLM, TGI answer it), or the
        endpoint's /models where the server has no /health."""
        for probe in (url.rstrip("/").removesuffix("/v1") + "/health", url.rstrip("/") + "/models"):
            try:
                status = self._probe_client.get(probe).status_code
            except httpx.HTTPError:
                return False
            if status != 404:
                return status == 200
        return False

    def close(self) -> None:
        """Stop the health probes, cancel the calls in flight (their sockets are shut down, so a thread waiting
        for an answer returns at once) and close the HTTP connection pools (the async ones are dropped: their
        loop may be gone already)."""
        self.replicas.close()
        for sockets in self._sockets:
            sockets.abort()
        for client in [*self.clients.values(), self._probe_client]:
            client.close()
        self._async_clients.clear()

    async def aclose(self) -> None:
        """Close the async connection pools (on their loop, while it runs)."""
        clients, self._async_clients = list(self._async_clients.values()), {}
        for client in clients:
            await client.aclose()


def _json_answer(response: httpx.Response, where: str) -> dict[str, Any]:
    """A read response's JSON answer; a retryable failure or a ProviderError for anything else."""
    if response.status_code == 200:
        try:
            return dict(response.json())
        except ValueError:
            raise _Retryable(ProviderError("bad_response", f"{where}: response is not JSON: "
                                                           f"{response.text[:120]!r}")) from None
    status = response.status_code
    error = ProviderError("rate_limited" if status == 429 else f"http_{status}",
                          f"{where}: HTTP {status}: {response.text[:200]}")
    if status in RETRYABLE_STATUS:
        raise _Retryable(error, retry_after_seconds(response.headers.get("retry-after")))
    raise error


class _Retryable(Exception):
    """A failed attempt worth retrying, with the server's Retry-After if it gave one; `unsent`: the connection
    never opened, so the replica never saw the request."""

    def __init__(self, error: ProviderError, wait: float | None = None, unsent: bool = False):
        super().__init__(str(error))
        self.error, self.wait, self.unsent = error, wait, unsent


class _Tries:
    """The tries of one call over the replicas, shared by the sync and async paths: which replicas failed it,
    whether it already moved, how many retries it spent."""

    def __init__(self, replicas: ReplicaSet, prompt: str, max_retries: int):
        self.replicas, self.prompt, self.max_retries = replicas, prompt, max_retries
        self.failed_on: list[Replica] = []
        self.moved = False
        self.attempt = 0

    def lease(self) -> Lease:
        """The replica for the next try (one that failed this call only when no other is left)."""
        return self.replicas.acquire(self.prompt, avoid=self.failed_on)

    def failed(self, lease: Lease, retry: _Retryable) -> float:
        """Release a failed try's replica and return the seconds to wait before the next: 0 to move at once, once,
        to a spare replica when the request was never sent; else Retry-After or the backoff. Raises the error
        when no retry is left."""
        self.replicas.release(lease, outcome_of(retry.error.kind))
        self.failed_on.append(lease.replica)
        if retry.unsent and not self.moved and self.replicas.has_spare(self.failed_on):
            self.moved = True
            return 0.0
        if self.attempt >= self.max_retries:
            raise retry.error from None
        wait = retry.wait if retry.wait is not None else backoff_seconds(self.attempt)
        self.attempt += 1
        return wait

    def stopped(self, lease: Lease, error: BaseException) -> None:
        """Release the replica of a try that ended otherwise: a provider error counts against it; a cancel (the
        route's timeout, a client gone) does not."""
        self.replicas.release(lease, outcome_of(error.kind) if isinstance(error, ProviderError) else "abandoned")


def backoff_seconds(attempt: int, base: float = 0.25, cap: float = 20.0) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(cap, base * 2**attempt))


def retry_after_seconds(header: str | None, cap: float = 60.0) -> float | None:
    """Seconds to wait from a Retry-After header given in seconds (HTTP dates are ignored)."""
    if not header:
        return None
    try:
        return max(0.0, min(cap, float(header)))
    except ValueError:
        return None
