"""Distillation end to end on packaged SMS data with the embedded teacher (CI-sized)."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from llmbus.distill import pick_threshold, split_of
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
    from llmbus.spec import load_spec
    from llmbus.store import Store
    from llmbus.student import EncoderStudent, TrainSettings

    spec = load_spec(Path(__file__).resolve().parents[1] / "examples" / "twitter_ner" / "task.yaml")
    store = Store(str(tmp_path / "ner.db"))
    teacher = run_task(spec, "local:gemma-3-270m", store, limit=36, concurrency=4)
    report = distill(spec, store, teacher, tmp_path / "ner", TrainSettings(epochs=3))
    assert report.n_train >= 15 and 0 <= report.student_quality <= 1
    student = EncoderStudent.load(tmp_path / "ner" / "student")
    assert student.meta.kind == "extract" and "O" in student.meta.labels
    entities = student.extract([["Obama", "visited", "Paris", "today"]])[0]
    assert isinstance(entities, list) and all({"text", "type"} <= set(e) for e in entities)
