"""`llmbus report TASK`: one self-contained HTML page comparing teacher, student, cascade and cached answers —
quality with 95% intervals, p50/p95 latency, cost per 1k, $/month at a traffic — with a Pareto plot, next to
advise's cheap baselines scored on the same items, the break-even table at that traffic with a cost-vs-volume
plot (crossovers marked), and one verdict: the cheapest system within the best one's interval, baseline or not.
"""

from __future__ import annotations

import base64
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmbus.advise.advise import advise
from llmbus.advise.breakeven import ERROR_COST, HORIZON_MONTHS, LABEL_COST, Assumptions, dollars
from llmbus.distill.decision import Economics, baseline_systems, economics, is_lora_student, row_kind
from llmbus.embed import StageCallback
from llmbus.errors import LlmbusError
from llmbus.pages import environment
from llmbus.providers.prices import unknown_price_warning
from llmbus.quality.evaluate import evaluate
from llmbus.run.summary import RunSummary, summarize
from llmbus.serve.report_plots import costs_png, pareto_png
from llmbus.settings import USD_PER_HOUR
from llmbus.store import Store
from llmbus.store.traffic import is_traffic_run
from llmbus.task.spec import TaskSpec

TEMPLATES = Path(__file__).parent / "templates"
__all__ = ["Report", "ReportRow", "build_report", "is_lora_student", "mark_pareto", "render_html", "row_kind"]


@dataclass
class ReportRow:
    """One configuration of the task (one run), or one of advise's baselines."""

    kind: str  # teacher | student | cascade | cached | baseline
    run_id: str
    model: str
    n: int
    quality: float
    quality_lo: float
    quality_hi: float
    p50_ms: float
    p95_ms: float
    usd_per_1k: float
    usd_per_month: float
    escalation_rate: float | None = None
    cache_hit_rate: float = 0.0
    draft_acceptance: float | None = None  # speculative decoding: accepted / drafted tokens
    pareto: bool = False
    warnings: list[str] = field(default_factory=list)  # what makes this row's quality weak
    price_known: bool = True  # False: the model has no price (its costs are NaN, shown as ?)
    price_source: str = ""


@dataclass
class Report:
    """All rows of a task, the baselines, the break-even and the verdict."""

    task: str
    metric: str
    traffic: int
    rows: list[ReportRow] = field(default_factory=list)
    headline: str = ""  # the verdict: the cheapest system within the best one's interval
    plot_png_base64: str = ""
    baselines: list[ReportRow] = field(default_factory=list)  # advise's, scored on the items the rows answered
    baseline_note: str = ""  # why there are none, when there are none
    economics: Economics | None = None  # the break-even at `traffic` items a month
    costs_png_base64: str = ""

    @property
    def warnings(self) -> list[str]:
        """Every row's warnings, each naming its run, then one line per model without a price."""
        found = [f"{row.kind} run {row.run_id}: {w}" for row in self.rows for w in row.warnings]
        return found + list(dict.fromkeys(unknown_price_warning(r.model) for r in self.rows if not r.price_known))

    @property
    def speculative(self) -> bool:
        """Whether any row's model drafted tokens (the page then shows their acceptance rate)."""
        return any(row.draft_acceptance is not None for row in self.rows)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json (without the images)."""
        data = asdict(self)
        data.pop("plot_png_base64")
        data.pop("costs_png_base64")
        data["economics"] = self.economics.as_dict() if self.economics else None
        return data


def build_report(spec: TaskSpec, store: Store, traffic: int = 1_000_000, run_ids: list[str] | None = None, *,
                 error_cost: float = ERROR_COST, label_cost: float = LABEL_COST, horizon: float = HORIZON_MONTHS,
                 usd_per_hour: float = USD_PER_HOUR, progress: StageCallback | None = None) -> Report:
    """Rows for the given runs, or the latest run of each kind of the task's current spec version; the baselines
    on the same items; the Pareto front, the break-even at `traffic` items a month, and the verdict."""
    report = Report(task=spec.name, metric=spec.main_metric, traffic=traffic)
    picked = pick_runs(spec, store, run_ids)
    for done, (run, summary) in enumerate(picked):
        if progress:
            progress(f"evaluating {len(picked)} runs (bootstrap intervals)", done, len(picked))
        report.rows.append(run_row(spec, store, run, summary, traffic))
    if progress:
        progress(f"evaluating {len(picked)} runs (bootstrap intervals)", len(picked), len(picked))
    mark_pareto(report.rows)
    measured = [run for (run, _), row in zip(picked, report.rows, strict=True) if row.kind != "cached"]
    items = {c["item_id"] for run in measured for c in store.iter_calls(run["id"])}
    assumptions = Assumptions(traffic, error_cost, label_cost, horizon)
    try:
        advice = advise(spec, None, usd_per_hour, progress, only=items) if items else None
    except LlmbusError as exc:  # e.g. a pool with one label: the page says why there are no baselines
        advice, report.baseline_note = None, f"baselines not scored: {exc}"
    if advice is not None:
        report.economics = economics(spec, store, advice, assumptions, measured, usd_per_hour=usd_per_hour)
        report.baselines = baseline_rows(spec, advice, label_cost, usd_per_hour, traffic)
        mark_pareto([*report.rows, *report.baselines])
    elif not report.baseline_note:
        report.baseline_note = "baselines not scored: no run answered items of the eval split"
    report.headline = verdict(report)
    if report.rows:
        report.plot_png_base64 = base64.b64encode(pareto_png(report)).decode()
    if report.economics is not None:
        report.costs_png_base64 = base64.b64encode(costs_png(report.economics, spec.name)).decode()
    return report


def run_row(spec: TaskSpec, store: Store, run: dict[str, Any], summary: RunSummary, traffic: int) -> ReportRow:
    """One run's row: quality with its interval, latency, cost (NaN when unpriced), escalations, cache hits."""
    evaluation = evaluate(store, run["id"], rounds=500)
    interval = evaluation.values[spec.main_metric]
    calls = list(store.iter_calls(run["id"]))
    routes = [(c["meta"] or {}).get("route") for c in calls]
    escalated = sum(r == "teacher" for r in routes) / len(calls) if run["model"].startswith("cascade:") else None
    hit_rate = summary.cache_hits / summary.items
    # all cached: nothing paid; no price: unknown, never 0
    cost = summary.cost_per_1k if math.isfinite(summary.cost_per_1k) else 0.0 if summary.price_known else math.nan
    return ReportRow(
        kind=row_kind(run["model"], hit_rate), run_id=run["id"], model=run["model"], n=summary.items,
        quality=interval.value, quality_lo=interval.lo, quality_hi=interval.hi,
        p50_ms=1000 * _latency_s(calls, 50), p95_ms=1000 * _latency_s(calls, 95),
        usd_per_1k=cost, usd_per_month=cost * traffic / 1000, escalation_rate=escalated,
        cache_hit_rate=hit_rate, draft_acceptance=summary.draft_acceptance, warnings=evaluation.warnings,
        price_known=summary.price_known, price_source=summary.price_source)


def baseline_rows(spec: TaskSpec, advice: Any, label_cost: float, usd_per_hour: float,
                  traffic: int) -> list[ReportRow]:
    """Advise's baselines as report rows, scored (with a bootstrap interval) on the items the runs answered."""
    latency = {row.system: row.latency_ms for row in advice.rows}
    rows = []
    for system in baseline_systems(spec, advice, label_cost, usd_per_hour):
        per_1k = 1000 * (system.usd_per_item or 0.0)
        rows.append(ReportRow("baseline", "", system.name, system.n_items, system.quality, system.quality_lo,
                              system.quality_hi, latency[system.name], math.nan, per_1k, per_1k * traffic / 1000,
                              price_source=f"measured CPU-seconds × ${usd_per_hour:g}/hour"))
    return rows


def pick_runs(spec: TaskSpec, store: Store, run_ids: list[str] | None) -> list[tuple[dict[str, Any], RunSummary]]:
    """The runs to compare with their summaries: as given, else the newest non-empty run of each kind (same
    spec version)."""
    if run_ids:
        picked = [(run, summarize(store, run)) for run in map(store.get_run, run_ids)]
        empty = [run["id"] for run, summary in picked if not summary.items]
        if empty:
            raise LlmbusError(f"run {empty[0]} has no answers to report")
        return picked
    latest: dict[str, tuple[dict[str, Any], RunSummary]] = {}
    for run in store.list_runs(spec.name):  # oldest first: later runs replace earlier ones
        if run["spec_version"] != spec.version or is_traffic_run(run):  # a replay is scored on traffic, not gold
            continue
        summary = summarize(store, run)
        if summary.items:
            latest[row_kind(run["model"], summary.cache_hits / summary.items)] = (run, summary)
    return list(latest.values())


def _latency_s(calls: list[dict[str, Any]], percentile: float) -> float:
    """Latency percentile in seconds over every call (cache hits included: that is what users see)."""
    import numpy as np

    values = [c["latency_s"] for c in calls]
    return float(np.percentile(values, percentile)) if values else float("nan")


def mark_pareto(rows: list[ReportRow]) -> None:
    """Flag the rows no other row beats on both quality and cost."""
    for row in rows:
        row.pareto = not any(o.quality >= row.quality and o.usd_per_1k <= row.usd_per_1k and
                             (o.quality > row.quality or o.usd_per_1k < row.usd_per_1k) for o in rows)


def verdict(report: Report) -> str:
    """One sentence: the cheapest system whose quality is within the best one's 95% interval, baselines
    included. Cached rows are left out (their saving depends on how often inputs repeat, not on a model);
    systems whose intervals overlap the best's are said to be indistinguishable on these items, never ranked."""
    systems = [r for r in [*report.rows, *report.baselines] if r.kind != "cached" and math.isfinite(r.quality)]
    if not systems:
        return "Nothing measured yet: run the task on your strongest model first (llmbus run)."
    best = max(systems, key=lambda r: r.quality)
    within = [r for r in systems if r.quality >= best.quality_lo]
    overlapping = [r for r in systems if r is not best and r.quality_hi >= best.quality_lo]
    priced = [r for r in within if r.price_known and math.isfinite(r.usd_per_1k)]
    month = f"a month at {report.traffic:,} items"
    if not priced:
        return (f"{_name(best)} has the best {report.metric} ({_interval(best)}), but nothing within its interval "
                "has a price: set the models' prices in llmbus.yaml to compare costs.")
    cheapest = min(priced, key=lambda r: r.usd_per_1k)
    if cheapest is best and not overlapping:
        return (f"Run {_name(best)}: its {report.metric} ({_interval(best)}) is the best, and no other system's "
                f"95% interval reaches it; {dollars(best.usd_per_month)} {month}.")
    if cheapest is best:
        return (f"Run {_name(best)}: it has the best {report.metric} ({_interval(best)}) and costs least of the "
                f"systems whose 95% intervals overlap it ({_names(overlapping)}: not told apart from it on these "
                f"items), at {dollars(best.usd_per_month)} {month}.")
    rest = [r for r in overlapping if r is not cheapest]
    factor = best.usd_per_1k / cheapest.usd_per_1k if cheapest.usd_per_1k > 0 else math.inf
    ratio = "∞" if math.isinf(factor) else f"{factor:,.0f}" if factor >= 10 else f"{factor:,.1f}"
    return (f"Run {_name(cheapest)}: its {report.metric} {cheapest.quality:.3f} is within the 95% interval of "
            f"the best, {_name(best)} ({_interval(best)}), so these items do not tell them apart"
            f"{'' if len(rest) == 0 else f' (nor {len(rest)} more overlapping it)'}, and it costs "
            + (f"{ratio}× less per item ({dollars(cheapest.usd_per_month)} instead of "
               f"{dollars(best.usd_per_month)} " if best.price_known
               else f"less ({dollars(cheapest.usd_per_month)}; the best has no price) ")
            + f"{month}).")


def _names(rows: list[ReportRow]) -> str:
    shown = [_name(r) for r in rows[:2]] + ([f"{len(rows) - 2} more"] if len(rows) > 2 else [])
    return ", ".join(shown[:-1]) + " and " + shown[-1] if len(shown) > 1 else shown[0]


def _name(row: ReportRow) -> str:
    return f"{row.kind} {row.model}"


def _interval(row: ReportRow) -> str:
    return f"{row.quality:.3f}, 95% CI {row.quality_lo:.3f}–{row.quality_hi:.3f}"


def render_html(report: Report) -> str:
    """The report as one HTML page (inline CSS, the plots as data: URIs): opens without a server."""
    return environment(TEMPLATES).get_template("report.html").render(report=report)
