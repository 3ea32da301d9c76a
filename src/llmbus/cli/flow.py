"""Stop 4: run, show and resume workflows; serve the human-review queue."""

from __future__ import annotations

import json
import secrets
import signal
import sys
from typing import Any

import typer
from rich.table import Table

from llmbus.cli.app import DB_OPTION, JSON_OPTION, app, err, fmt, friendly_errors, out, plain
from llmbus.settings import DEFAULT_MODEL

flow_app = typer.Typer(no_args_is_help=True, help="Workflows of atomic steps with durable state (stop 4).")
review_app = typer.Typer(no_args_is_help=True, help="The human-review queue (stop 4).")
app.add_typer(flow_app, name="flow")
app.add_typer(review_app, name="review")


def _outcome_rows(outcomes: list[Any]) -> None:
    table = Table(title="flow runs", title_justify="left")
    for column in ("run", "status", "output", "error"):
        table.add_column(column)
    for o in outcomes:
        table.add_row(o.run_id, o.status, _short(o.output, 70), plain(o.error or ""))
    out.print(table)


@flow_app.command("run")
@friendly_errors
def run_cmd(
    file: str = typer.Argument(..., help="Python file defining one @flow function"),
    input_json: str | None = typer.Option(None, "--input", help="One input as JSON"),
    dataset: str | None = typer.Option(None, "--dataset", help="JSONL file: one run per line"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Model for LLM steps"),
    tool_timeout: float = typer.Option(30.0, "--tool-timeout", help="Seconds before a tool step is killed"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Run a flow on one input or a dataset; runs waiting for review resume after the decision."""
    from llmbus.flows.engine import FlowSettings, load_flow, read_inputs, run_many
    from llmbus.store import Store

    values = read_inputs(input_json, dataset)
    flow_def = load_flow(file)
    on_done = None if as_json else (lambda o: err.print(f"{o.run_id}: {o.status}", highlight=False))
    with Store(db) as store:
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` marks the run interrupted; finished steps are kept
        outcomes = run_many(store, flow_def, values, FlowSettings(model=model, tool_timeout_s=tool_timeout),
                            on_done)
    if as_json:
        sys.stdout.write(json.dumps([vars(o) for o in outcomes], default=str, ensure_ascii=False) + "\n")
    else:
        _outcome_rows(outcomes)


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


@flow_app.command("resume")
@friendly_errors
def resume_cmd(
    run_id: str = typer.Argument(..., help="Flow run id (or a unique prefix)"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Continue a paused, failed or killed run; recorded steps are replayed, not called again."""
    from llmbus.flows.engine import resume
    from llmbus.store import Store

    signal.signal(signal.SIGTERM, _interrupt)
    with Store(db) as store:
        outcome = resume(store, run_id)
    if as_json:
        sys.stdout.write(json.dumps(vars(outcome), default=str, ensure_ascii=False) + "\n")
    else:
        _outcome_rows([outcome])


@flow_app.command("list")
@friendly_errors
def list_cmd(
    name: str | None = typer.Option(None, "--flow", help="Only runs of this flow"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Flow runs, oldest first: status, input, error."""
    from llmbus.flows.log import FlowLog
    from llmbus.store import Store

    with Store(db) as store:
        runs = FlowLog(store).list_runs(name)
    if as_json:
        sys.stdout.write(json.dumps(runs, default=str, ensure_ascii=False) + "\n")
        return
    table = Table(title="flow runs", title_justify="left")
    for column in ("run", "flow", "status", "input", "created", "error"):
        table.add_column(column)
    for r in runs:
        table.add_row(r["id"], r["flow"], r["status"], _short(r["input"], 50), f"{r['created_at']:%Y-%m-%d %H:%M}",
                      _short(r["error"] or "", 60))
    out.print(table)


@flow_app.command("show")
@friendly_errors
def show_cmd(
    run_id: str = typer.Argument(..., help="Flow run id (or a unique prefix)"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Every step of a run: input, output, cost, timing, verdicts and errors."""
    from llmbus.flows.log import FlowLog
    from llmbus.store import Store

    with Store(db) as store:
        log = FlowLog(store)
        run = log.get_run(run_id)
        steps = log.steps(run["id"])
    if as_json:
        sys.stdout.write(json.dumps({"run": run, "steps": steps}, default=str, ensure_ascii=False) + "\n")
        return
    total = sum(s["cost_usd"] for s in steps)
    out.print(f"[bold]flow run {run['id']}[/] · {run['flow']} · [bold]{run['status']}[/] · "
              f"cost ${total:.6f} · input {_short(run['input'], 100)}", highlight=False)
    if run["error"]:
        out.print(f"[red]error:[/] {plain(run['error'])}", highlight=False)
    table = Table(title_justify="left")
    for column in ("step", "kind", "status", "input", "output", "detail", "tokens", "cost $", "s", "tries"):
        table.add_column(column)
    for s in steps:
        table.add_row(s["key"], s["kind"], s["status"], _short(s["input"], 40),
                      _short(s["output"] if s["status"] == "done" else s["error"], 50), _detail(s),
                      f"{s['tokens_in']}/{s['tokens_out']}", fmt(s["cost_usd"], ".6f"), fmt(s["latency_s"], ".2f"),
                      str(s["attempts"]))
    out.print(table)
    if run["status"] == "done":
        out.print(f"output: {_short(run['output'], 400)}", highlight=False)


def _detail(step: dict[str, Any]) -> str:
    """The part of a step row worth a glance: verdict reasons, source docs, the model."""
    output = step["output"] if isinstance(step["output"], dict) else {}
    if step["kind"] == "guardrail" and output:
        return _short(f"{'pass' if output.get('passed') else 'fail'} tier {output.get('tier')}: "
                      + "; ".join(output.get("reasons") or []), 60)
    if step["kind"] == "retrieval" and isinstance(step["output"], list):
        return _short(", ".join(str(s.get("doc") or s.get("origin")) for s in step["output"]), 60)
    return step["model"] or ""


def _short(value: Any, width: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(str(text).split())
    return plain(text if len(text) <= width else text[: width - 1] + "…")  # model text may hold `[/INST]`


@review_app.command("serve")
@friendly_errors
def serve_cmd(
    port: int = typer.Option(8001, "--port"),
    host: str = typer.Option("127.0.0.1", "--host"),
    reviewer: list[str] | None = typer.Option(None, "--reviewer", help="NAME:TOKEN (repeatable); default: a new token"),
    lease: float = typer.Option(600.0, "--lease", help="Seconds an opened item stays with its reviewer"),
    db: str | None = DB_OPTION,
) -> None:
    """Serve the review queue; a decision resumes its flow run."""
    import uvicorn

    from llmbus.store import Store
    from llmbus.web.review_web import create_app, parse_reviewers

    tokens = parse_reviewers(reviewer) if reviewer else {secrets.token_urlsafe(12): "reviewer"}
    if not reviewer:
        err.print(f"reviewer token: {next(iter(tokens))}  (open http://{host}:{port}/login)", highlight=False)
    with Store(db) as store:
        uvicorn.run(create_app(store, tokens, lease_s=lease), host=host, port=port, log_level="warning")

