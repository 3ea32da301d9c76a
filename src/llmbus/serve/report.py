"""`llmbus report TASK`: one self-contained HTML page comparing teacher, student, cascade and cached answers —
quality with 95% intervals, p50/p95 latency, cost per 1k, $/month at a traffic — with a Pareto plot."""

from __future__ import annotations

import base64
import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmbus.embed import StageCallback
from llmbus.errors import LlmbusError
from llmbus.extras import require
from llmbus.pages import environment
from llmbus.providers.config import resolve_model
from llmbus.quality.evaluate import evaluate
from llmbus.run.summary import RunSummary, summarize
from llmbus.store import Store
from llmbus.store.traffic import is_traffic_run
from llmbus.task.spec import TaskSpec

TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class ReportRow:
    """One configuration of the task (one run)."""

    kind: str  # teacher | student | cascade | cached
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


@dataclass
class Report:
    """All rows of a task plus the headline comparison."""

    task: str
    metric: str
    traffic: int
    rows: list[ReportRow] = field(default_factory=list)
    headline: str = ""
    plot_png_base64: str = ""

    @property
    def warnings(self) -> list[str]:
        """Every row's warnings, each naming its run."""
        return [f"{row.kind} run {row.run_id}: {w}" for row in self.rows for w in row.warnings]

    @property
    def speculative(self) -> bool:
        """Whether any row's model drafted tokens (the page then shows their acceptance rate)."""
        return any(row.draft_acceptance is not None for row in self.rows)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json (without the image)."""
        data = asdict(self)
        data.pop("plot_png_base64")
        return data


def row_kind(model: str, cache_hit_rate: float) -> str:
    """What a run is, from its model reference and how much of it came from the cache."""
    if cache_hit_rate >= 0.9:
        return "cached"
    if model.startswith("encoder:") or is_lora_student(model):
        return "student"
    if model.startswith("cascade:"):
        return "cascade"
    return "teacher"


def is_lora_student(model: str) -> bool:
    """A `local:` model registered by `llmbus distill --student lora` (it reads the raw input, not the prompt)."""
    try:
        return resolve_model(model).input_template is not None
    except LlmbusError:
        return False


def build_report(spec: TaskSpec, store: Store, traffic: int = 1_000_000,
                 run_ids: list[str] | None = None, progress: StageCallback | None = None) -> Report:
    """Rows for the given runs, or the latest run of each kind of the task's current spec version (each evaluated
    run reported to `progress`); then the Pareto front and the headline."""
    report = Report(task=spec.name, metric=spec.main_metric, traffic=traffic)
    picked = pick_runs(spec, store, run_ids)
    for done, (run, summary) in enumerate(picked):
        if progress:
            progress(f"evaluating {len(picked)} runs (bootstrap intervals)", done, len(picked))
        evaluation = evaluate(store, run["id"], rounds=500)
        interval = evaluation.values[spec.main_metric]
        calls = list(store.iter_calls(run["id"]))
        routes = [(c["meta"] or {}).get("route") for c in calls]
        cascade = run["model"].startswith("cascade:")
        escalated = sum(r == "teacher" for r in routes) / len(calls) if cascade else None
        hit_rate = summary.cache_hits / summary.items
        cost = summary.cost_per_1k if math.isfinite(summary.cost_per_1k) else 0.0  # all cached: nothing paid
        report.rows.append(ReportRow(
            kind=row_kind(run["model"], hit_rate), run_id=run["id"], model=run["model"], n=summary.items,
            quality=interval.value, quality_lo=interval.lo, quality_hi=interval.hi,
            p50_ms=1000 * _latency_s(calls, 50), p95_ms=1000 * _latency_s(calls, 95),
            usd_per_1k=cost, usd_per_month=cost * traffic / 1000, escalation_rate=escalated,
            cache_hit_rate=hit_rate, draft_acceptance=summary.draft_acceptance, warnings=evaluation.warnings))
    if progress:
        progress(f"evaluating {len(picked)} runs (bootstrap intervals)", len(picked), len(picked))
    mark_pareto(report.rows)
    report.headline = headline(report)
    if report.rows:
        report.plot_png_base64 = base64.b64encode(pareto_png(report)).decode()
    return report


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


def headline(report: Report) -> str:
    """The cheapest model configuration keeping ≥ 98% of the best teacher's quality, against that teacher.

    Cached rows are left out: their saving depends on how often inputs repeat, not on the model."""
    teachers = [r for r in report.rows if r.kind == "teacher"]
    if not teachers:
        return "No teacher run yet: run the task on your strongest model first (llmbus run)."
    teacher = max(teachers, key=lambda r: r.quality)
    good = [r for r in report.rows if r.kind != "cached" and r.quality >= 0.98 * teacher.quality]
    best = min(good, key=lambda r: r.usd_per_1k)
    if best is teacher:
        return f"Nothing cheaper keeps 98% of the teacher's {report.metric} ({teacher.quality:.3f}) yet."
    factor = teacher.usd_per_1k / best.usd_per_1k if best.usd_per_1k > 0 else float("inf")
    return (f"{best.kind} {best.model} keeps {best.quality / teacher.quality:.1%} of the teacher's {report.metric} "
            f"at {'∞' if math.isinf(factor) else f'{factor:,.0f}'}× lower cost per item and p50 "
            f"{best.p50_ms:.1f} ms vs {teacher.p50_ms:.0f} ms: "
            f"${best.usd_per_month:,.2f} instead of ${teacher.usd_per_month:,.2f} a month at "
            f"{report.traffic:,} items.")


def pareto_png(report: Report) -> bytes:
    """Quality (with 95% intervals) against cost per 1k items, Pareto front joined, as a PNG."""
    matplotlib = require("report", "matplotlib", "llmbus report's Pareto plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"teacher": "#c0392b", "student": "#2980b9", "cascade": "#8e44ad", "cached": "#27ae60"}
    floor = min([r.usd_per_1k for r in report.rows if r.usd_per_1k > 0] or [1e-6]) / 10
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for row in report.rows:
        x = max(row.usd_per_1k, floor)
        ax.errorbar(x, row.quality, yerr=[[row.quality - row.quality_lo], [row.quality_hi - row.quality]],
                    fmt="o", color=colors[row.kind], capsize=4, markersize=8)
        ax.annotate(f"{row.kind}\n{row.model}", (x, row.quality), textcoords="offset points", xytext=(8, -4),
                    fontsize=7)
    front = sorted((r for r in report.rows if r.pareto), key=lambda r: r.usd_per_1k)
    ax.plot([max(r.usd_per_1k, floor) for r in front], [r.quality for r in front], "--", color="#7f8c8d",
            label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("cost per 1k items (USD, log scale; cached ≈ 0 shown at the left edge)")
    ax.set_ylabel(report.metric)
    ax.set_title(f"{report.task}: quality vs cost")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def render_html(report: Report) -> str:
    """The report as one HTML page (inline CSS, the plot as a data: URI): opens without a server."""
    return environment(TEMPLATES).get_template("report.html").render(report=report)
