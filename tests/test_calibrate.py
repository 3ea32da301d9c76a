"""Calibration of a judge against human labels: hand-computed figures, the trust gate, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmbus.errors import DataError, LlmbusError
from llmbus.quality import label
from llmbus.quality.calibrate import calibrate
from llmbus.store import Store
from quality_helpers import add_judge_run, add_run

JUDGE = ["pass", "pass", "fail", "fail", "pass", "fail", "pass", "pass", None, "pass"]
HUMAN = ["pass", "pass", "pass", "fail", "fail", "fail", "pass", "pass", "fail", "pass"]


def _setup(store: Store, tiny_task: Path, tmp_path: Path, project: str = "p") -> tuple[str, str]:
    rows = [{"item_id": f"m{i}", "parsed": "ham", "expected": "ham"} for i in range(10)]
    target = add_run(store, rows, task="tiny", labels=["ham", "spam"], task_path=str(tiny_task))
    judge_run = add_judge_run(store, target, {f"m{i}": v for i, v in enumerate(JUDGE)})
    label.create_project(store, project, target, label.LabelSchema(kind="labels", labels=("pass", "fail")))
    path = tmp_path / "human.jsonl"
    path.write_text("".join(json.dumps({"item_id": f"m{i}", "label": h}) + "\n" for i, h in enumerate(HUMAN)))
    assert label.import_labels(store, project, path, "ann") == 10
    return target, judge_run


def test_calibration_hand_computed(store: Store, tiny_task: Path, tmp_path: Path):
    _, judge_run = _setup(store, tiny_task, tmp_path)
    report = calibrate(store, judge_run, "p")
    a = report.agreement
    # Human positives m0 m1 m2 m6 m7 m9: judge passes 5 (misses m2) → TPR 5/6. Human negatives m3 m4 m5 m8: judge
    # fails m3 m5, passes m4, is broken on m8 (a disagreement) → TNR 2/4.
    assert (a.tp, a.fn, a.fp, a.tn, a.other) == (5, 1, 1, 2, 1) and a.n == 10
    assert a.tpr == pytest.approx(5 / 6) and a.tnr == pytest.approx(0.5) and a.accuracy == pytest.approx(0.7)
    # Cohen's kappa over the three judge categories (pass, fail, broken) against human pass/fail:
    # po = 0.7; pe = P(pass)·P(pass) + P(fail)·P(fail) = 0.6·0.6 + 0.3·0.4 = 0.48 → kappa = 0.22 / 0.52
    assert a.kappa == pytest.approx(0.22 / 0.52)
    assert report.confusion == {"pass": {"pass": 5, "fail": 1}, "fail": {"pass": 1, "fail": 2, "(broken)": 1}}
    assert sorted(d["item_id"] for d in report.disagreements) == ["m2", "m4", "m8"]
    assert not report.trusted and "TPR 0.833 < 0.9" in report.reason and "TNR 0.500 < 0.9" in report.reason
    lenient = calibrate(store, judge_run, "p", min_tpr=0.8, min_tnr=0.5)
    assert lenient.trusted and lenient.reason.startswith("trusted")
    assert not calibrate(store, judge_run, "p", min_tpr=0.8, min_tnr=0.5, min_kappa=0.5).trusted


def test_labels_for_unknown_items_are_rejected_whole(store: Store, tiny_task: Path, tmp_path: Path):
    target, _ = _setup(store, tiny_task, tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"item_id": "m1", "label": "fail"}) + "\n"
                   + json.dumps({"item_id": "zz", "label": "pass"}))
    before = list(label.label_rows(store, "p"))
    with pytest.raises(DataError, match=r"bad.jsonl:2: item_id 'zz' is not an item of project 'p'"):
        label.import_labels(store, "p", bad, "ann")
    assert list(label.label_rows(store, "p")) == before  # nothing half-imported
    bad.write_text(json.dumps({"item_id": "m1", "label": "maybe"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: label 'maybe' is not one of pass, fail"):
        label.import_labels(store, "p", bad, "ann")
    label.create_project(store, "q", target, label.LabelSchema(kind="labels", labels=("good", "bad")))
    bad.write_text(json.dumps({"item_id": "m1", "label": "good"}) + "\n")
    label.import_labels(store, "q", bad, "ann")
    with pytest.raises(LlmbusError, match="not verdicts of judge"):
        calibrate(store, next(r["id"] for r in store.list_runs() if r["task"] == "judge"), "q")


def test_cli_calibrate_gate(store: Store, tiny_task: Path, tmp_path: Path):
    _, judge_run = _setup(store, tiny_task, tmp_path)
    env = {**os.environ, "COLUMNS": "200", "LLMBUS_DB": store.url.removeprefix("sqlite:///")}

    def llmbus(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llmbus.cli", *args], capture_output=True, text=True, env=env,
                              timeout=120)

    shown = llmbus("judge", "calibrate", judge_run, "--project", "p")
    assert shown.returncode == 0 and "not trusted unattended" in shown.stdout and "TPR 0.833" in shown.stdout
    assert llmbus("judge", "calibrate", judge_run, "--project", "p", "--gate").returncode == 1
    ok = llmbus("judge", "calibrate", judge_run, "--project", "p", "--gate", "--min-tpr", "0.8", "--min-tnr", "0.5",
                "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["trusted"] is True
    missing = llmbus("judge", "calibrate", judge_run, "--project", "nope")
    assert missing.returncode == 2 and "label project 'nope' not found" in missing.stderr
    (tmp_path / "unknown.jsonl").write_text(json.dumps({"item_id": "x9", "label": "pass"}) + "\n")
    rejected = llmbus("label", "import", str(tmp_path / "unknown.jsonl"), "--project", "p", "--annotator", "b")
    assert rejected.returncode == 2 and "unknown.jsonl:1: item_id 'x9'" in rejected.stderr
    assert len(rejected.stderr.strip().splitlines()) == 1


def test_calibration_on_postgres(postgres_url: str, tiny_task: Path, tmp_path: Path):
    store = Store(postgres_url)
    try:
        _, judge_run = _setup(store, tiny_task, tmp_path, project="pg_calibration")
        report = calibrate(store, judge_run, "pg_calibration")
        assert (report.agreement.tp, report.agreement.tn) == (5, 2) and not report.trusted
    finally:
        store.close()
