"""Per-run figures from the call log: quality, errors, tokens, cost, latency, throughput, and what a given
monthly traffic would cost."""

from __future__ import annotations

import json
import math
from array import array
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from llmbus.providers.local import draft_stats
from llmbus.providers.prices import Price, unknown_price_warning
from llmbus.store import Store
from llmbus.task import metrics

SECONDS_PER_MONTH = 30 * 24 * 3600


@dataclass
class RunSummary:
    """One row of `llmbus runs`."""

    run_id: str
    task: str
    model: str
    spec_version: str
    status: str
    created_at: str
    items: int
    planned: int
    errors: int
    cache_hits: int
    metric: str
    value: float
    tokens_in: int
    tokens_out: int
    cost_usd: float
    cost_per_1k: float
    latency_p50_s: float
    latency_p95_s: float
    items_per_s: float
    draft_acceptance: float | None = None  # speculative decoding: accepted / drafted tokens (None: no drafts)
    usd_per_month: float | None = None
    needed_items_per_s: float | None = None
    replicas_needed: int | None = None
    warnings: list[str] = field(default_factory=list)  # what makes `value` weak (labels never expected…)
    tokens_cached: int = 0  # of tokens_in, read from the backend's prompt cache
    tokens_reasoning: int = 0  # of tokens_out, hidden reasoning tokens
    price_known: bool = True  # False: the model has no price, and every cost figure is NaN (shown as ?)
    price_source: str = ""  # where the run's price came from (providers/prices.py)

    @property
    def price_warning(self) -> str | None:
        """The one warning line for a run whose model has no price."""
        return None if self.price_known else unknown_price_warning(self.model)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json output."""
        return asdict(self)


def summarize(store: Store, run: dict[str, Any], traffic: int | None = None) -> RunSummary:
    """Figures for one run, streaming its calls (flat memory)."""
    labels = (json.loads(run["spec_json"]).get("output") or {}).get("labels") or []
    tally = metrics.Tally(run["metric"], labels) if run["metric"] != "none" else None
    n = with_expected = 0
    latencies = array("d")  # 8 bytes an item: the percentiles need them all
    errors = hits = tokens_in = tokens_out = cached = reasoning = 0
    cost = 0.0
    drafts: list[dict[str, Any]] = []  # only calls that drafted tokens (speculative decoding)
    for call in store.iter_calls(run["id"]):
        if call["meta"] and "draft_tokens" in call["meta"]:
            drafts.append(call["meta"])
        failed = call["error_kind"] is not None
        errors += failed
        hits += bool(call["cache_hit"])
        n += 1
        with_expected += call["expected"] is not None
        if tally is not None:
            tally.add(None if failed else call["parsed"], call["expected"], call["score"])  # a custom metric's
            # score was taken with the item at run time
        if not call["cache_hit"]:
            latencies.append(call["latency_s"])
        tokens_in += call["tokens_in"]
        tokens_out += call["tokens_out"]
        cached += call.get("tokens_cached") or 0
        reasoning += call.get("tokens_reasoning") or 0
        cost += call["cost_usd"]
    fresh = n - hits
    price = stored_price(run)
    known = price is None or price.known
    cost = cost if known else float("nan")  # never $0 for a model nobody priced
    p50, p95 = latency_percentiles(latencies)
    summary = RunSummary(
        run_id=run["id"], task=run["task"], model=run["model"], spec_version=run["spec_version"],
        status=run["status"], created_at=str(run["created_at"])[:19], items=n, planned=run["n_planned"],
        errors=errors, cache_hits=hits, metric=run["metric"], value=tally.value() if tally else float("nan"),
        tokens_in=tokens_in, tokens_out=tokens_out, cost_usd=cost,
        cost_per_1k=cost_per_1k(cost, fresh), latency_p50_s=p50, latency_p95_s=p95,
        items_per_s=n / run["wall_s"] if run["wall_s"] else float("nan"),
        draft_acceptance=draft_stats(drafts).acceptance_rate, tokens_cached=cached, tokens_reasoning=reasoning,
        price_known=known, price_source=price.describe() if price else "not recorded (run made before 015)",
    )
    if tally is not None and labels and with_expected:  # judge and gateway runs have no expected answers
        found = metrics.coverage_warning(labels, tally.expected_counts(), f"its {n} items' expected answers")
        summary.warnings += [found] if found else []
    if traffic is not None:
        project(summary, traffic)
    return summary


def stored_price(run: dict[str, Any]) -> Price | None:
    """The price stored with a run (None for runs made before prices were stored, or of no model)."""
    return Price.from_json(run["price_json"]) if run.get("price_json") else None


@dataclass
class Spend:
    """What some runs cost: the priced part, and the models whose calls have no price."""

    usd: float
    calls: int
    unknown: list[str] = field(default_factory=list)  # models without a price

    def amount(self) -> str:
        """`$0.001234`, or `?` naming the models without a price."""
        if not self.unknown:
            return dollars(self.usd)
        priced = f"{dollars(self.usd)} priced, " if self.usd else ""
        return f"? ({priced}no price for {', '.join(self.unknown)})"

    def line(self) -> str:
        """`spent $0.0123 on 40 calls`, or with unpriced models `spent ? …` naming them."""
        if not self.unknown:
            return f"spent {dollars(self.usd)} on {self.calls} calls"
        priced = f"{dollars(self.usd)} priced, " if self.usd else ""
        return f"spent ? on {self.calls} calls ({priced}no price for {', '.join(self.unknown)})"


def dollars(usd: float) -> str:
    """An amount for a sentence: cents for dollars and up, six decimals below a dollar (calls cost fractions
    of a cent)."""
    return f"${usd:,.2f}" if usd >= 1 else f"${usd:.6f}"


def spend(store: Store, run_ids: list[str]) -> Spend:
    """What the calls of these runs cost, priced as each run's stored price says (cache hits cost nothing)."""
    total, calls, unknown = 0.0, 0, []
    for run_id in dict.fromkeys(run_ids):
        run = store.get_run(run_id)
        price = stored_price(run)
        run_calls = [c for c in store.iter_calls(run["id"]) if not c["cache_hit"]]
        calls += len(run_calls)
        if price is not None and not price.known:
            unknown += [run["model"]] if run["model"] not in unknown else []
            continue
        total += sum(c["cost_usd"] for c in run_calls)
    return Spend(total, calls, unknown)


def cost_per_1k(cost_usd: float, fresh: int) -> float:
    """USD per 1,000 items the model answered (cache hits cost nothing and are left out)."""
    return 1000 * cost_usd / fresh if fresh else float("nan")


def latency_percentiles(latencies: Any) -> tuple[float, float]:
    """(p50, p95) seconds of the fresh calls' latencies (cache hits left out by the caller)."""
    if not len(latencies):
        return float("nan"), float("nan")
    return float(np.percentile(latencies, 50)), float(np.percentile(latencies, 95))


def project(summary: RunSummary, traffic: int) -> None:
    """Fill in $/month and the throughput `traffic` items per month needs (and replicas of this setup)."""
    summary.usd_per_month = summary.cost_per_1k * traffic / 1000
    summary.needed_items_per_s = traffic / SECONDS_PER_MONTH
    if summary.items_per_s and math.isfinite(summary.items_per_s):
        summary.replicas_needed = max(1, math.ceil(summary.needed_items_per_s / summary.items_per_s))
