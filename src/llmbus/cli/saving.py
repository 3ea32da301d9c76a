"""Stop 5: distill a teacher run into a student, serve models behind a gateway, report the savings."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from llmbus.advise.breakeven import ERROR_COST, HORIZON_MONTHS, LABEL_COST
from llmbus.cli.app import DB_OPTION, JSON_OPTION, app, err, fmt, friendly_errors, out, plain, print_json, warn

if TYPE_CHECKING:  # the CLI imports heavy modules only inside the command that needs them
    from llmbus.distill.distill import TeacherData
    from llmbus.store import Store
    from llmbus.task.spec import TaskSpec


@app.command()
@friendly_errors
def distill(
    task: str = typer.Argument(..., help="Task spec YAML"),
    teacher: str | None = typer.Option(None, "--teacher", help="Run id of the teacher's answers"),
    from_traffic: str | None = typer.Option(None, "--from-traffic", help="Learn from a served model's logged "
                                                                         "gateway answers instead (its serve.yaml "
                                                                         "name)"),
    since: str | None = typer.Option(None, "--since", help="With --from-traffic: only requests since this time "
                                                           "(ISO date/time in UTC, or an age: 90m, 24h, 7d)"),
    student: str = typer.Option("encoder", "--student", help="encoder (classify/extract) or lora (generate)"),
    how: str = typer.Option("none", "--filter", help="Teacher answers to learn from: none, judge (verdicts "
                                                     "that passed) or human (labels and corrections)"),
    out_dir: Path | None = typer.Option(None, "--out", help="Output folder (default out/distill/TASK)"),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Passes over the training items (default: "
                                                                    "classify: up to 3, the best picked on "
                                                                    "validation; extract 2; lora 3)"),
    target: float = typer.Option(0.98, "--target", help="Quality target as a share of the reference: the "
                                                        "teacher's for the cascade, F16's for the quantization"),
    allow_missing_labels: bool = typer.Option(False, "--allow-missing-labels",
                                              help="Train even when the teacher's answers cover one label, or a "
                                                   "label has too few answers (warned, not refused)"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Train a small student on a teacher run, or on a served model's traffic; evaluate it against teacher and
    gold (traffic: the served answers or human labels) on held-out items."""
    from llmbus.errors import LlmbusError
    from llmbus.store import Store
    from llmbus.task.spec import load_spec

    if student not in ("encoder", "lora"):
        raise LlmbusError(f"unknown student kind {student!r}: use encoder or lora")
    if (teacher is None) == (from_traffic is None):
        raise LlmbusError("give exactly one of --teacher RUN_ID or --from-traffic SERVED")
    if since is not None and from_traffic is None:
        raise LlmbusError("--since selects traffic: use it with --from-traffic SERVED")
    spec = load_spec(task)
    folder = out_dir or Path("out") / "distill" / spec.name
    if student == "lora" and teacher is None:
        raise LlmbusError("--from-traffic trains encoder students (classify and extract tasks); a LoRA student "
                          "learns from a teacher run (--teacher RUN_ID)")
    with Store(db) as store:
        if student == "lora":
            assert teacher is not None
            _distill_lora(spec, store, teacher, folder, epochs, target, how, as_json)
            return
        source: str | TeacherData = teacher or ""
        if from_traffic is not None:
            from llmbus.distill.traffic import traffic_teacher
            from llmbus.store.traffic import parse_since

            source = traffic_teacher(spec, store, from_traffic, how, parse_since(since) if since else None)
        _distill_encoder(spec, store, source, folder, epochs, target, how, allow_missing_labels, as_json)


def _distill_encoder(spec: TaskSpec, store: Store, teacher: str | TeacherData, folder: Path, epochs: int | None,
                     target: float, how: str, allow_missing_labels: bool, as_json: bool) -> None:
    from llmbus.cli.progress import stage_progress
    from llmbus.distill.distill import distill as run_distill
    from llmbus.providers.config import add_models
    from llmbus.train.student import TrainSettings

    settings = TrainSettings(epochs=epochs) if epochs else None
    with stage_progress(disable=as_json) as progress:
        report = run_distill(spec, store, teacher, folder, settings, target=target, how=how,
                             allow_missing_labels=allow_missing_labels, progress=progress)
    add_models(report.registration)  # comments and order of llmbus.yaml kept
    if as_json:
        out.print_json(data=report.as_dict())
        return
    for warning in report.warnings:
        err.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    _print_heading(report.student, report.teacher_model, report.teacher_run, report.n_train,
                   report.train_seconds, report.n_test)
    share = report.student_quality / report.teacher_quality if report.teacher_quality else None
    out.print(f"  {report.metric} vs {report.reference} on the {report.n_test} test items: teacher "
              f"{fmt(report.teacher_quality)} · "
              f"student {fmt(report.student_quality)} ({fmt(share, '.2f')}× the teacher) · agreement with teacher "
              f"(share of identical answers) {fmt(report.student_vs_teacher_agreement, '.2f')}")
    if report.recipe_scores:
        scores = ", ".join(f"{name} {fmt(score)}" + (" (one label on every item: ranked last)"
                                                      if name in report.recipe_one_label else "")
                           for name, score in report.recipe_scores.items())
        out.print(f"  recipe: {report.recipe}, picked on the {report.n_val} validation items by {report.metric} vs "
                  f"{report.reference} ({scores})")
    out.print(f"  {report.learning_curve_message}")
    if report.learning_curve:
        points = ", ".join(f"{p['n']} → {p['share']:.2f}×" for p in report.learning_curve)
        out.print(f"  learning curve (training answers → share of the teacher on the held-out items): {points}")
    out.print(f"  latency per item: student {fmt(report.student_latency_ms, '.1f')} ms · teacher "
              f"{fmt(report.teacher_latency_ms, '.0f')} ms (median of its logged calls)")
    out.print(f"  [bold]{report.cascade}[/]: confidence threshold {report.cascade_threshold:.3f} (picked on "
              f"validation for {target:.0%} of the teacher's {report.metric}) → {report.metric} vs "
              f"{report.reference} {fmt(report.cascade_quality)} on the test items, "
              f"{report.cascade_escalation_rate:.0%} of them escalated to the teacher")
    out.print(f"  semantic cache: similarity threshold {report.semantic_threshold:.3f} → "
              f"{report.semantic_hit_rate:.0%} of synthetic paraphrases (perturbed inputs) hit, "
              f"{report.semantic_false_hit_rate:.1%} false hits (negated inputs, inputs with another teacher answer)")
    out.print(f"  data: {report.out_dir}/data/*.jsonl · registered in llmbus.yaml: {report.student}, {report.cascade}")
    out.print(_training_spent(report.train_cpu_seconds if report.train_cpu_seconds == report.train_cpu_seconds
                              else report.train_seconds) + "; no model calls (the teacher's answers came from the "
              "call log)", highlight=False)


def _training_spent(seconds: float, what: str = "CPU-seconds") -> str:
    """What training cost, at the CPU price local models are priced at."""
    from llmbus.advise.breakeven import dollars
    from llmbus.settings import USD_PER_HOUR

    return (f"spent: training {seconds:,.0f} {what} ≈ {dollars(seconds * USD_PER_HOUR / 3600)} at "
            f"${USD_PER_HOUR:g}/CPU-hour")


def _distill_lora(spec: TaskSpec, store: Store, teacher: str, folder: Path, epochs: int | None, target: float,
                  how: str, as_json: bool) -> None:
    from rich.progress import Progress

    from llmbus.distill.lora import LoraSettings
    from llmbus.distill.lora_distill import distill_lora
    from llmbus.providers.config import add_models

    with Progress(transient=True, console=err) as progress:
        bar = progress.add_task("LoRA training (loading the base model…)", total=None)
        report = distill_lora(spec, store, teacher, folder, LoraSettings(epochs=epochs or 3), target=target, how=how,
                              on_step=lambda step, total, loss: progress.update(
                                  bar, completed=step, total=total,
                                  description=f"LoRA training, loss {loss:.3f}" if step < total
                                  else "merging, quantizing, comparing precisions on held-out items…"))
    add_models(report.registration)
    if as_json:
        out.print_json(data=report.as_dict())
        return
    _print_heading(report.student, report.teacher_model, report.teacher_run, report.n_train,
                   report.train["seconds"], report.n_test)
    table = Table("model", "size MB", f"{report.metric} vs gold", f"{report.metric} vs teacher", "ms/item",
                  "tokens/s", "prompt tok", "$/1k items", title="held-out test items, answered one at a time")
    names = {"teacher": f"teacher {report.teacher_model}", "base": "base model, no LoRA"}
    for v in report.variants:
        name = names.get(v["quant"], f"student {v['quant']}" + (" ✓" if v["quant"] == report.chosen else ""))
        table.add_row(name, fmt(v["size_mb"], ".0f"), fmt(v["quality"]), fmt(v["agreement"]),
                      fmt(v["latency_ms"], ".0f"), fmt(v["tokens_per_s"], ".0f"), fmt(v["prompt_tokens"], ".0f"),
                      fmt(v["cost_per_1k"], ".4f"))
    out.print(table)
    out.print(f"  [bold]{report.cascade}[/]: answer probability threshold {report.cascade_threshold:.3f} → "
              f"{report.metric} {fmt(report.cascade_quality)} (teacher {fmt(report.teacher_quality)}), "
              f"{report.cascade_escalation_rate:.0%} escalated, ${fmt(report.cascade_cost_per_1k, '.4f')}/1k items")
    out.print(f"  ✓ = registered as [bold]{report.student}[/] (smallest file within {target:.0%} of F16 on "
              f"validation); every precision is registered as {report.student}-f16/-q8_0/-q4_k_m")
    out.print(f"  data: {report.out_dir}/data/*.jsonl · adapter: {report.out_dir}/student/adapter")
    out.print(_lora_spent(report), highlight=False)


def _lora_spent(report: Any) -> str:
    """Training plus the held-out answers of every variant, the teacher's top-up calls priced as it is."""
    import math

    from llmbus.advise.breakeven import dollars
    from llmbus.providers.prices import price_for

    answers = {"teacher": report.n_test, "base": report.n_test}  # students answered validation items too
    calls = sum(v["cost_per_1k"] * answers.get(v["quant"], report.n_val + report.n_test) / 1000
                for v in report.variants if math.isfinite(v["cost_per_1k"]))
    price = price_for(report.teacher_model)
    teacher = f"the teacher's {report.n_test} answers included" if price is None or price.known else \
        f"plus ? for the teacher's {report.n_test} answers (no price for {report.teacher_model})"
    wall = _training_spent(report.train["seconds"], "seconds (wall clock, priced as one CPU)")
    return f"{wall}; held-out answers {dollars(calls)} ({teacher})"


def _print_heading(student: str, teacher_model: str, teacher_run: str, n_train: int, seconds: float,
                   n_test: int) -> None:
    source = f"its traffic, {teacher_run}" if teacher_run.startswith("gateway:") else f"run {teacher_run}"
    out.print(f"[bold]{student}[/] distilled from {teacher_model} ({source}) on {n_train} teacher answers "
              f"in {seconds:.0f}s; held-out test: {n_test} items")


@app.command()
@friendly_errors
def accept(
    candidate: str = typer.Argument(..., help="A model reference (encoder:DIR, local:….gguf, cascade:NAME, openai:…) "
                                              "or a task YAML (a new prompt version, on the incumbent's model)"),
    against: str = typer.Option(..., "--against", help="The served model (its serve.yaml name) whose traffic is "
                                                       "replayed"),
    sample: int = typer.Option(200, "--sample", min=1, help="Distinct logged inputs to replay"),
    max_drop: float = typer.Option(0.01, "--max-drop", min=0.0, help="Refuse when the 95% lower bound of "
                                                                     "candidate − incumbent quality is below −this"),
    slice_field: str | None = typer.Option(None, "--slice", help="Also gate each value of: answer (the incumbent's), "
                                                                 "reference (human or incumbent), key, route, …"),
    since: str | None = typer.Option(None, "--since", help="Only traffic since this time (ISO date/time in UTC, or "
                                                           "an age: 90m, 24h, 7d): e.g. after the student's data"),
    concurrency: int = typer.Option(4, "--concurrency", min=1),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Replay a served model's traffic through a candidate; exit 0 to accept it, 1 to refuse (with the table)."""
    from llmbus.cli.progress import stage_progress
    from llmbus.distill.accept import accept as run_accept
    from llmbus.store import Store
    from llmbus.store.traffic import parse_since

    with Store(db) as store, stage_progress(disable=as_json) as progress:
        report = run_accept(store, candidate, against, sample=sample, max_drop=max_drop, slice_field=slice_field,
                            since=parse_since(since) if since else None, concurrency=concurrency, progress=progress)
    if as_json:
        print_json(report.as_dict())
    else:
        _print_accept(report)
    raise typer.Exit(0 if report.accepted else 1)


def _print_accept(report: Any) -> None:
    for warning in report.warnings:
        warn(warning)
    out.print(f"[bold]{plain(report.candidate)}[/] against [bold]{plain(report.served)}[/] "
              f"({plain(report.incumbent)}) on {report.n} distinct logged inputs; replay: run {report.replay_run} "
              f"({plain(report.model)}, {report.candidate_errors} errors)", highlight=False)
    out.print(f"  quality = {report.metric} against the human labels on {report.n_human} items and against the "
              f"incumbent's own answers on {report.n_incumbent}" + (f"; {report.left_out} items a human failed without "
                                                                    "a correction left out" if report.left_out else ""),
              highlight=False)
    table = Table("slice", "n", "human / incumbent ref", "incumbent", "candidate", "candidate − incumbent [95% CI]",
                  "McNemar p", "gate", title=f"paired comparison, max drop {report.max_drop:g}", title_justify="left")
    for row in report.slices:
        gate = ("[green]pass[/]" if row.passed else "[bold red]FAIL[/]") if row.gated else "not gated (n<10)"
        table.add_row(plain(row.name), str(row.n), f"{row.n_human} / {row.n - row.n_human}", fmt(row.incumbent),
                      fmt(row.candidate), f"{row.delta.value:+.3f} [{row.delta.lo:+.3f}, {row.delta.hi:+.3f}]",
                      fmt(row.p_mcnemar), gate)
    out.print(table)
    out.print(f"  latency per item: candidate {fmt(report.candidate_latency_ms, '.1f')} ms · incumbent "
              f"{fmt(report.incumbent_latency_ms, '.1f')} ms · $/1k: candidate "
              f"{fmt(report.candidate_cost_per_1k, '.4f')} · incumbent {fmt(report.incumbent_cost_per_1k, '.4f')}",
              highlight=False)
    verdict = "[bold green]accepted[/]" if report.accepted else "[bold red]refused[/]"
    out.print(f"{verdict}: {plain(report.reason)}", highlight=False)


@app.command()
@friendly_errors
def serve(
    config: Path = typer.Option(..., "--config", help="serve.yaml: served models, keys, caches"),
    port: int = typer.Option(8080, "--port"),
    host: str = typer.Option("127.0.0.1", "--host"),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes serving the port; they share the store "
                                                            "(keys' limits and budgets, caches)"),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="One line per request on stderr"),
    db: str | None = DB_OPTION,
) -> None:
    """OpenAI-compatible gateway: /v1/chat/completions, /v1/completions, /v1/models, /metrics, /health.

    Served tasks are warmed (nearest-shot pools embedded, backends started) before the port opens."""
    from llmbus.cli.progress import stage_progress
    from llmbus.serve import server

    with stage_progress() as progress:
        gateway = server.prepare(config, db, workers, progress)
    names = ", ".join(gateway.config.models) if gateway is not None else f"{workers} workers"
    out.print(f"llmbus gateway on http://{host}:{port}/v1 · models: {names}", highlight=False)
    server.run(gateway, config, db, host, port, workers, access_log)


@app.command("build-llama")
@friendly_errors
def build_llama_command() -> None:
    """Build llama.cpp's llama-server, llama-bench and llama-quantize once (~10 min: cmake, a C++ compiler) into
    $LLMBUS_HOME/llama.cpp/; prints the bin folder. Binaries of your own: set LLMBUS_LLAMA_BIN=FOLDER instead."""
    from llmbus.providers.llama_build import build_llama

    sys.stdout.write(f"{build_llama()}\n")


@app.command()
@friendly_errors
def report(
    task: str = typer.Argument(..., help="Task spec YAML"),
    traffic: int = typer.Option(1_000_000, "--traffic", help="Items per month for the $/month column and the "
                                                             "break-even"),
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="HTML file to write"),
    runs: str | None = typer.Option(None, "--runs", help="Comma-separated run ids (default: latest of each kind)"),
    error_cost: float = typer.Option(ERROR_COST, "--error-cost", min=0, help="USD a wrong answer costs"),
    label_cost: float = typer.Option(LABEL_COST, "--label-cost", min=0, help="USD a human label costs"),
    horizon: float = typer.Option(HORIZON_MONTHS, "--horizon", min=0.1, help="Months one-off costs are weighed "
                                                                            "over"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Before/after page: teacher, student, cascade, cached and the cheap baselines on the same items — quality,
    latency, cost, Pareto plot — and the break-even at the traffic, with a cost-vs-volume plot."""
    from llmbus.cli.progress import stage_progress
    from llmbus.serve.report import build_report, render_html
    from llmbus.store import Store
    from llmbus.task.spec import load_spec

    spec = load_spec(task)
    with Store(db) as store, stage_progress(disable=as_json) as progress:
        result = build_report(spec, store, traffic, runs.split(",") if runs else None, error_cost=error_cost,
                              label_cost=label_cost, horizon=horizon, progress=progress)
    output.write_text(render_html(result), encoding="utf-8")
    if as_json:
        out.print_json(data={**result.as_dict(), "output": str(output), "warnings": result.warnings})
        return
    out.print(result.headline, highlight=False)
    for warning in result.warnings:
        warn(warning)
    if result.baseline_note:
        out.print(f"  {plain(result.baseline_note)}", highlight=False)
    if result.economics is not None:
        from llmbus.cli.breakeven import print_decision

        print_decision(result.economics, result.metric, price_warnings=False)  # the report's warnings said them
    out.print(f"wrote {output} ({len(result.rows)} configurations, {len(result.baselines)} baselines)")
