"""What a call costs, for every provider and the gateway's budget estimate: one price per model, with its source.

A price comes from, in order:
- `llmbus.yaml` (`usd_per_1m_input`, `_output`, and optionally `_cached_input`, `_reasoning`): when it gives
  any price, it replaces the table's,
- the offline price table of the pinned `genai-prices` package (its bundled data, read in-process; its
  auto-update, which would fetch from the network, is never started): providers, models, dated price changes,
  cached-input and reasoning-token prices,
- for CPU models (`local:`, `encoder:`, `head:`), measured CPU-seconds × `usd_per_hour` (configured, or the default).

A remote model found in neither is **unknown**: its calls cost `None`, shown as `?` with one warning naming
the model and how to set its price — never $0. Token kinds follow OpenAI's usage: `tokens_in` counts every
prompt token, `tokens_cached` those of them read from the provider's prompt cache; `tokens_out` counts every
completion token, `tokens_reasoning` the hidden reasoning ones among them. Each kind is priced at its own rate
(cached input falls back to the input price, reasoning to the output price, when neither source has one).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any, Literal

from llmbus.providers.base import Completion
from llmbus.providers.config import ModelConfig, resolve_model
from llmbus.settings import USD_PER_HOUR

TABLE = "genai-prices"
# parts: a model that calls others (a cascade, a gateway route with fallbacks) whose calls are priced by them
Basis = Literal["tokens", "cpu", "parts", "unknown"]
# genai-prices' name of each token kind's price (per 1M tokens) in its ModelPrice
TABLE_KEYS = {"input": "input_mtok", "cached_input": "cache_read_mtok", "output": "output_mtok",
              "reasoning": "output_reasoning_mtok"}
CONFIG_KEYS = {"input": "usd_per_1m_input", "cached_input": "usd_per_1m_cached_input",
               "output": "usd_per_1m_output", "reasoning": "usd_per_1m_reasoning"}


@dataclass(frozen=True)
class Usage:
    """What one call (or many, summed) used: token kinds and measured CPU-seconds."""

    tokens_in: int = 0  # every prompt token, cached ones included (OpenAI's prompt_tokens)
    tokens_out: int = 0  # every completion token, reasoning ones included (OpenAI's completion_tokens)
    tokens_cached: int = 0  # prompt tokens read from the provider's prompt cache
    tokens_reasoning: int = 0  # hidden reasoning tokens
    cpu_seconds: float | None = None


@dataclass(frozen=True)
class Price:
    """A model's price and where it came from (stored with each run as JSON)."""

    model: str
    basis: Basis
    source: str  # "genai-prices 0.2.5: openai/gpt-4o-mini", "llmbus.yaml:7", "default usd_per_hour"…
    input: float | None = None  # USD per 1M tokens of each kind
    cached_input: float | None = None
    output: float | None = None
    reasoning: float | None = None
    usd_per_hour: float | None = None  # cpu basis
    # (provider id, model id) in the table when every token price is the table's: the table's own calculation
    # then prices each call, so tiered and dated prices apply exactly
    table: tuple[str, str] | None = None

    @property
    def known(self) -> bool:
        """Whether calls of this model can be priced."""
        return self.basis != "unknown"

    def cost(self, usage: Usage) -> float | None:
        """USD for `usage` (None when the price is unknown)."""
        if self.basis == "unknown":
            return None
        if self.basis == "parts":
            raise ValueError(f"{self.model}: a combined price is applied by each of its models")
        if self.basis == "cpu":
            return (usage.cpu_seconds or 0.0) * (self.usd_per_hour or 0.0) / 3600
        if self.table is not None:
            return table_cost(self.table, usage)
        cached = min(usage.tokens_cached, usage.tokens_in)
        reasoning = min(usage.tokens_reasoning, usage.tokens_out)
        return ((usage.tokens_in - cached) * _rate(self.input) + cached * _rate(self.cached_input, self.input)
                + (usage.tokens_out - reasoning) * _rate(self.output)
                + reasoning * _rate(self.reasoning, self.output)) / 1e6

    def describe(self) -> str:
        """The rates and their source in one phrase, e.g. `$0.15 in / $0.075 cached / $0.6 out per 1M tokens
        (genai-prices 0.2.5: openai/gpt-4o-mini)`."""
        if self.basis in ("unknown", "parts"):
            return f"{'unknown' if self.basis == 'unknown' else 'per model'} ({self.source})"
        if self.basis == "cpu":
            return f"${self.usd_per_hour:g}/CPU-hour × measured CPU-seconds ({self.source})"
        parts = [f"${_rate(self.input):g} in"]
        if self.cached_input is not None and self.cached_input != self.input:
            parts.append(f"${self.cached_input:g} cached")
        parts.append(f"${_rate(self.output):g} out")
        if self.reasoning is not None and self.reasoning != self.output:
            parts.append(f"${self.reasoning:g} reasoning")
        return f"{' / '.join(parts)} per 1M tokens ({self.source})"

    def to_json(self) -> str:
        """The price as the runs table keeps it."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Price:
        """A price stored by `to_json`."""
        data = json.loads(text)
        table = data.pop("table", None)
        return cls(**data, table=tuple(table) if table else None)


def _rate(value: float | None, fallback: float | None = None) -> float:
    return value if value is not None else fallback if fallback is not None else 0.0


def table_version() -> str:
    """`genai-prices X.Y.Z`: the pinned table's name and version."""
    import genai_prices

    return f"{TABLE} {genai_prices.__version__}"


def table_lookup(model_ref: str, base_urls: tuple[str, ...] = ()) -> tuple[Any, Any] | None:
    """(provider, model) of the price table for a model name: the provider whose API URL an endpoint matches,
    else whichever provider the table matches the name to (a self-hosted copy of a listed model); None when the
    table does not list it."""
    from genai_prices import data_snapshot

    snapshot = data_snapshot.get_snapshot()  # the bundled data: never the network
    for url in base_urls:
        try:
            provider = snapshot.find_provider(None, None, url)
        except LookupError:
            continue
        try:
            return snapshot.find_provider_model(model_ref, provider, None, None)
        except LookupError:
            return None
    try:
        return snapshot.find_provider_model(model_ref, None, None, None)
    except LookupError:
        return None


def table_cost(table: tuple[str, str], usage: Usage) -> float:
    """USD for `usage` by the table's own calculation (tiers and dated prices included)."""
    from genai_prices import Usage as TableUsage
    from genai_prices import calc_price

    cached = min(usage.tokens_cached, usage.tokens_in)
    reasoning = min(usage.tokens_reasoning, usage.tokens_out)
    kinds: dict[str, int] = {"input_tokens": usage.tokens_in, "output_tokens": usage.tokens_out}
    if cached:
        kinds["cache_read_tokens"] = cached
    if reasoning:
        kinds["output_reasoning_tokens"] = reasoning
    provider, model = table
    return float(calc_price(TableUsage(**kinds), model_ref=model, provider_id=provider).total_price)


def table_rates(model: Any) -> dict[str, float | None]:
    """The table's current price per 1M tokens of each kind (a tiered price: its base rate)."""
    from datetime import UTC, datetime

    prices = model.get_prices(datetime.now(tz=UTC))
    rates: dict[str, float | None] = {}
    for kind, key in TABLE_KEYS.items():
        value = getattr(prices, key, None)
        value = getattr(value, "base", value)  # TieredPrices → its base rate
        rates[kind] = float(value) if isinstance(value, Decimal | int | float) else None
    return rates


def price_of(config: ModelConfig, resolve: Any = None) -> Price:
    """The price of a configured model. `resolve` maps a model reference to its config (for a cascade's
    student and teacher; default: llmbus.yaml)."""
    if config.parts():
        resolve = resolve or resolve_model
        return combined(config.name, [price_of(resolve(ref), resolve) for ref in config.parts()])
    if config.cpu_priced:
        source = f"{config.price_source} usd_per_hour" if config.price_source else f"default usd_per_hour " \
                                                                                      f"{USD_PER_HOUR:g}"
        return Price(config.name, "cpu", source, usd_per_hour=config.usd_per_hour)
    return token_price(config)


def token_price(config: ModelConfig) -> Price:
    """A remote model's price: llmbus.yaml's when it sets any (cached input defaulting to its input price,
    reasoning to its output price), else the table's; unknown when neither has input and output prices."""
    configured = {kind: getattr(config, key) for kind, key in CONFIG_KEYS.items()}
    if any(value is not None for value in configured.values()):
        missing = [CONFIG_KEYS[k] for k in ("input", "output") if configured[k] is None]
        if missing:
            return Price(config.name, "unknown", f"{config.price_source}: {' and '.join(missing)} not set")
        return Price(config.name, "tokens", str(config.price_source), **configured)
    found = table_lookup(config.remote_model, config.urls)
    rates = table_rates(found[1]) if found else {}
    if not found or rates["input"] is None or rates["output"] is None:
        return Price(config.name, "unknown", f"not in {table_version()}, and llmbus.yaml sets no price")
    provider, model = found
    return Price(config.name, "tokens", f"{table_version()}: {provider.id}/{model.id}", **rates,
                 table=(provider.id, model.id))


def combined(name: str, parts: list[Price]) -> Price:
    """One price for a model that calls several (a cascade, a gateway route with fallbacks): known only when
    every part is; its source names each part's."""
    unknown = [p for p in parts if not p.known]
    source = "; ".join(f"{p.model}: {p.source}" for p in parts)
    if unknown or not parts:
        return Price(name, "unknown", source or "no models")
    return Price(name, "parts", source)


def price_for(ref: str) -> Price | None:
    """The price of a model reference, or None when the reference names no model llmbus can resolve (a
    gateway's refusal run, a flow)."""
    from llmbus.errors import LlmbusError

    try:
        return price_of(resolve_model(ref))
    except LlmbusError:
        return None


def unknown_price_warning(model: str) -> str:
    """The one warning line for a model without a price: which model, and how to set it."""
    return (f"no price for {model}: its cost shows as ? (set usd_per_1m_input and usd_per_1m_output under "
            f"models.{model} in llmbus.yaml)")


def usage_of(completion: Completion) -> Usage:
    """The usage a completion reports."""
    return Usage(tokens_in=completion.tokens_in, tokens_out=completion.tokens_out,
                 tokens_cached=completion.tokens_cached, tokens_reasoning=completion.tokens_reasoning,
                 cpu_seconds=completion.cpu_seconds)
