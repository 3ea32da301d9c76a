"""Distillation end to end on packaged SMS data with the embedded teacher (CI-sized)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from llmbus.distill import pick_threshold, split_of
from llmbus.providers import Completion, Request
from llmbus.providers.cascade import escalation_reason
from llmbus.store import Store
from llmbus.student import entities_to_bio, fit_temperature, softmax
from pipeline import Savings


@pytest.mark.slow
def test_student_is_trained_evaluated_exported_and_registered(sms_savings: Savings):
    report = sms_savings.report
    assert report.n_train >= 30 and report.n_test >= 3
    assert report.student_agreement >= 0.7
    assert report.student_latency_ms < report.teacher_latency_ms / 5
    files = {split: Path(path) for split, path in report.files.items()}
    rows = [json.loads(line) for line in files["train"].read_text().splitlines()]
    assert rows and {"id", "input", "teacher", "gold", "split"} <= set(rows[0])
    assert all(split_of(r["id"]) == "train" for r in rows)
    models = yaml.safe_load(sms_savings.config.read_text())["models"]
    assert models[report.cascade]["student"] == report.student
    assert 0 <= models[report.cascade]["threshold"] <= 1.01


@pytest.mark.slow
def test_student_and_cascade_runs_log_their_routes(sms_savings: Savings):
    store, runs = sms_savings.store, sms_savings.runs
    student_calls = list(store.iter_calls(runs["student"]))
    assert len(student_calls) == 24 and all(0.5 <= c["confidence"] <= 1 for c in student_calls)
    cascade_calls = list(store.iter_calls(runs["cascade"]))
    routes = {c["meta"]["route"] for c in cascade_calls}
    assert routes <= {"student", "teacher"}
    for call in cascade_calls:
        meta = call["meta"]
        assert (meta["route"] == "teacher") == (meta["student_confidence"] < meta["threshold"])
    assert all(c["cache_hit"] for c in store.iter_calls(runs["cached"]))


def test_free_text_escalates_on_the_answer_probability():
    asked = Request("Q: who?\nA:", want_confidence=True)
    assert escalation_reason(Completion(" Ada", answer_prob=0.3), asked, threshold=0.5) == "low_confidence"
    assert escalation_reason(Completion(" Ada", answer_prob=0.7), asked, threshold=0.5) is None
    assert escalation_reason(Completion(" Ada"), asked, threshold=0.5) == "low_confidence"  # no probability
    assert escalation_reason(Completion(" Ada"), Request("Q: who?\nA:"), threshold=0.5) is None


def test_pick_threshold_meets_the_target_at_least_escalation():
    confidences = [0.99, 0.95, 0.9, 0.6, 0.55]
    student = [1, 1, 1, 0, 0]
    teacher = [1, 1, 1, 1, 1]
    threshold, quality, escalated = pick_threshold(confidences, student, teacher, target=0.98)
    assert threshold == 0.9 and quality == 1.0 and escalated == pytest.approx(0.4)
    assert pick_threshold(confidences, student, teacher, target=0.5)[2] == 0.0


def test_temperature_scaling_softens_overconfident_logits():
    logits = np.array([[8.0, 0.0], [8.0, 0.0], [0.0, 8.0], [8.0, 0.0]])
    temperature = fit_temperature(logits, [0, 1, 1, 0])  # one confident mistake
    assert temperature > 1.5
    assert softmax(logits / temperature)[0, 0] < softmax(logits)[0, 0]


def test_entities_align_to_bio_tags():
    tokens = ["I", "love", "New", "York", "and", "new", "york"]
    assert entities_to_bio(tokens, [{"text": "New York", "type": "geo-loc"}, {"text": "Mars", "type": "x"}]) == \
        ["O", "O", "B-geo-loc", "I-geo-loc", "O", "O", "O"]


@pytest.mark.slow
def test_token_classification_student_from_a_ner_teacher(tmp_path: Path):
    from llmbus.distill import distill
    from llmbus.run import run_task
    from llmbus.student import EncoderStudent, TrainSettings
    from llmbus.task.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "examples" / "twitter_ner" / "task.yaml")
    store = Store(str(tmp_path / "ner.db"))
    teacher = run_task(spec, "local:gemma-3-270m", store, limit=36, concurrency=4)
    report = distill(spec, store, teacher, tmp_path / "ner", TrainSettings(epochs=3))
    assert report.n_train >= 15 and 0 <= report.student_quality <= 1
    student = EncoderStudent.load(tmp_path / "ner" / "student")
    assert student.meta.kind == "extract" and "O" in student.meta.labels
    entities = student.extract([["Obama", "visited", "Paris", "today"]])[0]
    assert isinstance(entities, list) and all({"text", "type"} <= set(e) for e in entities)


TRIVIA_TASK = Path(__file__).parent.parent / "examples" / "trivia" / "task.yaml"


@pytest.mark.slow
def test_lora_student_for_a_generate_task_is_merged_quantized_compared_and_served(tmp_path: Path):
    """`llmbus distill --student lora` on the packaged trivia task, then the registered student answers a run."""
    db = str(tmp_path / "trivia.db")
    teacher = _llmbus("run", str(TRIVIA_TASK), "--limit", "70", "--db", db, "--json")
    assert teacher.returncode == 0, teacher.stderr
    run_id = json.loads(teacher.stdout)["run_id"]
    result = _llmbus("distill", str(TRIVIA_TASK), "--teacher", run_id, "--student", "lora", "--epochs", "1",
                     "--out", str(tmp_path / "distill"), "--db", db, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = {v["quant"]: v for v in report["variants"]}
    assert list(rows) == ["teacher", "F16", "Q8_0", "Q4_K_M", "base"]
    assert rows["F16"]["size_mb"] > rows["Q8_0"]["size_mb"] > rows["Q4_K_M"]["size_mb"] > 100
    for quant in ("F16", "Q8_0", "Q4_K_M"):
        assert Path(rows[quant]["path"]).is_file() and 0 <= rows[quant]["quality"] <= 1
        assert rows[quant]["prompt_tokens"] < rows["teacher"]["prompt_tokens"] / 3  # no instructions, no shots
    assert report["train"]["last_loss"] < report["train"]["first_loss"]
    assert (tmp_path / "distill" / "student" / "adapter" / "adapter_config.json").is_file()
    models = yaml.safe_load((tmp_path / "llmbus.yaml").read_text())["models"]
    student = models[report["student"]]
    assert student["gguf"] == rows[report["chosen"]]["path"] and "{input}" in student["input_template"]
    assert {f"local:trivia-student-{q}" for q in ("f16", "q8_0", "q4_k_m")} <= set(models)
    assert models[report["cascade"]] == {"student": report["student"], "teacher": "local:gemma-3-270m",
                                         "threshold": pytest.approx(report["cascade_threshold"], abs=1e-5)}
    assert 0 <= report["cascade_escalation_rate"] <= 1 and 0 <= report["cascade_quality"] <= 1

    served = _llmbus("run", str(TRIVIA_TASK), "--model", report["student"], "--limit", "3", "--offset", "70",
                     "--db", db, "--json")
    assert served.returncode == 0, served.stderr
    summary = json.loads(served.stdout)
    assert summary["items"] == 3 and summary["errors"] == 0
    assert summary["tokens_in"] / 3 < rows["teacher"]["prompt_tokens"] / 3

    routed = _llmbus("run", str(TRIVIA_TASK), "--model", report["cascade"], "--limit", "3", "--offset", "73",
                     "--db", db, "--json")
    assert routed.returncode == 0, routed.stderr
    store = Store(db)
    for call in store.iter_calls(json.loads(routed.stdout)["run_id"]):
        meta = call["meta"]
        assert 0 < meta["student_confidence"] <= 1  # the student's answer probability decided the route
        assert (meta["route"] == "teacher") == (meta["student_confidence"] < meta["threshold"])


def _llmbus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmbus.cli", *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "LLMBUS_THREADS": "1"})
