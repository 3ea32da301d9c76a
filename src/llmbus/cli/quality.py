"""Stop 3: eval with intervals and a CI gate; LLM judges; calibration; trained judges (labeling: label.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from llmbus.cli.app import DB_OPTION, JSON_OPTION, app, err, fmt, friendly_errors, out, plain, print_json, usd, warn


@app.command("eval")
@friendly_errors
def eval_command(
    run_a: str = typer.Argument(..., help="Run id (or unique prefix)"),
    run_b: str | None = typer.Argument(None, help="A second run on the same task: paired comparison B vs A"),
    gate: str | None = typer.Option(None, "--gate", help="e.g. 'macro_f1>=0.90' or 'accuracy.lo>0.8, errors<=3'"),
    baseline: str | None = typer.Option(None, "--baseline", help="Fail when the metric dropped vs this run"),
    max_drop: float = typer.Option(0.0, "--max-drop", min=0.0, help="Allowed drop of the metric vs --baseline"),
    rounds: int = typer.Option(1000, "--rounds", min=10, help="Bootstrap resamples"),
    junit: str | None = typer.Option(None, "--junit", help="Write the assert: checks as JUnit XML (a test case "
                                                           "per item and assertion) to this file"),
    judge: bool = typer.Option(True, "--judge/--no-judge", help="Run judge assertions not judged yet (their "
                                                                "model calls are logged as judge runs)"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Metrics with 95% bootstrap intervals, assertion pass rates; paired comparison; exit 1 when a gate fails."""
    from llmbus.project import Project
    from llmbus.quality.assertions import junit_xml, run_checks
    from llmbus.quality.gate import check_drop, check_gate, parse_gate

    conditions = parse_gate(gate) if gate else None  # a malformed gate fails before any work
    stage = None if as_json else (lambda text: err.print(text, highlight=False, markup=False))
    with Project(db) as project:
        reports = [project.evaluate(r, rounds=rounds, judge=judge, on_stage=stage) for r in (run_a, run_b) if r]
        if junit:
            runs = [project.store.get_run(report.run_id) for report in reports]
            Path(junit).write_text(junit_xml([(run, run_checks(project.store, run)) for run in runs]),
                                   encoding="utf-8")
        comparison = project.paired(run_a, run_b, rounds=rounds) if run_b else None
        results = []
        if conditions:
            results.append(check_gate(reports[-1], conditions))
        if baseline:
            base_report = project.evaluate(baseline, rounds=rounds)
            results.append(check_drop(base_report, reports[-1], max_drop,
                                      project.paired(baseline, reports[-1].run_id, rounds=rounds)))
    if as_json:
        print_json({"runs": [r.as_dict() for r in reports],
                     "comparison": comparison.as_dict() if comparison else None,
                     "gate": [g.as_dict() for g in results] or None})
    else:
        for report in reports:
            _print_report(report)
        if comparison:
            _print_comparison(comparison)
        for result in results:
            for check in result.checks:
                mark = "[green]pass[/]" if check["passed"] else "[bold red]FAIL[/]"
                out.print(f"gate {check['condition']}: {fmt(check['value'], '.4f')} {mark}", highlight=False)
    if any(not r.passed for r in results):
        raise typer.Exit(1)


def _print_report(report: Any) -> None:
    table = Table(title=f"run {report.run_id} · {report.task} · {report.model} · {report.n} items, "
                        f"{report.errors} errors", title_justify="left")
    for column in ("metric", "value", "95% CI"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, iv in report.values.items():
        label = f"[bold]{name}[/]" if name == report.metric else name
        table.add_row(label, fmt(iv.value, ".4f"), f"{fmt(iv.lo)} – {fmt(iv.hi)}")
    out.print(table)
    if report.assertions:
        checks = Table(title="assertions (pass rate, 95% Wilson CI)", title_justify="left")
        for column in ("assert", "kind", "passed", "pass rate", "95% CI"):
            checks.add_column(column, justify="left" if column in {"assert", "kind"} else "right")
        for name, rate in report.assertions.items():
            checks.add_row(plain(name), rate["kind"], f"{rate['passed']}/{rate['n']}" if rate["value"] is not None
                           else "–", fmt(rate["value"]), f"{fmt(rate['lo'])} – {fmt(rate['hi'])}"
                           if rate["value"] is not None else "not judged")
        out.print(checks)
    if report.per_class:
        classes = Table(title="per class (confusion: rows expected, columns predicted)", title_justify="left")
        for column in ("class", "precision", "recall", "f1", "support", *report.classes, "failed"):
            classes.add_column(column, justify="left" if column == "class" else "right")
        for cls, row in zip(report.classes, report.confusion, strict=True):
            s = report.per_class[cls]
            classes.add_row(cls, fmt(s["precision"]), fmt(s["recall"]), fmt(s["f1"]), str(int(s["support"])),
                            *(str(c) for c in row))
        out.print(classes)
    for warning in report.warnings:
        warn(f"run {report.run_id}: {warning}")


def pass_rate_cell(rate: dict[str, Any] | None) -> str:
    """An assertion's pass rate for a table cell: value (lo–hi), or – when there is none."""
    if not rate or rate["value"] is None:
        return "–"
    return f"{fmt(rate['value'])} ({fmt(rate['lo'])}–{fmt(rate['hi'])})"


def _print_comparison(c: Any) -> None:
    out.print(f"[bold]B {c.run_b} vs A {c.run_a}[/] on {c.n_paired} shared items: {c.metric} "
              f"{fmt(c.a, '.4f')} → {fmt(c.b, '.4f')}, Δ {c.delta.value:+.4f} (95% CI {c.delta.lo:+.4f} … "
              f"{c.delta.hi:+.4f}), paired bootstrap p={fmt(c.p_bootstrap)}", highlight=False)
    if c.p_mcnemar is not None:
        out.print(f"McNemar: only B right {c.mcnemar_b_only}, only A right {c.mcnemar_a_only}, "
                  f"exact p={fmt(c.p_mcnemar)}", highlight=False)
    out.print(c.verdict, highlight=False)


judge_app = typer.Typer(no_args_is_help=True, help="LLM (or trained) judges over a run's answers.")
app.add_typer(judge_app, name="judge")


@judge_app.command("run")
@friendly_errors
def judge_run(
    judge_spec: str = typer.Argument(..., help="Judge spec YAML (a classify spec whose labels are verdicts)"),
    on: str = typer.Option(..., "--on", help="The run whose answers are judged (run A for pairwise)"),
    against: str | None = typer.Option(None, "--against", help="Pairwise: run B, judged in both orders"),
    model: str = typer.Option("local:gemma-3-270m", "--model", "-m", help="Judge model"),
    limit: int | None = typer.Option(None, "--limit", "-n", help="Judge only the first N answers"),
    concurrency: int = typer.Option(4, "--concurrency", "-c", min=1),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Judge a run's answers (pointwise), or two runs against each other (pairwise); every call is logged."""
    from llmbus.cli.progress import stage_progress
    from llmbus.project import Project
    from llmbus.quality.judge import load_judge

    spec = load_judge(judge_spec)
    with Project(db) as project:
        with stage_progress(disable=as_json) as progress:
            report = project.judge(spec, on, against=against, model=model, limit=limit, concurrency=concurrency,
                                   progress=progress)
        spent = project.spend([report.judge_run_id])
    if as_json:
        print_json(report.as_dict())
        return
    out.print(f"judge run [bold]{report.judge_run_id}[/] · {report.judge} ({report.mode}) · {report.model} on run "
              f"{report.target_run_id}" + (f" vs {report.other_run_id}" if report.other_run_id else ""),
              highlight=False)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items()))
    out.print(f"{report.n} verdicts: {counts}; broken {report.broken}; mean score {fmt(report.mean_score)}",
              highlight=False)
    if report.position_consistency is not None:
        out.print(f"position consistency (same winner in both orders): {fmt(report.position_consistency)}")
    out.print(f"judge cost {spent.amount()} · {usd(report.cost_per_1k, not spent.unknown)} $ per 1k judgments",
              highlight=False)
    if report.broken:
        out.print(f"[yellow]{report.broken} verdicts broke the label set, e.g. {plain(report.example_error)}[/]")


@judge_app.command("calibrate")
@friendly_errors
def judge_calibrate(
    judge_run_id: str = typer.Argument(..., help="A judge run (from `llmbus judge run`)"),
    project: str = typer.Option(..., "--project", help="Labeling project with the human labels"),
    min_tpr: float = typer.Option(0.9, "--min-tpr", help="Trust gate: lowest acceptable TPR"),
    min_tnr: float = typer.Option(0.9, "--min-tnr", help="Trust gate: lowest acceptable TNR"),
    min_kappa: float | None = typer.Option(None, "--min-kappa", help="Trust gate: lowest acceptable Cohen's kappa"),
    gate: bool = typer.Option(False, "--gate", help="Exit 1 when the judge is not trusted (for CI)"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Judge vs human labels: kappa, TPR/TNR, confusion, disagreeing items, and the trust gate."""
    from llmbus.quality.calibrate import calibrate
    from llmbus.store import Store

    with Store(db) as store:
        report = calibrate(store, judge_run_id, project, min_tpr=min_tpr, min_tnr=min_tnr, min_kappa=min_kappa)
    if as_json:
        print_json(report.as_dict())
    else:
        a = report.agreement
        out.print(f"judge run [bold]{report.judge_run_id}[/] ({report.judge}) vs project [bold]{report.project}[/] on "
                  f"{a.n} items (positive = {report.positive})", highlight=False)
        out.print(f"Cohen's kappa {fmt(a.kappa)} · accuracy {fmt(a.accuracy)} · TPR {fmt(a.tpr)} · TNR {fmt(a.tnr)} "
                  f"· TP {a.tp} FN {a.fn} FP {a.fp} TN {a.tn}", highlight=False)
        table = Table(title="confusion: rows human, columns judge", title_justify="left")
        columns = sorted({j for row in report.confusion.values() for j in row} | set(report.confusion))
        table.add_column("human \\ judge")
        for column in columns:
            table.add_column(column, justify="right")
        for human in sorted(report.confusion):
            table.add_row(human, *(str(report.confusion[human].get(c, 0)) for c in columns))
        out.print(table)
        if report.disagreements:
            rows = Table(title=f"{len(report.disagreements)} disagreements (for rubric fixes)", title_justify="left")
            for column in ("item", "human", "judge", "conf", "answer"):
                rows.add_column(column)
            for d in report.disagreements[:30]:
                rows.add_row(d["item_id"], d["human"], str(d["judge"]), fmt(d["confidence"], ".2f"),
                             plain(str(d["answer"])[:60]))
            out.print(rows)
        out.print(("[green]" if report.trusted else "[bold red]") + plain(report.reason) + "[/]", highlight=False)
    if gate and not report.trusted:
        raise typer.Exit(1)


@judge_app.command("train")
@friendly_errors
def judge_train(
    project: str = typer.Option(..., "--project", help="Labeling project with the human labels"),
    kind: str = typer.Option("head", "--kind", help="head (MiniLM embeddings + logistic head) | finetuned (MiniLM)"),
    output: str = typer.Option(..., "--out", "-o", help="Folder for the trained judge"),
    folds: int = typer.Option(5, "--folds", min=2, help="Cross-validation folds"),
    epochs: int = typer.Option(1, "--epochs", min=1, help="finetuned: passes over the labels"),
    max_len: int = typer.Option(64, "--max-len", min=16, help="finetuned: tokens per input"),
    threads: int = typer.Option(2, "--threads", min=1, help="torch threads"),
    with_judge: str | None = typer.Option(None, "--with-judge", help="Also learn from this judge run's verdicts "
                                          "on unlabeled items (only if calibration trusts it)"),
    db: str | None = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Train a judge on the human labels, cross-validated against them; judge with the printed --model."""
    from llmbus.cli.progress import stage_progress
    from llmbus.project import Project
    from llmbus.train.student import TrainSettings

    settings = TrainSettings(epochs=epochs, max_len=max_len, threads=threads)
    with Project(db) as call_log, stage_progress(disable=as_json) as progress:
        report, model = call_log.train_judge(project, output, kind=kind, folds=folds, settings=settings,
                                             judge_run=with_judge, progress=progress)
    if as_json:
        print_json({**report.as_dict(), "model": model})
        return
    out.print(f"{kind} judge on {report.n} human labels, {report.folds}-fold CV: Cohen's kappa {fmt(report.kappa)}, "
              f"accuracy {fmt(report.accuracy)}; {fmt(report.ms_per_judgment, '.2f')} ms CPU per judgment, "
              f"${report.usd_per_1k:.6f} per 1k judgments", highlight=False)
    out.print(f"saved; judge with: llmbus judge run JUDGE.yaml --on RUN --model {model}", highlight=False)
