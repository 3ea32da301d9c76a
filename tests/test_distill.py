"""Distillation end to end on packaged SMS data with the embedded teacher (CI-sized)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import write_items, write_spec
from llmbus.distill.cascade import pick_threshold
from llmbus.distill.distill import distill
from llmbus.distill.examples import Example
from llmbus.distill.learning_curve import CurvePoint, curve_message, project, stratified_order
from llmbus.distill.recipe import pick_recipe, selection_score
from llmbus.distill.teacher_coverage import coverage_problems, one_answer_warning
from llmbus.distill.teacher_data import split_of
from llmbus.providers import Completion, Request
from llmbus.providers.cascade import escalation_reason
from llmbus.providers.config import add_models, resolve_model
from llmbus.providers.encoder import EncoderProvider
from llmbus.run.engine import run_task
from llmbus.run.options import RunOptions
from llmbus.store import Store
from llmbus.task.data import load_items
from llmbus.task.spec import TaskSpec, load_spec
from llmbus.train.student import TrainSettings, entities_to_bio, fit_temperature, load_student, softmax
from pipeline import Savings
from quality_helpers import add_run


@pytest.mark.slow
def test_student_is_trained_evaluated_exported_and_registered(sms_savings: Savings):
    report = sms_savings.report
    assert report.n_train >= 30 and report.n_test >= 3
    assert report.student_agreement >= 0.7 and report.student_vs_teacher_agreement >= 0.7
    assert report.recipe in report.recipe_scores and report.learning_curve_message
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
    from llmbus.distill.distill import distill
    from llmbus.run.engine import run_task
    from llmbus.task.spec import load_spec
    from llmbus.train.student import EncoderStudent, TrainSettings

    spec = load_spec(Path(__file__).resolve().parents[1] / "examples" / "twitter_ner" / "task.yaml")
    store = Store(str(tmp_path / "ner.db"))
    teacher = run_task(spec, "local:gemma-3-270m", store, RunOptions(limit=36, concurrency=4))
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


# --- degenerate teacher data, recipe choice, learning curve (fast: tiny data, written straight into a store) ---

FAST = ["--epochs", "1"]


def _tiny(tmp_path: Path, n: int = 80, **overrides: object) -> Path:
    write_items(tmp_path / "items.jsonl", n)
    return write_spec(tmp_path / "task.yaml", "items.jsonl", **overrides)


def _teacher(store: Store, task: Path, answer: dict[str, str] | None = None) -> str:
    """A teacher run over the task's items: the gold answers unless `answer` overrides them per item id."""
    rows = [{"item_id": item.id, "parsed": (answer or {}).get(item.id, item.expected), "expected": item.expected}
            for item in load_items(load_spec(task))]
    return add_run(store, rows, task="tiny", labels=["ham", "spam"], task_path=str(task))


def _distill_cli(task: Path, run_id: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmbus.cli", "distill", str(task), "--teacher", run_id,
                           "--out", str(tmp_path / "out"), "--db", str(tmp_path / "calls.db"), *FAST, *extra],
                          capture_output=True, text=True,
                          timeout=600, env={**os.environ, "LLMBUS_THREADS": "1", "COLUMNS": "200"})


def _one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_one_label_teacher_run_is_refused_with_the_fix(tmp_path: Path, store: Store):
    task = _tiny(tmp_path)
    run_id = _teacher(store, task, {f"m{i}": "ham" for i in range(80)})
    result = _distill_cli(task, run_id, tmp_path)
    _one_error_line(result, "are all 'ham'", "Run the teacher on more, representative items",
                    "--allow-missing-labels")
    assert not (tmp_path / "out" / "student").exists()  # refused before any training


def test_a_label_with_too_few_teacher_answers_is_refused_then_allowed_with_a_warning(tmp_path: Path,
                                                                                     store: Store):
    """The issue's case: one label dominates and another got two answers; old code trained and scored it."""
    task = _tiny(tmp_path)
    train_ids = [f"m{i}" for i in range(80) if split_of(f"m{i}") == "train"]
    answer = {f"m{i}": "ham" for i in range(80)} | {train_ids[0]: "spam", train_ids[1]: "spam"}
    run_id = _teacher(store, task, answer)
    _one_error_line(_distill_cli(task, run_id, tmp_path), "spam (2) has fewer than 3 teacher answers on the "
                    "training split", "--allow-missing-labels")
    result = _distill_cli(task, run_id, tmp_path, "--allow-missing-labels")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "spam (2)" in warnings[0], result.stderr
    assert "agreement with teacher (share of identical answers)" in result.stdout
    assert "vs gold on the" in result.stdout and "agrees" not in result.stdout
    saved = json.loads((tmp_path / "out" / "distill.json").read_text())  # what --json prints
    assert saved["warnings"] == [warnings[0].removeprefix("warning: ")]
    assert 0 <= saved["student_vs_teacher_agreement"] <= 1


def test_distill_returns_its_registration_and_the_cli_writes_it_keeping_the_users_comments(tmp_path: Path,
                                                                                          store: Store):
    """The library writes no config: the student and cascade entries come back as data; `llmbus distill` adds
    them to llmbus.yaml, and the user's comments and key order survive."""
    config = Path(os.environ["LLMBUS_CONFIG"])
    mine = "# team models: ask #ml first\nmodels:\n  openai:stub:   # the teacher\n    base_url: 'http://127.0.0.1:1/v1'\n"
    config.write_text(mine)
    task = _tiny(tmp_path, n=40)
    run_id = _teacher(store, task)
    report = distill(load_spec(task), store, run_id, tmp_path / "lib", TrainSettings(epochs=1, threads=1))
    assert config.read_text() == mine
    student_dir = str((tmp_path / "lib" / "student").resolve())
    assert report.registration == {
        "encoder:tiny-student": {"path": student_dir, "threads": 1},
        "cascade:tiny": {"student": "encoder:tiny-student", "teacher": "openai:stub",
                         "threshold": round(report.cascade_threshold, 6)}}
    assert "registration" not in json.loads((tmp_path / "lib" / "distill.json").read_text())
    result = _distill_cli(task, run_id, tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    assert "registration" not in json.loads(result.stdout)
    text = config.read_text()
    assert text.startswith(mine), text
    models = yaml.safe_load(text)["models"]
    assert list(models) == ["openai:stub", "encoder:tiny-student", "cascade:tiny"]
    assert models["encoder:tiny-student"]["path"] == str((tmp_path / "out" / "student").resolve())


def test_labels_the_teacher_never_gave_are_named_in_a_warning(tmp_path: Path):
    spec = load_spec(_tiny(tmp_path, output={"labels": ["ham", "spam", "promo", "phishing"]}))
    train = [Example(f"m{i}", "x", "spam" if i % 3 == 0 else "ham", None, None, "train") for i in range(30)]
    problems, warnings = coverage_problems(spec, train)
    assert problems == []
    assert len(warnings) == 1 and "cover 2 of the 4 labels" in warnings[0] and "promo, phishing" in warnings[0]


def test_an_entity_teacher_that_found_nothing_is_refused_and_rare_types_warned():
    ner = load_spec(Path(__file__).resolve().parents[1] / "examples" / "twitter_ner" / "task.yaml")
    empty = [Example(f"t{i}", "a tweet", [], [], None, "train") for i in range(20)]
    problems, _ = coverage_problems(ner, empty)
    assert problems and "found 0 entities" in problems[0]
    found = [Example(f"t{i}", "Paris rocks", [{"text": "Paris", "type": "geo-loc"}], [], None, "train")
             for i in range(5)] + [Example("p", "Obama", [{"text": "Obama", "type": "person"}], [], None, "train")]
    problems, warnings = coverage_problems(ner, found)
    assert problems == []  # a rare entity type is normal in NER: a warning, not a refusal
    assert "person (1)" in warnings[0] and "cover 2 of the 10 labels" in warnings[1]


def test_the_recipe_is_picked_on_validation_and_a_head_student_serves_as_encoder(tmp_path: Path, store: Store):
    """A fine-tune that cannot move (learning rate 1e-9) against a head on separable texts: the head wins on
    validation, is saved as the student, and `encoder:` serves it."""
    task = _tiny(tmp_path)
    spec = load_spec(task)
    report = distill(spec, store, _teacher(store, task), tmp_path / "out",
                     TrainSettings(epochs=1, threads=1, learning_rate=1e-9))
    add_models(report.registration)
    assert report.recipe == "head", report.recipe_scores
    assert report.recipe_scores["head"] >= report.recipe_scores["finetune-1ep"] + 0.2
    student = load_student(tmp_path / "out" / "student")
    assert student.meta.recipe == "head" and student.meta.temperature > 0
    run = run_task(spec, report.student, store, RunOptions(limit=6))
    calls = list(store.iter_calls(run))
    assert len(calls) == 6 and all(c["error_kind"] is None and c["parsed"] in ("ham", "spam") for c in calls)
    assert all(sum(c["label_probs"].values()) == pytest.approx(1.0) for c in calls)
    _student_answers_a_run_in_batches(spec, report.student, store)


def _student_answers_a_run_in_batches(spec: TaskSpec, model: str, store: Store) -> None:
    """An encoder student answering a run gets whole batches (one forward pass for many items), and a batch
    answers exactly what one-by-one calls answer."""
    provider = EncoderProvider(resolve_model(model))
    provider.check()
    passes: list[int] = []
    student = provider.loaded
    assert student is not None
    one_pass = student.predict_proba
    student.predict_proba = lambda texts: passes.append(len(texts)) or one_pass(texts)  # type: ignore[method-assign]
    run = run_task(spec, model, store, RunOptions(use_cache=False, concurrency=2), provider=provider)
    calls = list(store.iter_calls(run))
    assert len(calls) > 6 and sum(passes) == len(calls) and max(passes) > 1, passes
    items = {item.id: item for item in load_items(spec)}
    for call in calls:
        raw = items[call["item_id"]].text(spec.data.input)
        alone = provider.complete(Request(call["prompt"], labels=("ham", "spam"), input=raw))
        assert alone.text == call["parsed"] and alone.label_probs == pytest.approx(call["label_probs"])


def test_a_majority_label_candidate_ranks_below_one_that_learned_and_is_warned_about(tmp_path: Path):
    """SMS from 100 teacher answers: a 4-step fine-tune answered 'ham' on all 21 validation items (0.952, one
    spam missed) and beat a head that learned (0.905); it must rank last, and a collapsed student is warned."""
    teacher = ["ham"] * 19 + ["spam"] * 2
    assert selection_score(0.952, ["ham"] * 21, teacher) < selection_score(0.905, ["ham"] * 19 + ["spam"] * 2,
                                                                            teacher)
    assert selection_score(0.9, ["ham"] * 21, ["ham"] * 21) == 0.9  # the teacher gave one label there too
    spec = load_spec(_tiny(tmp_path))
    warning = one_answer_warning(spec, ["ham"] * 38, teacher + ["ham"] * 17)
    assert len(warning) == 1 and "answers 'ham' on all 38 held-out items" in warning[0]
    assert one_answer_warning(spec, ["ham"] * 37 + ["spam"], teacher + ["ham"] * 17) == []


def test_pick_recipe_takes_the_best_validation_score_and_the_cheaper_on_a_tie():
    assert pick_recipe({"head": 0.7, "finetune-1ep": 0.9, "finetune-2ep": 0.9}) == "finetune-1ep"
    assert pick_recipe({"head": 0.9, "finetune-1ep": 0.9}) == "head"
    assert pick_recipe({"head": float("nan"), "finetune-1ep": 0.5}) == "finetune-1ep"


def test_a_student_short_of_the_teacher_gets_a_learning_curve(tmp_path: Path, store: Store):
    """Gold labels no input can predict (every text alike): the student stays far below the teacher, so distill
    retrains it on nested fractions of the answers and says what more answers would buy."""
    with (tmp_path / "items.jsonl").open("w") as handle:
        for i in range(200):
            label = "spam" if split_of(f"coin{i}") == "train" else "ham"  # a hash: a coin flip no text predicts
            handle.write(json.dumps({"id": f"m{i}", "text": f"message number {i}", "label": label}) + "\n")
    task = write_spec(tmp_path / "task.yaml", "items.jsonl")
    report = distill(load_spec(task), store, _teacher(store, task), tmp_path / "out",
                     TrainSettings(epochs=1, threads=1))
    assert report.heldout_student_quality / report.heldout_teacher_quality < 0.9
    sizes = [p["n"] for p in report.learning_curve]
    assert len(sizes) == 4 and sizes == sorted(sizes) and sizes[-1] == report.n_train
    assert "learning curve" in report.learning_curve_message
    assert ("flat" in report.learning_curve_message) == (report.projected_teacher_answers is None)


def test_learning_curve_projection_on_synthetic_points():
    points = [CurvePoint(n, 0.0, 0.3 + 0.1 * np.log(n)) for n in (35, 70, 105, 140)]
    projection = project(points)
    assert projection.gain_per_doubling == pytest.approx(0.1 * np.log(2))
    assert projection.n_needed == pytest.approx(np.exp(6), rel=1e-6)  # 0.3 + 0.1·ln n = 0.9 at n = 403
    message = curve_message(points[-1].share, 140, 200, 1.0, projection, 30)
    assert "0.79× the teacher on the 30 held-out items from 140 training answers (of 200" in message
    # 403 training answers are 70% of ~576 teacher answers: 376 more, rounded up
    assert "projects ~580 teacher answers for 0.9×: run the teacher on ~380 more items" in message
    assert "~760 more items" in curve_message(points[-1].share, 140, 200, 2.0, projection, 30)  # half fail
    assert "the dataset has 300 eval items the teacher has not answered: add data" in curve_message(
        points[-1].share, 140, 200, 1.0, projection, 30, items_left=300)
    assert "add data" not in curve_message(points[-1].share, 140, 200, 1.0, projection, 30, items_left=400)
    slow = project([CurvePoint(n, 0.0, 0.5 + 0.05 * np.log(n)) for n in (35, 70, 105, 140)])
    assert "more data alone is unlikely" in curve_message(0.75, 140, 200, 1.0, slow, 30)  # ~4300 answers
    flat = project([CurvePoint(n, 0.0, 0.6 + 0.001 * np.log(n)) for n in (35, 70, 105, 140)])
    assert flat.n_needed is None
    assert "flat" in curve_message(0.6, 140, 200, 1.0, flat, 30)
    assert "at or above" in curve_message(0.95, 140, 200, 1.0, None, 30)


def test_learning_curve_subsets_keep_every_label_at_its_share():
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    order = stratified_order(labels)
    assert sorted(order) == list(range(100))
    for size in (20, 50, 75):
        counts = {label: sum(labels[r] == label for r in order[:size]) for label in "abc"}
        assert abs(counts["a"] - 0.6 * size) <= 1 and abs(counts["c"] - 0.1 * size) <= 1
