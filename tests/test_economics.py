"""The break-even over a task's real systems, and the report's verdict: the cheapest system within the best one's
interval, baselines included; on SMS and topics with the embedded model and a priced remote stub teacher."""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import yaml
from genai_prices import Usage as TableUsage
from genai_prices import calc_price

from conftest import ROOT, SMS_TASK, write_spec
from llmbus.advise.advise import advise
from llmbus.advise.breakeven import Assumptions, horizon_total
from llmbus.distill.decision import economics, projected_student, task_runs
from llmbus.run.engine import run_task
from llmbus.run.options import RunOptions
from llmbus.serve.report import build_report, render_html
from llmbus.store import Store
from llmbus.store.schema import calls
from llmbus.task.data import load_items, split_items
from llmbus.task.spec import TaskSpec, load_spec
from openai_stub import StubServer
from pipeline import Savings
from quality_helpers import add_run

A = Assumptions(volume=1_000_000, error_cost=0.05, label_cost=0.10, horizon_months=12)


def noisy_task(tmp_path: Path, n: int = 300) -> TaskSpec:
    """A classify task whose labels do not follow from the text: cheap baselines score about chance."""
    rng = random.Random(7)
    words = ["lunch", "prize", "call", "home", "win", "free", "meeting", "tomorrow", "money", "late"]
    with (tmp_path / "noisy.jsonl").open("w") as handle:
        for i in range(n):
            text = " ".join(rng.choice(words) for _ in range(6))
            handle.write(json.dumps({"id": f"n{i}", "text": text, "label": rng.choice(["ham", "spam"])}) + "\n")
    return load_spec(write_spec(tmp_path / "noisy.yaml", "noisy.jsonl",
                                fewshot={"k": 0, "strategy": "fixed", "pool_fraction": 0.4}))


def answered(store: Store, spec: TaskSpec, model: str, right: int, n: int, usd_per_call: float) -> str:
    """A run of `model` on the first n eval items, `right` of them answered correctly, each call costing
    `usd_per_call`."""
    items = split_items(spec, load_items(spec)).eval[:n]
    flip = {"ham": "spam", "spam": "ham"}
    rows = [{"item_id": item.id, "expected": item.expected,
             "parsed": item.expected if k < right else flip[item.expected]} for k, item in enumerate(items)]
    run_id = add_run(store, rows, task=spec.name, labels=["ham", "spam"], model=model)
    with store.engine.begin() as conn:
        conn.execute(sa.update(calls).where(calls.c.run_id == run_id).values(cost_usd=usd_per_call))
    store.update_run(run_id, spec_version=spec.version)
    return run_id


def priced_config(tmp_path: Path, **models: dict) -> None:
    Path(os.environ["LLMBUS_CONFIG"]).write_text(yaml.safe_dump({"models": {
        "openai:gpt-4o-mini": {"base_url": "http://127.0.0.1:9/v1"}, **models}}))


def test_report_verdict_says_overlapping_intervals_do_not_pick_a_winner(tmp_path: Path, store: Store):
    priced_config(tmp_path)
    spec = noisy_task(tmp_path)
    teacher = answered(store, spec, "openai:gpt-4o-mini", 95, 100, 0.0002)
    student = answered(store, spec, f"encoder:{tmp_path}/student", 93, 100, 0.000001)
    report = build_report(spec, store, 1_000_000, [teacher, student])
    rows = {r.kind: r for r in report.rows}
    assert rows["student"].quality >= rows["teacher"].quality_lo  # the intervals overlap
    assert report.baselines and all(b.n == 100 for b in report.baselines)  # on the runs' items
    assert all(b.quality_hi < rows["student"].quality_lo for b in report.baselines)  # chance-level baselines
    lo, hi = rows["teacher"].quality_lo, rows["teacher"].quality_hi
    assert report.headline == (
        f"Run student encoder:{tmp_path}/student: its accuracy 0.930 is within the 95% interval of the best, "
        f"teacher openai:gpt-4o-mini (0.950, 95% CI {lo:.3f}–{hi:.3f}), "
        "so these items do not tell them apart, and it costs 200× less per item ($1.00 instead of $200 a month "
        "at 1,000,000 items).")
    decision = report.economics.decision
    assert decision.current == f"openai:gpt-4o-mini (run {teacher})"
    page = render_html(report)
    assert 'id="baselines"' in page and 'id="breakeven"' in page and decision.sentence in page.replace("&#39;", "'")
    assert report.costs_png_base64 and report.plot_png_base64


def test_report_verdict_names_a_clear_winner_only_outside_the_others_intervals(tmp_path: Path, store: Store):
    priced_config(tmp_path)
    spec = noisy_task(tmp_path)
    teacher = answered(store, spec, "openai:gpt-4o-mini", 97, 100, 0.0002)
    student = answered(store, spec, f"encoder:{tmp_path}/student", 60, 100, 0.000001)
    report = build_report(spec, store, 1_000_000, [teacher, student])
    assert report.headline.startswith("Run teacher openai:gpt-4o-mini: its accuracy (0.970, 95% CI")
    assert "no other system's 95% interval reaches it; $200 a month at 1,000,000 items." in report.headline


def test_report_shows_an_unpriced_model_as_unknown_with_one_warning(tmp_path: Path, store: Store):
    priced_config(tmp_path, **{"openai:mystery": {"base_url": "http://127.0.0.1:9/v1", "model": "stub-model"}})
    spec = noisy_task(tmp_path)
    first = answered(store, spec, "openai:mystery", 90, 100, 0.0)
    again = answered(store, spec, "openai:mystery", 91, 100, 0.0)
    report = build_report(spec, store, 1_000_000, [first, again])
    assert all(not r.price_known and r.usd_per_1k != r.usd_per_1k for r in report.rows)  # NaN, never $0
    assert [w for w in report.warnings if "openai:mystery" in w] == [
        "no price for openai:mystery: its cost shows as ? (set usd_per_1m_input and usd_per_1m_output under "
        "models.openai:mystery in llmbus.yaml)"]
    assert report.economics.decision.unpriced == [f"openai:mystery (run {first})", f"openai:mystery (run {again})"]
    page = render_html(report)
    assert page.count('title="no price: see the warning">?</td>') == 2
    assert "openai:mystery" not in report.economics.decision.sentence.split(":")[0]  # never the choice
    shown = subprocess.run([sys.executable, "-m", "llmbus.cli", "report", str(tmp_path / "noisy.yaml"), "--runs",
                            f"{first},{again}", "--db", str(store.engine.url.database), "-o", str(tmp_path / "r.html")],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "250"})
    assert shown.returncode == 0, shown.stderr
    assert [line for line in shown.stderr.splitlines() if "openai:mystery" in line] == [
        f"warning: {report.warnings[-1]}"]


def test_a_projected_student_comes_from_distills_learning_curve(tmp_path: Path, store: Store):
    spec = noisy_task(tmp_path)
    priced_config(tmp_path, **{f"encoder:{spec.name}-student": {"path": str(tmp_path / "distill" / "student")}})
    teacher = answered(store, spec, "openai:gpt-4o-mini", 95, 100, 0.0002)
    (tmp_path / "distill" / "student").mkdir(parents=True)
    (tmp_path / "distill" / "distill.json").write_text(json.dumps({
        "teacher_run": teacher, "n_train": 70, "n_val": 15, "n_test": 15, "train_seconds": 30.0,
        "train_cpu_seconds": 50.0, "projected_teacher_answers": 400}))
    advice = advise(spec, None, only={c["item_id"] for c in store.iter_calls(teacher)})
    econ = economics(spec, store, advice, A, [store.get_run(teacher)])
    projected = next(s for s in econ.systems if s.kind == "projected")
    assert projected.name == "projected student (400 teacher answers)"
    # 400 answers × $0.0002 + 50 CPU-s × 400/100 × $0.05/h; quality 0.9 × the teacher's; run cost of the head baseline
    assert projected.one_off_usd == pytest.approx(400 * 0.0002 + 50 * 4 * 0.05 / 3600)
    assert projected.quality == pytest.approx(0.9 * 0.95)
    head = next(s for s in econ.systems if s.name == "minilm+logreg")
    assert projected.usd_per_item == head.usd_per_item
    assert projected_student(spec, store, [s for s in econ.systems if s.kind != "llm"]) is None  # no teacher


# --- the embedded model with a priced remote stub teacher -------------------------------------------------------


def copy_store(source: Store, path: Path) -> Store:
    """A copy of a session fixture's SQLite store (the fixture stays as the other tests expect it)."""
    with sqlite3.connect(str(source.engine.url.database)) as src, sqlite3.connect(str(path)) as dst:
        src.backup(dst)
    return Store(str(path))


def check_crossovers_meet(econ: object) -> None:
    systems = {s.name: s for s in econ.systems}
    for crossing in econ.decision.crossovers:
        below, above = systems[crossing.below], systems[crossing.above]
        assert horizon_total(below, A, crossing.volume) == pytest.approx(horizon_total(above, A, crossing.volume))
        assert horizon_total(below, A, crossing.volume * 0.9) < horizon_total(above, A, crossing.volume * 0.9)
        assert horizon_total(below, A, crossing.volume * 1.1) > horizon_total(above, A, crossing.volume * 1.1)


def cheapest_total(econ: object) -> str:
    return min((line for line in econ.decision.lines if line.total is not None), key=lambda line: line.total).system


@pytest.mark.slow
def test_breakeven_on_sms_checked_by_hand(sms_savings: Savings, tmp_path: Path):
    store = copy_store(sms_savings.store, tmp_path / "sms.db")
    config = yaml.safe_load(sms_savings.config.read_text())
    spec = load_spec(SMS_TASK)
    with StubServer() as stub:
        config["models"]["openai:gpt-4o-mini"] = {"base_url": stub.base_url}  # listed in the price table
        Path(os.environ["LLMBUS_CONFIG"]).write_text(yaml.safe_dump(config))
        remote = run_task(spec, "openai:gpt-4o-mini", store, RunOptions(limit=24, offset=60))
    runs = task_runs(spec, store)
    assert sms_savings.runs["cached"] not in {r["id"] for r in runs}  # measures the cache, not a model
    items = {c["item_id"] for run in runs for c in store.iter_calls(run["id"])}
    econ = economics(spec, store, advise(spec, None, only=items), A, runs, current=remote)
    lines = {line.system: line for line in econ.decision.lines}
    assert {line.kind for line in lines.values()} == {"baseline", "llm", "student", "cascade"}

    # the remote teacher, independently: genai-prices on each call's tokens, its accuracy from the calls
    remote_calls = list(store.iter_calls(remote))
    per_item = np.mean([float(calc_price(TableUsage(input_tokens=c["tokens_in"], output_tokens=c["tokens_out"]),
                                         model_ref="gpt-4o-mini", provider_id="openai").total_price)
                        for c in remote_calls])
    wrong = np.mean([c["parsed"] != c["expected"] for c in remote_calls])
    teacher = lines[f"openai:gpt-4o-mini (run {remote})"]
    assert teacher.run_month == pytest.approx(per_item * 1e6)
    assert teacher.errors_month == pytest.approx(wrong * 1e6 * 0.05)
    pool = len(split_items(spec, load_items(spec)).pool)  # 8 nearest shots: the whole pool is labeled
    assert teacher.one_off == pytest.approx(pool * 0.10)
    assert teacher.total == pytest.approx(pool * 0.10 + 12 * (per_item + wrong * 0.05) * 1e6)

    # the student: one-off = the embedded teacher's answers at its $/item + training; payback against the remote
    report = json.loads((Path(sms_savings.report.out_dir) / "distill.json").read_text())
    gemma = [c for c in store.iter_calls(report["teacher_run"]) if not c["cache_hit"]]
    answers = report["n_train"] + report["n_val"] + report["n_test"]
    one_off = answers * np.mean([c["cost_usd"] for c in gemma]) + report["train_cpu_seconds"] * 0.05 / 3600
    student_calls = list(store.iter_calls(sms_savings.runs["student"]))
    student = lines[f"{sms_savings.report.student} (run {sms_savings.runs['student']})"]
    assert student.one_off == pytest.approx(one_off)
    student_month = (np.mean([c["cost_usd"] for c in student_calls])
                     + np.mean([c["parsed"] != c["expected"] for c in student_calls]) * 0.05) * 1e6
    saving = (per_item + wrong * 0.05) * 1e6 - student_month
    assert student.payback_months == (pytest.approx(one_off / saving) if saving > 0 else None)

    check_crossovers_meet(econ)
    assert econ.decision.choice == cheapest_total(econ)
    assert econ.decision.sentence.startswith("At 1M items a month")
    assert econ.decision.choice in econ.decision.sentence
    assert ("do not pick a winner" in econ.decision.sentence) == bool(econ.decision.overlapping)


@pytest.mark.slow
def test_breakeven_and_report_on_topics(tmp_path: Path):
    from llmbus.distill.distill import distill
    from llmbus.providers.config import add_models
    from llmbus.train.student import TrainSettings

    spec = load_spec(ROOT / "examples" / "topics" / "task.yaml")
    store = Store(str(tmp_path / "topics.db"))
    with StubServer() as stub:
        Path(os.environ["LLMBUS_CONFIG"]).write_text(yaml.safe_dump({"models": {
            "openai:gpt-4o-mini": {"base_url": stub.base_url}}}))
        teacher = run_task(spec, "openai:gpt-4o-mini", store, RunOptions(limit=200))
        distilled = distill(spec, store, teacher, tmp_path / "distill", TrainSettings(epochs=1),
                            allow_missing_labels=True)
        add_models(distilled.registration)
        for model in ("openai:gpt-4o-mini", distilled.student, distilled.cascade):
            run_task(spec, model, store, RunOptions(limit=40, offset=200))
    run_task(spec, "local:gemma-3-270m", store, RunOptions(limit=10, offset=200, concurrency=2))
    report = build_report(spec, store, 1_000_000)
    econ = report.economics
    kinds = {line.kind for line in econ.decision.lines}
    assert {"baseline", "llm", "student", "cascade"} <= kinds
    assert {b.model for b in report.baselines} == {"tfidf+logreg", "minilm+logreg"}
    answered_items = {c["item_id"] for r in report.rows if r.kind != "cached" for c in store.iter_calls(r.run_id)}
    assert all(b.n == len(answered_items) for b in report.baselines)  # the same items as the runs
    check_crossovers_meet(econ)
    assert econ.decision.choice == cheapest_total(econ) and econ.decision.sentence.startswith("At 1M items a month")
    # the verdict: the cheapest system whose quality is within the best one's interval, baselines included
    systems = [r for r in [*report.rows, *report.baselines] if r.kind != "cached"]
    best = max(systems, key=lambda r: r.quality)
    within = [r for r in systems if r.quality >= best.quality_lo and r.price_known]
    cheapest = min(within, key=lambda r: r.usd_per_1k)
    assert report.headline.startswith(f"Run {cheapest.kind} {cheapest.model}")
    assert ("do not tell them apart" in report.headline) == (cheapest is not best)
    shutil.rmtree(tmp_path / "distill")


def test_advise_volume_json_and_a_bad_volume(tmp_path: Path, store: Store):
    priced_config(tmp_path)
    spec = noisy_task(tmp_path)
    teacher = answered(store, spec, "openai:gpt-4o-mini", 95, 100, 0.0002)

    def advise_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llmbus.cli", "advise", str(tmp_path / "noisy.yaml"), *args,
                               "--db", str(store.engine.url.database)], capture_output=True, text=True, timeout=300)

    shown = advise_cli("--volume", "250k/month", "--error-cost", "0.02", "--json")
    assert shown.returncode == 0, shown.stderr
    breakeven = json.loads(shown.stdout)["breakeven"]
    assert breakeven["assumptions"] == {"volume": 250_000, "error_cost": 0.02, "label_cost": 0.10,
                                        "horizon_months": 12.0}
    assert breakeven["current"] == f"openai:gpt-4o-mini (run {teacher})"
    assert {line["kind"] for line in breakeven["lines"]} == {"baseline", "llm"}
    assert breakeven["sentence"].startswith("At 250k items a month")
    bad = advise_cli("--volume", "lots")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --volume 'lots': give items a month, e.g. 1M/month, 250k or 40000"]
