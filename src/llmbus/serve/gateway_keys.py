"""Who may use the gateway, how often, and for how much: API keys (`KeyConfig`) and the estimate of a request's
cost that its key's budget holds while it runs (`estimate_cost`, an upper bound).

The keys' state (recent requests, spend, holds) is kept in the store and enforced by `limits.Keys`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from llmbus.errors import SpecError
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
