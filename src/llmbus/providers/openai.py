"""Any OpenAI-compatible endpoint (vLLM, TGI, llama.cpp server, hosted APIs) over plain HTTP.

Pure functions translate the wire format; the class adds timeouts, bounded concurrency and retries
with exponential backoff on 429, 5xx and connection errors, honouring Retry-After. `stream` asks the endpoint
for server-sent events and yields the text as it arrives (retries apply until the stream has started).
A model with several `base_urls` sends each request to one replica (replicas.py: least in flight, optional
prefix affinity, ejection of failing replicas); a request whose connection could not even open moves at once
to another replica.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from collections.abc import Generator
from typing import Any

import httpx

from llmbus.errors import ProviderError, Unreachable
from llmbus.providers.abort import Sockets, track_sockets
from llmbus.providers.base import Completion, Request, normalize_probs, sse_data, whole
from llmbus.providers.config import ModelConfig
from llmbus.providers.replicas import Lease, Outcome, Replica, ReplicaSet, outcome_of
from llmbus.redact import masked_url
from llmbus.task.output import match_label

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
CHARS_PER_TOKEN = 4  # prompt tokens of a stream that reported no usage: OpenAI's rule of thumb for English


def to_payload(model: str, api: str, request: Request) -> dict[str, Any]:
    """The JSON body for /chat/completions or /completions."""
    body: dict[str, Any] = {"model": model, "max_tokens": request.max_tokens, "temperature": request.temperature}
    if request.stop:
        body["stop"] = list(request.stop)
    if api == "chat":
        body["messages"] = [{"role": "user", "content": request.prompt}]
        if request.labels or request.want_confidence:
            body["logprobs"] = True
        if request.labels:
            body["top_logprobs"] = 20
    else:
        body["prompt"] = request.prompt
        if request.labels or request.want_confidence:
            body["logprobs"] = 20 if request.labels else 1
    if request.json_schema is not None:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "answer", "schema": request.json_schema}}
    return body


def from_response(api: str, data: dict[str, Any], request: Request) -> Completion:
    """Text, usage and (for label sets) label probabilities from a response body."""
    try:
        choice = data["choices"][0]
        text = choice["message"]["content"] if api == "chat" else choice["text"]
    except (KeyError, IndexError, TypeError):
        raise ProviderError("bad_response", f"response has no choices[0] text: {str(data)[:200]}") from None
    text = text or ""
    usage = data.get("usage") or {}
    completion = Completion(text=text, tokens_in=int(usage.get("prompt_tokens") or 0),
                            tokens_out=int(usage.get("completion_tokens") or 0))
    if request.labels:
        label = match_label(text, request.labels)
        completion.text = label if label is not None else text
        completion.label_probs = label_probs_from_logprobs(api, choice, request.labels, label)
    elif request.want_confidence:
        completion.answer_prob = answer_prob_from_logprobs(api, choice)
    return completion


def answer_prob_from_logprobs(api: str, choice: dict[str, Any]) -> float | None:
    """Geometric mean probability of the generated tokens, from either API's logprobs shape."""
    logprobs = choice.get("logprobs") or {}
    values = [e.get("logprob") for e in logprobs.get("content") or []] if api == "chat" \
        else logprobs.get("token_logprobs") or []
    finite = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return math.exp(sum(finite) / len(finite)) if finite else None


def stream_piece(api: str, event: dict[str, Any]) -> tuple[str, str | None]:
    """The text one streamed chunk adds (empty for role-only and usage-only chunks) and its finish reason."""
    if isinstance(event.get("error"), dict | str):
        error = event["error"]
        raise ProviderError("stream_error", str(error.get("message", error) if isinstance(error, dict) else error))
    choices = event.get("choices") or []
    if not choices:
        return "", None
    choice = choices[0]
    text = (choice.get("delta") or {}).get("content") if api == "chat" else choice.get("text")
    return str(text or ""), choice.get("finish_reason")


def counted_usage(completion: Completion, prompt: str, pieces: int, finished: str | None) -> Completion:
    """Token counts for a stream that reported no usage (or ended without a finish reason): each streamed piece
    is one token (servers send a token a chunk), the prompt CHARS_PER_TOKEN characters a token. `extra` says
    the usage was counted, and that the answer never finished when so."""
    if not completion.tokens_out:
        completion.tokens_out = pieces
    if not completion.tokens_in:
        completion.tokens_in = max(1, math.ceil(len(prompt) / CHARS_PER_TOKEN))
    completion.extra["usage"] = "counted"
    if finished is None:
        completion.extra["finish_reason"] = None  # the body ended cleanly, but the answer may be cut short
    return completion


def label_probs_from_logprobs(api: str, choice: dict[str, Any], labels: tuple[str, ...],
                              chosen: str | None) -> dict[str, float] | None:
    """Label distribution from the first answer token's top logprobs; None when none were returned."""
    alternatives = first_token_alternatives(api, choice)
    if not alternatives:
        return None
    scores = dict.fromkeys(labels, 0.0)
    for token, logprob in alternatives.items():
        piece = token.strip().lower()
        if not piece:
            continue
        matches = [label for label in labels if label.lower().startswith(piece)]
        if len(matches) == 1:
            scores[matches[0]] += math.exp(logprob)
    if chosen is not None and scores[chosen] == 0:
        return None  # the answer's first token did not name a single label: probabilities would lie
    return normalize_probs(scores)


def first_token_alternatives(api: str, choice: dict[str, Any]) -> dict[str, float]:
    """{token: logprob} for the first non-blank generated token, from either API's logprobs shape."""
    logprobs = choice.get("logprobs") or {}
    if api == "chat":
        for entry in logprobs.get("content") or []:
            if entry.get("token", "").strip():
                return {alt["token"]: alt["logprob"] for alt in entry.get("top_logprobs") or []}
        return {}
    tokens = logprobs.get("tokens") or []
    for token, top in zip(tokens, logprobs.get("top_logprobs") or [], strict=False):
        if token.strip():
            return dict(top or {})
    return {}


class OpenAIProvider:
    """Calls one model on an OpenAI-compatible endpoint, or on any of its replicas (`base_urls`)."""

    def __init__(self, config: ModelConfig):
        if not config.urls:
            raise Unreachable(f"{config.name}: no base_url configured")
        self.name = config.name
        self.config = config
        self.remote_model = config.model or config.name.partition(":")[2]
        headers = {}
        key = os.environ.get(config.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        timeout = httpx.Timeout(config.timeout_s, connect=min(10.0, config.timeout_s))
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
        body = to_payload(self.remote_model, self.config.api, request)
        with self._slots:
            lease, data = self._post_with_retries(self._path, body, request.prompt)
            self.replicas.release(lease, "ok")
        return self._priced(from_response(self.config.api, data, request))

    def stream(self, request: Request) -> Generator[str, None, Completion]:
        """Text pieces as the endpoint streams them; returns the Completion (usage from the last chunk).
        Label sets are answered whole: their probabilities come from the logprobs of a complete answer."""
        if request.labels:
            return (yield from whole(self.complete(request)))
        body = {**to_payload(self.remote_model, self.config.api, request), "stream": True,
                "stream_options": {"include_usage": True}}
        pieces: list[str] = []
        usage: dict[str, Any] = {}
        finished: str | None = None
        with self._slots:
            lease, response = self._post_with_retries(self._path, body, request.prompt, stream=True)
            where = self._where(lease.replica.url)
            outcome: Outcome = "abandoned"  # unless the stream ends: the caller stopped reading
            try:
                for event in sse_data(response.iter_lines()):
                    usage = event.get("usage") or usage
                    piece, finish = stream_piece(self.config.api, event)
                    finished = finished or finish
                    if piece:
                        pieces.append(piece)
                        yield piece
                outcome = "ok" if finished is not None else "fault"
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
        completion = Completion(text="".join(pieces), tokens_in=int(usage.get("prompt_tokens") or 0),
                                tokens_out=int(usage.get("completion_tokens") or 0))
        if not usage or finished is None:  # the tokens were still generated, so paid for: count them
            completion = counted_usage(completion, request.prompt, len(pieces), finished)
        return self._priced(completion)

    @property
    def _path(self) -> str:
        return "/chat/completions" if self.config.api == "chat" else "/completions"

    def _where(self, url: str) -> str:
        """The model's name in an error, with the replica's (masked) URL when there are several."""
        return self.name if len(self.clients) == 1 else f"{self.name} at {masked_url(url)}"

    def _priced(self, completion: Completion) -> Completion:
        completion.cost_usd = (completion.tokens_in * self.config.usd_per_1m_input
                               + completion.tokens_out * self.config.usd_per_1m_output) / 1e6
        return completion

    def _post_with_retries(self, path: str, body: dict[str, Any], prompt: str,
                           stream: bool = False) -> tuple[Lease, Any]:
        """The JSON answer, or with `stream` the open 200 response (the caller reads and closes it), with the
        lease of the replica that gave it (the caller releases it). A connection that never opened moves once,
        at once, to another replica in rotation (nothing was sent); other retryable failures wait and retry,
        on another replica when there is one."""
        failed_on: list[Replica] = []
        moved = False
        attempt = 0
        while True:
            lease = self.replicas.acquire(prompt, avoid=failed_on)
            try:
                return lease, self._post_once(lease.replica.url, path, body, stream)
            except _Retryable as retry:
                self.replicas.release(lease, outcome_of(retry.error.kind))
                last, wait = retry.error, retry.wait
                failed_on.append(lease.replica)
                if retry.unsent and not moved and self.replicas.has_spare(failed_on):
                    moved = True
                    continue
            except ProviderError as error:
                self.replicas.release(lease, outcome_of(error.kind))
                raise
            except BaseException:
                self.replicas.release(lease, "abandoned")
                raise
            if attempt >= self.config.max_retries:
                raise last
            time.sleep(wait if wait is not None else backoff_seconds(attempt))
            attempt += 1

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
        if response.status_code == 200:
            if stream:
                return response
            try:
                return dict(response.json())
            except ValueError:
                raise _Retryable(ProviderError("bad_response", f"{where}: response is not JSON: "
                                                               f"{response.text[:120]!r}")) from None
        if stream:
            response.read()
            response.close()
        status = response.status_code
        error = ProviderError("rate_limited" if status == 429 else f"http_{status}",
                              f"{where}: HTTP {status}: {response.text[:200]}")
        if status in RETRYABLE_STATUS:
            raise _Retryable(error, retry_after_seconds(response.headers.get("retry-after")))
        raise error

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
        for an answer returns at once) and close the HTTP connection pools."""
        self.replicas.close()
        for sockets in self._sockets:
            sockets.abort()
        for client in [*self.clients.values(), self._probe_client]:
            client.close()


class _Retryable(Exception):
    """A failed attempt worth retrying, with the server's Retry-After if it gave one; `unsent`: the connection
    never opened, so the replica never saw the request."""

    def __init__(self, error: ProviderError, wait: float | None = None, unsent: bool = False):
        super().__init__(str(error))
        self.error, self.wait, self.unsent = error, wait, unsent


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
