"""Stops 1–2: run a task, list and show runs, advise."""

from __future__ import annotations

import gc
import json
import signal
import sys
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from llmbus.advise.breakeven import ERROR_COST, HORIZON_MONTHS, LABEL_COST
from llmbus.cli.app import (
    DB_OPTION,
    JSON_OPTION,
    app,
    fmt,
    friendly_errors,
    out,
    plain,
    print_json,
    print_price_sources,
    usd,
    warn,
)
from llmbus.settings import DEFAULT_MODEL, GRACE_S, USD_PER_HOUR

if TYPE_CHECKING:  # the CLI imports heavy modules only inside the command that needs them
    from llmbus.store import Call
    from llmbus.task.spec import TaskSpec


@app.command()
@friendly_errors
def run(
    task: str = typer.Argument(..., help="Task spec YAML"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Model reference, e.g. local:gemma-3-270m"),
    limit: int | None = typer.Option(None, "--limit", "-n",
                                     help="Answer N eval items: a representative sample (each class at its share), "
                                          "the same items for every model"),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip the first N eval items of that order (e.g. "
                                                          "those another run answered)"),
    stratify: bool = typer.Option(False, "--stratify", help="Classify: give every class equal room in the "
                                                            "sample instead of its share"),
    concurrency: int = typer.Option(4, "--concurrency", "-c", min=1, help="Requests in flight"),
    resume: str | None = typer.Option(None, "--resume", help="Finish the missing items of this run"),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the response cache"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the first item's prompt (a messages: spec: its turns, "
                                                          "with --json the request's messages, tools and "
                                                          "response_format) and exit"),
    executor: str = typer.Option("local", "--executor", help="local (a thread pool here) or ray (a Ray cluster; "
                                                             "with several nodes, --db postgresql://…)"),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Ray cluster to use (auto, host:port, "
                                                                      "ray://…); default: start one here"),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Ray: worker actors (default: one per "
                                                                      "node), each with --concurrency in flight"),
    grace: float = typer.Option(GRACE_S, "--grace", min=0, help="On Ctrl-C or SIGTERM, seconds the calls in "
                                                                "flight get to finish and be logged; the rest are "
                                                                "cancelled and logged as interrupted (a second "
                                                                "Ctrl-C stops waiting)"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Answer a task's items with a model; every call goes into the call log."""
    from llmbus.cli.progress import RunProgress
    from llmbus.project import Project
    from llmbus.run.options import RunHooks, RunOptions, ScaleOptions
    from llmbus.task.spec import load_spec

    spec = load_spec(task)
    if dry_run:
        _dry_run(spec, as_json)
        return
    options = RunOptions(limit=limit, offset=offset, concurrency=concurrency, use_cache=not no_cache,
                         sampling="balanced" if stratify else "representative", resume=resume, grace_s=grace)
    with Project(db) as project:
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        # What start-up loaded lives as long as the process: keep it out of the collector's full passes, which
        # otherwise rescan it a few times a run (~10 µs an item at a thousand items a second).
        gc.freeze()
        bar = RunProgress(disable=as_json)
        with bar as (_, on_progress):
            done = project.run(spec, model, options, scale=ScaleOptions(executor, ray_address, workers),
                               hooks=RunHooks(on_progress, bar.stage, warn))
        summary = project.summary(done)
        if as_json:
            out.print_json(data=summary.as_dict())
        else:
            _print_runs([summary], title=f"run {done.id}")
            out.print(project.spend([done]).line(), highlight=False)


def _dry_run(spec: TaskSpec, as_json: bool) -> None:
    """The first item's prompt (a messages: spec: its turns; --json: the request's messages, options, prompt)."""
    from llmbus.run.adapter import item_request
    from llmbus.run.engine import eval_items
    from llmbus.run.executors import render_items

    items, selector = eval_items(spec, 1)
    job = next(render_items(spec, items, selector))
    if as_json:
        request = item_request(spec, job)
        print_json({"messages": list(request.messages), **request.options(), "prompt": request.prompt})
    else:
        sys.stdout.write(_shown_turns(job.messages) if job.messages else job.prompt + "\n")


def _shown_turns(messages: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> str:
    """Chat turns as a person reads them: each turn's role in brackets, then its content (and tool calls)."""
    return "".join(f"[{turn['role']}]\n{turn.get('content') or ''}\n"
                   + "".join(f"→ {c['function']['name']}({c['function'].get('arguments', '')})\n"
                             for c in turn.get("tool_calls") or []) for turn in messages)


def _shown_call(call: Call) -> str:
    """One call whole: the conversation (or prompt), then the answer, tool calls and reasoning."""
    answer = {"role": "assistant", "content": call.raw_output, "tool_calls": call.tool_calls}
    text = _shown_turns([*(call.messages or [{"role": "user", "content": call.prompt}]), answer])
    if call.reasoning:
        text += f"[reasoning]\n{call.reasoning}\n"
    return text + f"[parsed] {json.dumps(call.parsed, ensure_ascii=False)} · expected " \
                  f"{json.dumps(call.expected, ensure_ascii=False)} · {call.error_kind or 'ok'}\n"


def _raise_keyboard_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _print_runs(summaries: list[Any], title: str = "runs", traffic: int | None = None) -> None:
    table = Table(title=title, title_justify="left")
    columns = ["run", "task", "model", "items", "errors", "metric", "value", "tokens in/out", "cached/reasoning",
               "cost $", "$/1k", "p50 s", "p95 s", "items/s"]
    if traffic:
        columns += ["$/month", "need items/s", "replicas"]
    for column in columns:
        table.add_column(column, justify="left" if column in {"run", "task", "model", "metric"} else "right")
    for s in summaries:
        cells = [s.run_id, s.task, s.model, f"{s.items}/{s.planned}", str(s.errors), s.metric, fmt(s.value),
                 f"{s.tokens_in}/{s.tokens_out}", f"{s.tokens_cached}/{s.tokens_reasoning}",
                 usd(s.cost_usd, s.price_known, ".4f"), usd(s.cost_per_1k, s.price_known, ".4f"),
                 fmt(s.latency_p50_s), fmt(s.latency_p95_s), fmt(s.items_per_s, ".2f")]
        if traffic:
            cells += [usd(s.usd_per_month, s.price_known, ",.2f"), fmt(s.needed_items_per_s, ".2f"),
                      str(s.replicas_needed or "–")]
        table.add_row(*cells)
    out.print(table)
    print_price_sources([(s.model, s.price_source) for s in summaries])
    for line in dict.fromkeys(s.price_warning for s in summaries if s.price_warning):
        warn(line)  # once per model, however many of its runs are listed
    for s in summaries:
        for warning in s.warnings:
            warn(f"run {s.run_id}: {warning}")
        if s.draft_acceptance is not None:
            out.print(f"  {s.run_id}: speculative decoding accepted {s.draft_acceptance:.0%} of drafted tokens")


@app.command()
@friendly_errors
def runs(
    task: str | None = typer.Option(None, "--task", help="Only runs of this task name"),
    traffic: int | None = typer.Option(None, "--traffic", help="Items per month: adds $/month and throughput"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Table of runs: quality, errors, tokens, cost and latency."""
    from llmbus.project import Project

    with Project(db) as project:
        summaries = [project.summary(r, traffic) for r in project.runs(task)]
    if as_json:
        out.print_json(data=[s.as_dict() for s in summaries])
    else:
        _print_runs(summaries, traffic=traffic)


@app.command()
@friendly_errors
def show(
    run_id: str = typer.Argument(..., help="Run id (or a unique prefix)"),
    item: str | None = typer.Option(None, "--item", help="Show this item whole: its prompt (a chat call: its "
                                                         "turns), answer, tool calls and reasoning"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Per-item rows of a run."""
    from llmbus.errors import LlmbusError
    from llmbus.project import Project

    with Project(db) as project:
        run = project.get_run(run_id)
        calls = list(project.calls(run))
    if item is not None:
        calls = [c for c in calls if c.item_id == item]
        if not calls:
            raise LlmbusError(f"run {run.id} has no item {item!r}")
        if not as_json:
            sys.stdout.write(_shown_call(calls[0]))
            return
    if as_json:
        print_json({"run": run.as_dict(), "calls": [c.as_dict() for c in calls]})
        return
    table = Table(title=plain(f"run {run.id} · {run.task} · {run.model} · spec {run.spec_version}"),
                  title_justify="left")
    for column in ("item", "answer", "expected", "conf", "score", "latency s", "cost $", "cache", "error"):
        table.add_column(column)
    for c in calls:
        table.add_row(plain(c.item_id), _short(c.parsed if c.parsed is not None else c.raw_output),
                      _short(c.expected), fmt(c.confidence, ".2f"), fmt(c.score, ".2f"), fmt(c.latency_s, ".3f"),
                      fmt(c.cost_usd, ".6f"), "hit" if c.cache_hit else "", c.error_kind or "")
    out.print(table)


def _short(value: Any, width: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(str(text).split())
    return plain(text if len(text) <= width else text[: width - 1] + "…")  # model text may hold `[/INST]`


@app.command()
@friendly_errors
def advise(
    task: str = typer.Argument(..., help="Task spec YAML"),
    db: str | None = DB_OPTION,
    usd_per_hour: float = typer.Option(USD_PER_HOUR, "--usd-per-hour", help="CPU price used for baseline cost"),
    volume: str | None = typer.Option(None, "--volume", help="Items a month (1M/month, 250k): adds the "
                                                             "break-even table over the task's systems"),
    error_cost: float = typer.Option(ERROR_COST, "--error-cost", min=0, help="USD a wrong answer costs"),
    label_cost: float = typer.Option(LABEL_COST, "--label-cost", min=0, help="USD a human label costs"),
    horizon: float = typer.Option(HORIZON_MONTHS, "--horizon", min=0.1, help="Months one-off costs are "
                                                                            "weighed over"),
    current: str | None = typer.Option(None, "--current", help="The system run today (a run id or model; "
                                                               "default: the best LLM run)"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Stop 1: does this task need an LLM? Size tier, cheap baselines, and LLM runs side by side; with --volume,
    which system pays at that volume (run, error and one-off costs, payback, crossovers)."""
    from llmbus.advise.breakeven import Assumptions, parse_volume
    from llmbus.cli.progress import stage_progress
    from llmbus.project import Project
    from llmbus.task.spec import load_spec

    spec = load_spec(task)
    assumptions = Assumptions(parse_volume(volume), error_cost, label_cost, horizon) if volume else None
    with Project(db) as project:
        with stage_progress(disable=as_json) as progress:
            advice = project.advise(spec, usd_per_hour=usd_per_hour, progress=progress)
        economics = None
        if assumptions is not None:
            from llmbus.distill.decision import economics as weigh

            economics = weigh(spec, project.store, advice, assumptions, current=current, usd_per_hour=usd_per_hour)
    if as_json:
        print_json({**advice.as_dict(), **({"breakeven": economics.as_dict()} if economics else {})})
        return
    _print_advice(spec, advice)
    if economics is not None:
        from llmbus.cli.breakeven import print_decision

        out.print()
        print_decision(economics, advice.metric)


def _print_advice(spec: Any, advice: Any) -> None:
    out.print(f"[bold]{spec.name}[/] · kind {spec.kind} → tier [bold]{advice.tier}[/] ({advice.tier_params})")
    out.print(advice.reason, highlight=False)
    table = Table(title=f"{advice.metric} on {advice.n_eval} held-out items (pool of {advice.n_train} for "
                        "training / few-shot)", title_justify="left")
    first_baseline = next((r.system for r in advice.rows if r.kind == "baseline"), "baseline")
    for column in ("system", "kind", advice.metric, "on items", f"{first_baseline} on same items",
                   "latency/item ms", "$/1k items"):
        table.add_column(column, justify="left" if column in {"system", "kind"} else "right")
    for row in advice.rows:
        table.add_row(row.system, row.kind, fmt(row.value), str(row.n_items), fmt(row.baseline_on_same_items),
                      fmt(row.latency_ms, ".2f"), usd(row.usd_per_1k, row.price_known, ".3g"))
    out.print(table)
    out.print(advice.verdict, highlight=False)
