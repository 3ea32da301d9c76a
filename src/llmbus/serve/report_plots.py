"""The report's two plots as PNG bytes: quality against cost per item (Pareto front joined), and each system's
cost over the horizon against monthly volume, with the crossovers marked (matplotlib, imported lazily)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from llmbus.advise.breakeven import horizon_total, volume_text
from llmbus.extras import require

COLORS = {"teacher": "#c0392b", "student": "#2980b9", "cascade": "#8e44ad", "cached": "#27ae60",
          "baseline": "#d35400", "llm": "#c0392b", "projected": "#7f8c8d"}


def _pyplot() -> Any:
    matplotlib = require("report", "matplotlib", "llmbus report's Pareto plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    _pyplot().close(fig)
    return buffer.getvalue()


def pareto_png(report: Any) -> bytes:
    """Quality (with 95% intervals) against cost per 1k items, Pareto front joined, baselines included."""
    plt = _pyplot()
    rows = [r for r in [*report.rows, *report.baselines] if np.isfinite(r.usd_per_1k)]
    floor = min([r.usd_per_1k for r in rows if r.usd_per_1k > 0] or [1e-6]) / 10
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for row in rows:
        x = max(row.usd_per_1k, floor)
        ax.errorbar(x, row.quality, yerr=[[row.quality - row.quality_lo], [row.quality_hi - row.quality]],
                    fmt="o", color=COLORS.get(row.kind, "#333"), capsize=4, markersize=8)
        ax.annotate(f"{row.kind}\n{row.model}", (x, row.quality), textcoords="offset points", xytext=(8, -4),
                    fontsize=7)
    front = sorted((r for r in rows if r.pareto), key=lambda r: r.usd_per_1k)
    ax.plot([max(r.usd_per_1k, floor) for r in front], [r.quality for r in front], "--", color="#7f8c8d",
            label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("cost per 1k items (USD, log scale; cached ≈ 0 shown at the left edge)")
    ax.set_ylabel(report.metric)
    ax.set_title(f"{report.task}: quality vs cost")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def costs_png(economics: Any, task: str) -> bytes:
    """Each priced system's total over the horizon (one-off + months of running and errors) against the monthly
    volume, log-log; the assumed volume as a vertical line and each crossover as a marked point."""
    plt = _pyplot()
    decision = economics.decision
    a = decision.assumptions
    systems = [s for s in economics.systems if s.priced]
    marks = [c.volume for c in decision.crossovers] + [a.volume]
    volumes = np.geomspace(max(1.0, min(marks) / 100), max(marks) * 100, 200)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    styles = {"baseline": ":", "projected": "--"}  # one color per system; the line style says its kind
    for k, system in enumerate(systems):
        totals = [max(horizon_total(system, a, v), 1e-6) for v in volumes]
        ax.plot(volumes, totals, label=f"{system.kind}: {system.name}", color=f"C{k % 10}", linewidth=1.6,
                linestyle=styles.get(system.kind, "-"))
    by_name = {s.name: s for s in systems}
    for crossing in decision.crossovers:
        total = horizon_total(by_name[crossing.above], a, crossing.volume)
        ax.plot([crossing.volume], [total], "o", color="black", markersize=7, zorder=5)
        ax.annotate(f"{volume_text(crossing.volume)}/month", (crossing.volume, total), textcoords="offset points",
                    xytext=(6, 6), fontsize=7)
    ax.axvline(a.volume, color="#555", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"items a month (dotted: {volume_text(a.volume)}; dots: crossovers)")
    ax.set_ylabel(f"USD over {a.horizon_months:g} months (one-off + run + errors)")
    ax.set_title(f"{task}: cost vs volume")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", fontsize=6)
    return _png(fig)
