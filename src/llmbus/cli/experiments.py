"""Stop 2: compare runs of one task across spec versions and models; browse runs in a web UI."""

from __future__ import annotations

import os
import secrets
from typing import Any

import typer
from rich.table import Table

from llmbus.cli.app import (
    DB_OPTION,
    JSON_OPTION,
    app,
    err,
    fmt,
    friendly_errors,
    out,
    plain,
    print_json,
    print_price_sources,
    usd,
    warn,
)
from llmbus.cli.quality import pass_rate_cell

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@app.command()
@friendly_errors
def compare(
    run_ids: list[str] | None = typer.Argument(None, help="Run ids (or unique prefixes) of one task"),
    task: str | None = typer.Option(None, "--task", help="Every run of this task name instead, oldest first"),
    baseline: str | None = typer.Option(None, "--baseline", help="Run the others are tested against (default: "
                                                                 "the first run given, or the task's oldest)"),
    rounds: int = typer.Option(1000, "--rounds", min=10, help="Bootstrap resamples"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Runs of one task side by side on the items they all share: metric with 95% CI, paired test against the
    baseline, wins/ties/losses per item, $/1k items, p50/p95 latency."""
    from llmbus.project import Project

    with Project(db) as project:
        matrix = project.compare(run_ids or (), task=task, baseline=baseline, rounds=rounds)
    if as_json:
        print_json(matrix.as_dict())
        return
    print_matrix(matrix)


def print_matrix(matrix: Any) -> None:
    """The compare matrix as a table, then its warnings."""
    table = Table(title=plain(f"{matrix.task} · {matrix.metric} on the {matrix.n_shared} items every run answered · "
                              f"baseline {matrix.baseline}"), title_justify="left")
    checks = list(dict.fromkeys(name for row in matrix.rows for name in row.assertions))
    columns = ["run", "spec", "model", matrix.metric, "95% CI", "Δ vs base", "p boot", "p McNemar", "W/T/L",
               "errors", "$/1k", "p50 s", "p95 s", *(f"assert:{name}" for name in checks)]
    for column in columns:
        table.add_column(column, justify="left" if column in {"run", "spec", "model"} else "right")
    for row in matrix.rows:
        c = row.vs_baseline
        table.add_row(
            plain(row.run_id + (" (base)" if row.baseline else "")), plain(row.spec_version), plain(row.model),
            fmt(row.metric.value), f"{fmt(row.metric.lo)}–{fmt(row.metric.hi)}",
            f"{c.delta.value:+.3f}{_mark(c)}" if c else "–", p_value(c.p_bootstrap) if c else "–",
            p_value(c.p_mcnemar) if c else "–", f"{row.wins}/{row.ties}/{row.losses}" if c else "–", str(row.errors),
            usd(row.cost_per_1k, row.price_known), fmt(row.latency_p50_s), fmt(row.latency_p95_s),
            *(pass_rate_cell(row.assertions.get(name)) for name in checks))
    out.print(table)
    print_price_sources([(row.model, row.price_source) for row in matrix.rows])
    out.print("Δ: run − baseline on the same items; * its paired-bootstrap 95% CI excludes 0. W/T/L: items the run "
              "scores higher / the same / lower than the baseline." + (" assert:NAME: pass rate (95% Wilson CI)."
                                                                       if checks else ""), highlight=False)
    for warning in matrix.warnings:
        warn(warning)


def p_value(p: float | None) -> str:
    """A p-value for a cell: three decimals, '<0.001' below that."""
    return "<0.001" if p is not None and p < 0.001 else fmt(p)


def _mark(c: Any) -> str:
    return "*" if c.delta.lo > 0 or c.delta.hi < 0 else ""


@app.command()
@friendly_errors
def ui(
    port: int = typer.Option(8090, "--port"),
    host: str = typer.Option("127.0.0.1", "--host"),
    token: str | None = typer.Option(None, "--token", help="Sign-in token (default $LLMBUS_UI_TOKEN; required "
                                                           "beyond localhost: a new one is made and printed)"),
    label_url: str = typer.Option("http://127.0.0.1:8000", "--label-url",
                                  help="Where `llmbus label serve` runs, for links into the labeling UI"),
    db: str | None = DB_OPTION,
) -> None:
    """Browse runs in a web UI: every task's runs, a run's items with filters, two runs side by side, compare."""
    import uvicorn

    from llmbus.store import Store
    from llmbus.web.runs_web import create_app

    token = token or os.environ.get("LLMBUS_UI_TOKEN") or None
    if token is None and host not in LOOPBACK:  # beyond this machine nobody reads the call log without a token
        token = secrets.token_urlsafe(12)
        err.print(f"ui token: {token}  (open http://{host}:{port}/login)", highlight=False)
    with Store(db) as store:
        out.print(f"llmbus runs on http://{host}:{port}/ · {store.url} (Ctrl-C to stop)", highlight=False)
        uvicorn.run(create_app(store, token=token, label_url=label_url), host=host, port=port, log_level="warning")
