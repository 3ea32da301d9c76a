"""Stop 3 on served traffic: `llmbus monitor SERVED` (judge a sample, queue labels) and `llmbus quality SERVED`
(the judge-corrected pass rate per window and slice, with an alert exit code for cron or CI)."""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.table import Table

from llmbus.cli.app import DB_OPTION, JSON_OPTION, app, fmt, friendly_errors, out, plain, print_json, warn


@app.command("monitor")
@friendly_errors
def monitor_command(
    served: str = typer.Argument(..., help="Served model name (its traffic: the runs gateway:SERVED)"),
    judge: str = typer.Option(..., "--judge", help="Judge spec (YAML)"),
    judge_model: str = typer.Option("local:gemma-3-270m", "--judge-model", help="head:DIR, encoder:DIR or any model"),
    sample: float = typer.Option(0.05, "--sample", help="Share of the traffic to judge (on average)"),
    uncertain_share: float = typer.Option(0.5, "--uncertain-share",
                                          help="How much of the sampling follows the answers' uncertainty (0–1)"),
    label_project: str | None = typer.Option(None, "--label-project", help="Labeling project (default monitor-SERVED)"),
    label_n: int = typer.Option(20, "--label-n", min=0, help="Judged answers to send to humans per pass (about)"),
    every: str | None = typer.Option(None, "--every", help="Repeat every 10m, 1h… until Ctrl-C (default: once)"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Judge a sample of a served model's new traffic and queue the answers a human label is worth most."""
    from llmbus.cli.progress import stage_progress
    from llmbus.quality.monitor import MonitorSettings, monitor_once, parse_duration
    from llmbus.run.summary import spend
    from llmbus.store import Store

    pause = parse_duration(every, "--every").total_seconds() if every else None
    settings = MonitorSettings(judge_path=judge, judge_model=judge_model, sample=sample,
                               uncertain_share=uncertain_share, project=label_project, label_n=label_n)
    with Store(db) as store:
        try:
            while True:
                with stage_progress(disable=as_json) as progress:
                    report = monitor_once(store, served, settings, progress=progress)
                if as_json:
                    print_json(report.as_dict())
                else:
                    out.print(f"monitor {plain(served)}: {report.considered} new calls considered, "
                              f"{report.sampled} sampled, {report.judged} judged "
                              f"({', '.join(report.judge_run_ids) or 'no judge run'}), {report.queued} queued in "
                              f"label project {plain(report.project)}", highlight=False)
                    if report.judge_run_ids:
                        out.print(spend(store, report.judge_run_ids).line(), highlight=False)
                if pause is None:
                    return
                time.sleep(pause)
        except KeyboardInterrupt:
            return


@app.command("quality")
@friendly_errors
def quality_command(
    served: str = typer.Argument(..., help="Served model name (monitored with llmbus monitor)"),
    since: str | None = typer.Option(None, "--since", help="Only traffic since: 7d, 24h, or an ISO date"),
    window: str | None = typer.Option(None, "--window", help="One estimate per window: 1d, 6h… (default: one)"),
    slice_field: str | None = typer.Option(None, "--slice", help="Also per slice: route, key, model or a meta field"),
    alert_below: float | None = typer.Option(None, "--alert-below",
                                             help="Exit 1 when the newest window's corrected lower bound is below"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """The served model's pass rate: PPI++ from the judged sample and the human labels, next to the judge's own
    rate and the humans' own interval."""
    from llmbus.quality.monitor import parse_duration, quality_report
    from llmbus.store import Store
    from llmbus.store.traffic import parse_since

    with Store(db) as store:
        windows = quality_report(store, served, since=parse_since(since) if since else None,
                                 window=parse_duration(window, "--window") if window else None,
                                 slice_field=slice_field)
    newest = windows[-1]
    if as_json:
        print_json({"served": served, "windows": [w.as_dict() for w in windows]})
    else:
        _print_windows(served, windows)
    if alert_below is not None:
        lower = newest.ppi.lo if newest.ppi else None
        if lower is None or lower < alert_below:
            why = f"lower bound {lower:.3f}" if lower is not None else f"no estimate ({newest.refused})"
            warn(f"quality alert: {served} newest window: {why} < {alert_below:g}")
            raise typer.Exit(1)


def _interval(estimate: Any) -> str:
    return f"{fmt(estimate.value)} [{fmt(estimate.lo)}, {fmt(estimate.hi)}]" if estimate else "–"


def _agreement(estimate: Any) -> str:
    """The judge against the humans on the labeled answers: what the corrections rest on."""
    a = estimate.agreement if estimate else None
    return f"κ {fmt(a.kappa, '.2f')} · TPR {fmt(a.tpr, '.2f')} · TNR {fmt(a.tnr, '.2f')}" if a else "–"


def _row(name: str, judged: str, labeled: str, judge_rate: str, estimate: Any) -> list[str]:
    found = estimate.estimates if estimate else {}
    ppi = found.get("ppi++")
    return [name, judged, labeled, judge_rate, _interval(ppi), _interval(found.get("rogan-gladen")),
            _interval(found.get("human-only")), fmt(ppi.lam, ".2f") if ppi else "–", _agreement(estimate)]


def _print_windows(served: str, windows: list[Any]) -> None:
    table = Table(title=f"quality of {plain(served)} (judged sample weighted 1/p, human labels 1/(p·π))")
    for column in ("window", "judged", "labeled", "judge-only", "PPI++ (95% CI)", "Rogan–Gladen", "human-only",
                   "λ", "judge vs humans"):
        table.add_column(column)
    notes = []
    for w in windows:
        name = f"{w.start:%Y-%m-%d %H:%M} → {w.end:%Y-%m-%d %H:%M}" if w.start else f"all → {w.end:%Y-%m-%d %H:%M}"
        table.add_row(*_row(name, str(w.judged), str(w.labeled), fmt(w.judge_rate), w.estimate))
        for key, estimate in w.slices.items():
            best = estimate.best
            table.add_row(*_row(f"  {plain(key)}", str(best.n_unlabeled) if best else "", str(best.n) if best else "0",
                                "", estimate))
        if w.refused:
            notes.append(f"{name}: {w.refused}")
        notes += [f"{name}: {line}" for line in (w.ppi.warnings if w.ppi else ())]
    out.print(table)
    for line in notes:
        warn(line)
