"""Who may use the gateway, how often, and for how much: API keys, rate limits and budgets.

A key's budget holds each admitted request's estimated cost (`estimate_cost`, an upper bound) until its call is
logged, then counts the real cost instead, so concurrent requests cannot overspend it by more than the request
admitted last. Spend per key comes from the store's `key_spend` table at start (so it survives a restart) and is
written there with each logged call (`Store.record_call(..., spend_key=...)`).
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from llmbus.errors import GatewayError, SpecError
from llmbus.providers import Request
from llmbus.providers.config import ModelConfig, resolve_model
from llmbus.providers.prices import Price, Usage, combined, price_of


class KeyConfig(BaseModel):
    """An API key (literal, or `env:NAME`) with its limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    name: str
    requests_per_minute: int | None = Field(default=None, ge=1)
    budget_usd: float | None = Field(default=None, ge=0)

    def secret(self) -> str:
        """The key's value, read from the environment for `env:NAME`."""
        return secret_value(self.key)


def secret_value(ref: str) -> str:
    """A literal secret, or for `env:NAME` the environment variable's value ('' when it is unset)."""
    return os.environ.get(ref[4:], "") if ref.startswith("env:") else ref


def check_secrets(where: str | Path, secrets: list[tuple[str, str]]) -> None:
    """Each (field, secret reference) must have a value: an unset `env:NAME` would quietly lock a team out, or
    with no key left, open the gateway to everyone."""
    for field_name, ref in secrets:
        if not secret_value(ref):
            reason = f"environment variable {ref[4:]} is not set" if ref.startswith("env:") else "it is empty"
            raise SpecError(f"{where}: {field_name}: {reason}")


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer TOKEN` header (any case of the scheme; a bare token as is)."""
    header = (header or "").strip()
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else header


# A prompt has at most one token per UTF-8 byte (byte-level BPE), plus the few of a chat template.
PROMPT_OVERHEAD_TOKENS = 16
# A request without max_tokens may run to the model's limit: held at this many output tokens per choice.
UNSET_MAX_TOKENS = 4096


def estimate_cost(config: ModelConfig, request: Request, timeout_s: float, configs: dict[str, ModelConfig]) -> float:
    """An upper estimate of one call's cost: token-priced models at one input token per prompt (and tool
    schema) byte and `max_tokens` out for each of `n` choices; CPU-priced ones (local, encoder) at all their
    threads busy for the route's timeout; a cascade at both its models."""
    if config.parts():
        return sum(estimate_cost(resolve_model(ref, configs), request, timeout_s, configs) for ref in config.parts())
    price = price_of(config)
    if not config.cpu_priced:
        tools = len(json.dumps(request.tools).encode()) if request.tools else 0
        tokens_in = len(request.prompt.encode()) + tools + PROMPT_OVERHEAD_TOKENS
        tokens_out = (request.max_tokens or UNSET_MAX_TOKENS) * (request.n or 1)
        # an unpriced model holds nothing: a budget on one starts only with `budget_unpriced: allow`
        return price.cost(Usage(tokens_in=tokens_in, tokens_out=tokens_out)) or 0.0
    return price.cost(Usage(cpu_seconds=timeout_s * config.cpu_threads)) or 0.0


def check_budgets_priced(keys: list[KeyConfig], models: dict[str, ModelConfig], configs: dict[str, ModelConfig],
                         where: str | Path) -> None:
    """A budget on a key that can reach a model without a price would never trip (its calls cost nothing we
    know): refuse to start, naming the key and the model (serve.yaml's `budget_unpriced: allow` skips this)."""
    budgeted = [(i, key) for i, key in enumerate(keys) if key.budget_usd is not None]
    if not budgeted:
        return
    unpriced = [ref for ref, config in models.items()
                if not price_of(config, lambda r: resolve_model(r, configs)).known]
    if unpriced:
        i, key = budgeted[0]
        raise SpecError(f"{where}: keys[{i}] ({key.name}): budget_usd: {unpriced[0]} has no price, so the budget "
                        f"could not count its calls: set usd_per_1m_input and usd_per_1m_output under "
                        f"models.{unpriced[0]} in llmbus.yaml, or `budget_unpriced: allow` in serve.yaml")


def route_price(name: str, refs: list[str], models: dict[str, ModelConfig],
                configs: dict[str, ModelConfig]) -> Price:
    """The price stored with a served model's run: its model's, combined with its fallbacks' when it has any."""
    prices = [price_of(models[ref], lambda r: resolve_model(r, configs)) for ref in refs]
    return prices[0] if len(prices) == 1 else combined(name, prices)


class Keys:
    """The keys of a running gateway with their recent requests, spend and holds; thread-safe."""

    def __init__(self, keys: list[KeyConfig], spent: dict[str, float]):
        self.by_secret = {k.secret(): k for k in keys}
        self._recent: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._spent = {k.name: spent.get(k.name, 0.0) for k in keys}  # logged
        self._held = {k.name: 0.0 for k in keys}  # estimates of the requests in flight
        self._lock = threading.Lock()

    def caller(self, header: str | None) -> KeyConfig | None:
        """The key an Authorization header names (None when the gateway has no keys); 401 for any other."""
        if not self.by_secret:
            return None
        key = self.by_secret.get(bearer_token(header))
        if key is None:
            raise GatewayError(401, "missing or unknown API key")
        return key

    def authorize(self, header: str | None) -> KeyConfig | None:
        """The caller's key (None when the gateway has no keys); enforces its rate limit and budget."""
        key = self.caller(header)
        if key is None:
            return None
        with self._lock:
            self._check_budget(key)
            if key.requests_per_minute is not None:
                window = self._recent[key.name]
                cutoff = time.monotonic() - 60
                while window and window[0] < cutoff:
                    window.popleft()
                if len(window) >= key.requests_per_minute:
                    wait = max(1, int(window[0] - cutoff) + 1)
                    raise GatewayError(429, f"rate limit of {key.requests_per_minute}/min for key {key.name}",
                                       {"Retry-After": str(wait)})
                window.append(time.monotonic())
        return key

    def hold(self, key: KeyConfig | None, estimate_usd: float) -> float:
        """Hold a request's estimated cost against its key's budget (429 once the spent and held amounts reach
        the budget); returns the amount held, to `release` once the call's real cost is counted."""
        if key is None or key.budget_usd is None:
            return 0.0
        with self._lock:
            self._check_budget(key)
            self._held[key.name] += estimate_usd
        return estimate_usd

    def spend(self, key: KeyConfig | None, cost_usd: float) -> None:
        """Count a logged call's real cost."""
        if key is not None:
            with self._lock:
                self._spent[key.name] += cost_usd

    def release(self, key: KeyConfig | None, held_usd: float) -> None:
        """Drop a request's hold (after `spend`, so the budget never looks emptier than it is)."""
        if key is not None and held_usd:
            with self._lock:
                self._held[key.name] -= held_usd

    def _check_budget(self, key: KeyConfig) -> None:
        """Called under the lock."""
        spent, held = self._spent[key.name], self._held[key.name]
        if key.budget_usd is not None and spent + held >= key.budget_usd:
            in_flight = f", ${held:.4g} more held by requests in flight" if held > 0 else ""
            raise GatewayError(429, f"budget of ${key.budget_usd:g} for key {key.name} is spent (${spent:.4g}"
                                    f"{in_flight})", kind="budget_exceeded")
