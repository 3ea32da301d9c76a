"""Stop 2: `llmbus optimize` — search prompt settings within a call budget and confirm the winner."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from llmbus.cli.app import DB_OPTION, JSON_OPTION, app, err, fmt, friendly_errors, out, plain, print_json, usd
from llmbus.settings import DEFAULT_MODEL


@app.command()
@friendly_errors
def optimize(
    task: str = typer.Argument(..., help="Task spec YAML"),
    model: list[str] = typer.Option([DEFAULT_MODEL], "--model", "-m",
                                    help="Model reference; give several to search the model tier too (the first "
                                         "answers the input spec)"),
    budget: int = typer.Option(2000, "--budget", min=1, help="Most model calls in all (cached answers are free)"),
    objective: str = typer.Option("quality", "--objective", help="quality, or cost: the cheapest candidate within "
                                                                 "--margin of the best quality"),
    margin: float = typer.Option(0.01, "--margin", min=0.0, help="--objective cost: quality it may give up"),
    proposer: str | None = typer.Option(None, "--proposer", help="Model that rewrites the instruction, e.g. "
                                                                 "openai:big (without one: every other setting)"),
    confirm: int = typer.Option(200, "--confirm", min=1, help="Held-out eval items the winner and the input "
                                                              "spec both answer"),
    output: Path | None = typer.Option(None, "--output", "-o", help="Where to write the winner (default "
                                                                    "TASK.opt.yaml next to TASK)"),
    concurrency: int = typer.Option(4, "--concurrency", "-c", min=1, help="Requests in flight"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Search few-shot k, selection, order, verbalizers, calibration, instructions and models within a budget;
    write the winner as a plain task YAML and confirm it on held-out items against the input spec."""
    from llmbus.experiments.optimize import Plan
    from llmbus.project import Project
    from llmbus.task.spec import load_spec

    spec = load_spec(task)
    target = output or Path(task).with_suffix(".opt.yaml")
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    def on_plan(plan: Plan) -> None:
        for line in plan.lines():
            (err if as_json else out).print(f"plan: {line}", markup=False, highlight=False, soft_wrap=True)

    def on_stage(text: str) -> None:
        if not as_json:
            err.print(f"  {text}", markup=False, highlight=False, soft_wrap=True, style="dim")

    with Project(db) as project:
        result = project.optimize(spec, model, budget=budget, objective=objective, margin=margin, proposer=proposer,
                                  confirm=confirm, concurrency=concurrency, output=target, on_plan=on_plan,
                                  on_stage=on_stage)
        c = result.confirmation
        spent = project.spend([r.id for r in project.runs(tag=result.tag)] + [c.winner_run, c.original_run])
    if as_json:
        print_json(result.as_dict())
        return
    _print_candidates(result.as_dict())
    out.print(f"winner: {plain(result.winner.candidate.name)} on {plain(result.winner.candidate.model)}",
              highlight=False)
    out.print(f"held-out {c.items} eval items: {result.metric} {_ci(c.winner)} vs input spec {_ci(c.original)} "
              f"(runs {c.winner_run} vs {c.original_run}): {plain(c.verdict)}", highlight=False)
    if result.diff:
        sys.stdout.write(result.diff if result.diff.endswith("\n") else result.diff + "\n")
    out.print(f"wrote {plain(result.output)}; runs tagged {result.tag}", highlight=False)
    out.print(f"spent: {result.spent} model calls of the budget {result.plan.budget} ({result.cache_hits} answers "
              f"from the cache, free), {spent.amount()}", highlight=False)


def _raise_keyboard_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _ci(interval: Any) -> str:
    value, lo, hi = (interval["value"], interval["lo"], interval["hi"]) if isinstance(interval, dict) \
        else (interval.value, interval.lo, interval.hi)
    return f"{fmt(value)} [{fmt(lo)}, {fmt(hi)}]"


def _print_candidates(data: dict[str, Any]) -> None:
    table = Table(title=f"candidates (validation items from the pool; {data['metric']} with 95% CI)",
                  title_justify="left")
    checks = list(dict.fromkeys(name for row in data["candidates"] for name in row.get("assertions") or {}))
    for column in ("stage", "candidate", "model", "items", data["metric"], "prompt tok/item", "$/1k", "p50 s",
                   "calls", "pareto", "note", *(f"assert:{name}" for name in checks)):
        table.add_column(column, justify="left" if column in {"candidate", "model", "note"} else "right")
    for row in data["candidates"]:
        table.add_row(str(row["stage"]), plain(row["candidate"]), plain(row["model"]), str(row["items"]),
                      _ci(row["quality"]) if row["quality"] else "–", fmt(row["prompt_tokens_per_item"], ".0f"),
                      usd(row["cost_per_1k"], row["price_known"]), fmt(row["latency_p50_s"]), str(row["calls"]),
                      "*" if row["pareto"] else "", plain(row["note"]),
                      *(fmt((row.get("assertions") or {}).get(name)) for name in checks))
    out.print(table)
    front = sorted(data["pareto"], key=lambda r: (r["cost_per_1k"] or 0.0))
    out.print("pareto front (quality vs $/1k): " + "; ".join(
        f"{plain(r['candidate'])} {fmt(r['quality']['value'])} at {usd(r['cost_per_1k'], r['price_known'])}"
        for r in front),
        highlight=False)
