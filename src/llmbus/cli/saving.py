"""Stop 5: distill a teacher run into a student, serve models behind a gateway, report the savings."""

from __future__ import annotations

from pathlib import Path

import typer

from llmbus.cli.app import DB_OPTION, JSON_OPTION, app, fmt, friendly_errors, out


@app.command()
@friendly_errors
def distill(
    task: str = typer.Argument(..., help="Task spec YAML"),
    teacher: str = typer.Option(..., "--teacher", help="Run id of the teacher's answers"),
    student: str = typer.Option("encoder", "--student", help="encoder (classify/extract)"),
    out_dir: Path | None = typer.Option(None, "--out", help="Output folder (default out/distill/TASK)"),
    epochs: int = typer.Option(2, "--epochs", min=1),
    target: float = typer.Option(0.98, "--target", help="Cascade quality target as a share of the teacher's"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Train a small student on a teacher run; evaluate it against teacher and gold on held-out items."""
    from llmbus.distill import distill as run_distill
    from llmbus.errors import LlmbusError
    from llmbus.spec import load_spec
    from llmbus.store import Store
    from llmbus.student import TrainSettings

    if student != "encoder":
        raise LlmbusError(f"unknown student kind {student!r}: use encoder")
    spec = load_spec(task)
    folder = out_dir or Path("out") / "distill" / spec.name
    with out.status(f"training the student on teacher run {teacher}…"):
        report = run_distill(spec, Store(db), teacher, folder, TrainSettings(epochs=epochs), target=target)
    if as_json:
        out.print_json(data=report.as_dict())
        return
    out.print(f"[bold]{report.student}[/] distilled from {report.teacher_model} (run {report.teacher_run}) on "
              f"{report.n_train} items in {report.train_seconds:.0f}s; held-out test: {report.n_test} items")
    out.print(f"  {report.metric}: teacher {fmt(report.teacher_quality)} · student {fmt(report.student_quality)} "
              f"({fmt(report.student_quality / report.teacher_quality if report.teacher_quality else None, '.2f')}× "
              f"teacher) · student agrees with teacher {fmt(report.student_agreement)}")
    out.print(f"  latency per item: student {fmt(report.student_latency_ms, '.1f')} ms · teacher "
              f"{fmt(report.teacher_latency_ms, '.0f')} ms")
    out.print(f"  [bold]{report.cascade}[/]: threshold {report.cascade_threshold:.3f} → {report.metric} "
              f"{fmt(report.cascade_quality)}, {report.cascade_escalation_rate:.0%} escalated to the teacher")
    out.print(f"  semantic cache: threshold {report.semantic_threshold:.3f} → {report.semantic_hit_rate:.0%} of "
              f"paraphrases hit, {report.semantic_false_hit_rate:.1%} false hits (negations, other answers)")
    out.print(f"  data: {report.out_dir}/data/*.jsonl · registered in llmbus.yaml: {report.student}, {report.cascade}")


@app.command()
@friendly_errors
def serve(
    config: Path = typer.Option(..., "--config", help="serve.yaml: served models, keys, caches"),
    port: int = typer.Option(8080, "--port"),
    host: str = typer.Option("127.0.0.1", "--host"),
    db: str | None = DB_OPTION,
) -> None:
    """OpenAI-compatible gateway: /v1/chat/completions, /v1/completions, /v1/models, /metrics, /health."""
    import uvicorn

    from llmbus.gateway import Gateway, load_serve_config
    from llmbus.serve import create_app
    from llmbus.store import Store

    gateway = Gateway(load_serve_config(config), Store(db))
    out.print(f"llmbus gateway on http://{host}:{port}/v1 · models: {', '.join(gateway.config.models)}")
    uvicorn.run(create_app(gateway), host=host, port=port, log_level="warning")


@app.command()
@friendly_errors
def report(
    task: str = typer.Argument(..., help="Task spec YAML"),
    traffic: int = typer.Option(1_000_000, "--traffic", help="Items per month for the $/month column"),
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="HTML file to write"),
    runs: str | None = typer.Option(None, "--runs", help="Comma-separated run ids (default: latest of each kind)"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Before/after page: teacher, student, cascade, cached — quality, latency, cost, Pareto plot."""
    from llmbus.report import build_report, render_html
    from llmbus.spec import load_spec
    from llmbus.store import Store

    result = build_report(load_spec(task), Store(db), traffic, runs.split(",") if runs else None)
    output.write_text(render_html(result), encoding="utf-8")
    if as_json:
        out.print_json(data={**result.as_dict(), "output": str(output)})
        return
    out.print(result.headline, highlight=False)
    out.print(f"wrote {output} ({len(result.rows)} configurations)")
