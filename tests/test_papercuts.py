"""What a new user hit running the production loop (serve → monitor → label → quality → distill --from-traffic →
accept), one test each, and progress on stderr where no terminal draws it (CI logs, pipes)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_items, write_spec
from llmbus.cli import app
from llmbus.cli.monitor import _print_windows
from llmbus.distill.distill import distill
from llmbus.distill.learning_curve import CurvePoint, curve_message, project
from llmbus.distill.traffic import traffic_teacher
from llmbus.errors import LlmbusError, ModelError
from llmbus.providers.llama_build import LLAMA_CPP_VERSION, TOOLS, build_dir, cpu_key
from llmbus.providers.llamacpp import find_binary
from llmbus.quality.estimate import estimate_quality, judged_sample
from llmbus.quality.label import LabelSchema, create_project, enqueue, import_labels
from llmbus.quality.monitor import MonitoredAnswer, WindowQuality, sampling_probabilities, window_quality
from llmbus.store import Store
from llmbus.store.schema import calls
from quality_helpers import add_run


def llmbus(*args: str, every: str = "0", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess: stderr is a pipe, not a terminal; a progress line per update (interval 0)."""
    return subprocess.run([sys.executable, "-m", "llmbus.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200", "LLMBUS_PROGRESS_EVERY": every}, cwd=cwd)


def progress_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.match(r"\[\d+:\d\d\] ", line)]


# --- llama.cpp: where it is looked for ----------------------------------------------------------------------


def _fake_build(folder: Path) -> None:
    folder.mkdir(parents=True)
    for tool in TOOLS:
        (folder / tool).write_text("#!/bin/sh\n")
        (folder / tool).chmod(0o755)


def test_a_moved_llmbus_home_names_its_own_folder_and_the_build_it_hides(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("LLMBUS_HOME", str(tmp_path / "moved"))
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("LLMBUS_LLAMA_BIN", raising=False)
    moved = tmp_path / "moved" / "llama.cpp" / f"{LLAMA_CPP_VERSION}-{cpu_key()}" / "bin"
    assert build_dir() == moved
    with pytest.raises(ModelError) as plain:
        find_binary("llama-server")
    assert str(moved) in str(plain.value) and "llmbus build-llama" in str(plain.value)
    assert "~/.cache" not in str(plain.value) and "make llama" not in str(plain.value)
    earlier = tmp_path / "user" / ".cache" / "llmbus" / "llama.cpp" / f"{LLAMA_CPP_VERSION}-{cpu_key()}" / "bin"
    _fake_build(earlier)  # built before LLMBUS_HOME moved
    with pytest.raises(ModelError, match=re.escape(f"a build for the default LLMBUS_HOME exists: "
                                                   f"LLMBUS_LLAMA_BIN={earlier}")):
        find_binary("llama-server")
    monkeypatch.setenv("LLMBUS_LLAMA_BIN", str(earlier))
    assert find_binary("llama-server") == earlier / "llama-server"


def test_build_llama_reuses_a_build_in_llmbus_home(tmp_path: Path):
    """The shipped build script and Python agree on the folder (CPU key included): nothing is rebuilt."""
    home = tmp_path / "home"
    _fake_build(home / "llama.cpp" / f"{LLAMA_CPP_VERSION}-{cpu_key()}" / "bin")
    done = subprocess.run([sys.executable, "-m", "llmbus.cli", "build-llama"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "LLMBUS_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(home / "llama.cpp" / f"{LLAMA_CPP_VERSION}-{cpu_key()}" / "bin")


# --- labeling: the queue --------------------------------------------------------------------------------------


def test_label_items_lists_the_queue_with_labels_so_far(tmp_path: Path, store: Store):
    write_items(tmp_path / "items.jsonl", 6)
    task = write_spec(tmp_path / "task.yaml", "items.jsonl")
    rows = [{"item_id": f"m{i}", "parsed": "spam" if i % 2 else "ham", "expected": "ham"} for i in range(6)]
    run_id = add_run(store, rows, labels=["ham", "spam"], task_path=str(task))
    create_project(store, "p", run_id, LabelSchema(kind="labels", labels=("pass", "fail")))
    enqueue(store, "p", [("m3", 0.9), ("m1", 0.5), ("m4", 0.7)], "uncertainty")
    (tmp_path / "gold.jsonl").write_text(json.dumps({"item_id": "m4", "label": "pass"}) + "\n")
    import_labels(store, "p", tmp_path / "gold.jsonl", "alice")
    db = store.url.removeprefix("sqlite:///")
    listed = json.loads(llmbus("label", "items", "--project", "p", "--json", "--db", db).stdout)
    assert [i["item_id"] for i in listed] == ["m3", "m4", "m1"]  # queue order: priority first
    assert listed[1]["labels"] == {"alice": "pass"} and listed[0]["answer"] == "spam" and listed[0]["labels"] == {}
    assert listed[0]["strategy"] == "uncertainty" and listed[0]["call_id"]
    unlabeled = json.loads(llmbus("label", "items", "--project", "p", "--unlabeled", "--json", "--db", db).stdout)
    assert [i["item_id"] for i in unlabeled] == ["m3", "m1"]
    assert unlabeled[0]["fields"]["text"] == "win a free spam prize 3"  # what a gold import file needs
    table = llmbus("label", "items", "--project", "p", "--db", db)
    assert table.returncode == 0 and "3 queued items" in table.stdout and "alice: pass" in table.stdout
    missing = llmbus("label", "items", "--project", "nope", "--db", db)
    assert missing.returncode == 2 and "label project 'nope' not found" in missing.stderr


# --- monitor and quality ------------------------------------------------------------------------------------


def test_sample_1_judges_all_traffic_whatever_the_uncertain_share():
    u = np.array([0.05, 0.1, 0.1, 0.9, 0.0])
    for share in (0.0, 0.5, 1.0):
        assert sampling_probabilities(u, 1.0, share) == pytest.approx([1.0] * 5)
    capped = sampling_probabilities(u, 0.6, 0.5)  # the uncertain answer's share would pass 1: capped, the rest
    assert capped.max() == 1.0 and capped.mean() == pytest.approx(0.6)  # take up what is left: still 60%
    assert (np.diff(capped[[4, 0, 1, 3]]) >= 0).all()  # and more uncertain stays more likely


def _answers(n: int, labeled: int) -> list[MonitoredAnswer]:
    stamp = datetime.now(UTC)
    return [MonitoredAnswer(i, stamp, 0.5, float(i % 4 != 0), 0.5 if i < labeled else None,
                            (float(i % 4 != 0) if i % 9 else float(i % 4 == 0)) if i < labeled else None, "")
            for i in range(n)]


def test_quality_without_labels_points_at_the_project_monitor_filled():
    window = window_quality(_answers(60, 0), None, datetime.now(UTC), project="monitor-sms")
    assert window.refused is not None and "llmbus label serve --project monitor-sms" in window.refused
    assert "label create" not in window.refused and "--run RUN" not in window.refused


def test_the_quality_table_shows_rogan_gladen_and_the_judges_agreement(capsys: pytest.CaptureFixture[str]):
    rng = np.random.default_rng(0)
    human = (rng.random(80) < 0.8).astype(float)
    judge = np.where(rng.random(80) < 0.9, human, 1 - human)
    sample = judged_sample(human, judge, (rng.random(400) < 0.78).astype(float))
    estimate = estimate_quality(sample)
    window = WindowQuality(None, datetime.now(UTC), 400, 80, 0.78, estimate)
    _print_windows("sms", [window])
    shown = capsys.readouterr().out
    rg, agreement = estimate.estimates["rogan-gladen"], estimate.agreement
    assert "Rogan–Gladen" in shown and "judge vs humans" in shown
    assert f"{rg.value:.3f} [{rg.lo:.3f}, {rg.hi:.3f}]" in shown
    assert agreement is not None and f"κ {agreement.kappa:.2f} · TPR {agreement.tpr:.2f}" in shown


# --- accept, distill ------------------------------------------------------------------------------------------


def test_accept_help_prints_a_plain_percent():
    shown = CliRunner().invoke(app, ["accept", "--help"], env={"COLUMNS": "200"}).stdout
    assert "95% lower bound" in shown and "%%" not in shown


def test_a_nearly_flat_curve_is_called_flat_not_extrapolated():
    """Four points gaining ~0.02× per doubling: the fit crosses 0.9× at hundreds of millions of answers."""
    points = [CurvePoint(n, 0.0, s) for n, s in ((35, 0.50), (70, 0.53), (105, 0.52), (140, 0.55))]
    projection = project(points)
    assert projection.n_needed is None and projection.gain_per_doubling > 0.01
    message = curve_message(0.55, 140, 200, 1.0, projection, 60)
    assert "nearly flat" in message and "teacher answers for" not in message
    assert not re.search(r"~\d{6,}", message)  # no absurd count


def _gateway_traffic(store: Store, task: Path, n: int = 40) -> str:
    """A served model's logged traffic, written straight into the store: what the gateway records."""
    texts = [f"win a free spam prize {i}" if i % 3 == 0 else f"see you at lunch {i}" for i in range(n)]
    rows = [{"item_id": f"req{i}", "parsed": "spam" if "spam" in t else "ham", "raw": "spam" if "spam" in t else "ham",
             "confidence": 0.9} for i, t in enumerate(texts)]
    run_id = add_run(store, rows, task="gateway:sms", labels=["ham", "spam"], task_path=str(task))
    with store.engine.begin() as conn:
        for i, text in enumerate(texts):
            conn.execute(calls.update().where(calls.c.run_id == run_id, calls.c.item_id == f"req{i}")
                         .values(meta_json=json.dumps({"route": "backend", "input": text})))
    return run_id


def test_distill_from_traffic_with_human_labels_says_to_label_more(tmp_path: Path, store: Store):
    write_items(tmp_path / "items.jsonl", 40)
    task = write_spec(tmp_path / "task.yaml", "items.jsonl")
    run_id = _gateway_traffic(store, task)
    create_project(store, "traffic", run_id, LabelSchema(kind="labels", labels=("ham", "spam")))
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps({"item_id": f"req{i}", "label": "ham"}) + "\n" for i in range(1, 6)))
    import_labels(store, "traffic", path, "alice")
    spec = write_spec(tmp_path / "task.yaml", "items.jsonl")
    from llmbus.task.spec import load_spec

    few = traffic_teacher(load_spec(spec), store, "sms", "human")
    with pytest.raises(LlmbusError) as refused:
        distill(load_spec(spec), store, few, tmp_path / "out")
    assert "llmbus label serve --project traffic" in str(refused.value)
    assert "run the teacher" not in str(refused.value).lower()
    # Enough labels, but one label only on the training split: the coverage refusal says the same.
    path.write_text("".join(json.dumps({"item_id": f"req{i}", "label": "ham"}) + "\n" for i in range(40)))
    import_labels(store, "traffic", path, "bob")
    with pytest.raises(LlmbusError) as one_label:
        distill(load_spec(spec), store, traffic_teacher(load_spec(spec), store, "sms", "human"), tmp_path / "out")
    assert "are all 'ham'" in str(one_label.value) and "llmbus label serve --project traffic" in str(one_label.value)
    assert "run the teacher" not in str(one_label.value).lower()


# --- progress where stderr is not a terminal ------------------------------------------------------------------


def test_run_without_a_terminal_prints_plain_periodic_progress(tmp_path: Path, stub_model: str):
    write_items(tmp_path / "items.jsonl", 40)
    task = write_spec(tmp_path / "task.yaml", "items.jsonl")
    done = llmbus("run", str(task), "-m", stub_model, "--concurrency", "1")
    assert done.returncode == 0, done.stderr
    lines = progress_lines(done.stderr)
    answered = [int(m.group(1)) for line in lines if (m := re.search(r"answering (\d+)/(\d+) · ", line))]
    assert len(answered) >= 2 and answered == sorted(answered), done.stderr  # periodic, not only at the end
    assert re.search(r"answering (\d+)/\1 · [\d.]+ items/s · errors 0 · accuracy 1\.000$", lines[-1]), lines[-1]
    assert "━" not in done.stderr  # no rich bar drawn into the log
    quiet = llmbus("run", str(task), "-m", stub_model, every="3600")  # a short run: only the final line
    assert len(progress_lines(quiet.stderr)) == 1, quiet.stderr
    silent = llmbus("run", str(task), "-m", stub_model, "--json")
    assert progress_lines(silent.stderr) == []


def test_judge_run_report_accept_and_monitor_report_progress(tmp_path: Path, stub_model: str):
    write_items(tmp_path / "items.jsonl", 40)
    task = write_spec(tmp_path / "task.yaml", "items.jsonl")
    db = str(tmp_path / "p.db")
    run_id = json.loads(llmbus("run", str(task), "-m", stub_model, "--json", "--db", db).stdout)["run_id"]
    judge = write_spec(tmp_path / "judge.yaml", "items.jsonl", name="judge", fewshot={"k": 0},
                       output={"labels": ["spam", "ham"]}, prompt="SMS: {{ item.text }} ({{ item.answer }})\nLabel:")
    judged = llmbus("judge", "run", str(judge), "--on", run_id, "-m", stub_model, "--db", db)
    assert judged.returncode == 0, judged.stderr
    assert re.search(rf"judging \d+ answers of run {run_id} (\d+)/\1$", progress_lines(judged.stderr)[-1])
    reported = llmbus("report", str(task), "-o", str(tmp_path / "r.html"), "--db", db)
    assert reported.returncode == 0, reported.stderr
    assert progress_lines(reported.stderr)[-1].endswith("evaluating 1 runs (bootstrap intervals) 1/1")

    store = Store(db)
    _gateway_traffic(store, task)
    store.close()
    accepted = llmbus("accept", stub_model, "--against", "sms", "--db", db)
    assert accepted.returncode in (0, 1), accepted.stderr
    lines = progress_lines(accepted.stderr)
    assert any(re.search(rf"replaying 40 inputs through {stub_model} 40/40$", line) for line in lines), lines
    monitored = llmbus("monitor", "sms", "--judge", str(judge), "--judge-model", stub_model, "--sample", "1",
                       "--db", db)
    assert monitored.returncode == 0, monitored.stderr
    assert "40 sampled, 40 judged" in monitored.stdout  # --sample 1: every call, under the default share
    assert re.search(r"judging 40 answers of run \w+ 40/40$", progress_lines(monitored.stderr)[-1])
