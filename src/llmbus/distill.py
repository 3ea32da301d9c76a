"""Distill a teacher run into a small student: data from the call log, training, held-out evaluation, and a
cascade threshold picked on validation data.

    llmbus distill TASK --teacher RUN_ID [--student encoder] [--filter none|judge|human]

Writes OUT/data/{train,val,test}.jsonl (no lock-in), the student folder OUT/student, OUT/distill.json, and
registers `encoder:<task>-student` and `cascade:<task>` in llmbus.yaml so `llmbus run … --model cascade:<task>`
and `llmbus serve` can use them at once.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from llmbus.errors import LlmbusError
from llmbus.providers.config import config_path
from llmbus.semantic_cache import choose_threshold, validation_pairs
from llmbus.store import Store
from llmbus.student import EncoderStudent, TrainSettings, train_classifier, train_tagger
from llmbus.task import metrics
from llmbus.task.data import Item, load_items
from llmbus.task.spec import TaskSpec
from llmbus.teacher_filter import decisions


@dataclass
class Example:
    """One distillation example: the item's input, the teacher's answer, the gold answer, and its split."""

    id: str
    input: str
    teacher: Any
    gold: Any
    teacher_confidence: float | None
    split: str
    tokens: list[str] | None = None
    teacher_text: str | None = None  # the teacher's raw output: what a generative student learns to write


@dataclass
class DistillReport:
    """What distillation produced and how the student compares on held-out items."""

    task: str
    teacher_run: str
    teacher_model: str
    student: str  # model reference of the student
    cascade: str  # model reference of the cascade
    metric: str
    n_train: int
    n_val: int
    n_test: int
    teacher_quality: float
    student_quality: float
    student_agreement: float  # student vs teacher on test items
    cascade_threshold: float
    cascade_quality: float
    cascade_escalation_rate: float
    student_latency_ms: float
    teacher_latency_ms: float
    train_seconds: float
    out_dir: str
    semantic_threshold: float = 1.0  # for the gateway's semantic cache, chosen on this task's inputs
    semantic_hit_rate: float = 0.0
    semantic_false_hit_rate: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json."""
        return asdict(self)


def split_of(item_id: str, seed: int = 0) -> str:
    """train (70%) / val (15%) / test (15%) by a hash of the item id: stable across runs and students."""
    bucket = int(hashlib.sha256(f"distill:{seed}:{item_id}".encode()).hexdigest(), 16) % 100
    return "train" if bucket < 70 else "val" if bucket < 85 else "test"


def collect_examples(spec: TaskSpec, store: Store, teacher_run: str, how: str = "none") -> list[Example]:
    """Teacher answers from the call log joined with the dataset's inputs; failed calls are left out, and so are
    answers the filter (`judge` verdicts, `human` labels) rejects; human corrections replace the teacher's."""
    run = store.get_run(teacher_run)
    if run["task"] != spec.name:
        raise LlmbusError(f"run {run['id']} is of task {run['task']}, not {spec.name}")
    decided = decisions(spec, store, run["id"], how)
    items: dict[str, Item] = {item.id: item for item in load_items(spec)}
    examples = []
    for call in store.iter_calls(run["id"]):
        item = items.get(call["item_id"])
        if call["error_kind"] is not None or item is None or call["parsed"] is None:
            continue
        teacher = call["parsed"]["entities"] if spec.kind == "extract" and isinstance(call["parsed"], dict) \
            else call["parsed"]
        text = (call["raw_output"] or "").strip() or None
        if decided is not None:
            decision = decided.get(item.id)
            if decision is None or not decision.keep:
                continue
            if decision.text is not None:
                teacher, text = decision.answer, decision.text
        tokens = item.fields.get("tokens") if spec.kind == "extract" else None
        examples.append(Example(id=item.id, input=item.text(spec.data.input), teacher=teacher, gold=item.expected,
                                teacher_confidence=call["confidence"], split=split_of(item.id), tokens=tokens,
                                teacher_text=text))
    return examples


def distillation_data(spec: TaskSpec, store: Store, teacher_run: str, out_dir: Path, how: str = "none"
                      ) -> tuple[list[Example], dict[str, list[Example]], dict[str, str]]:
    """The teacher's usable answers, split train/val/test and exported as JSONL under out_dir/data."""
    examples = collect_examples(spec, store, teacher_run, how)
    by_split = {s: [e for e in examples if e.split == s] for s in ("train", "val", "test")}
    if len(by_split["train"]) < 10 or not by_split["test"]:
        raise LlmbusError(f"run {teacher_run} has {len(examples)} usable answers"
                          f"{'' if how == 'none' else f' after --filter {how}'}: distillation needs at least ~20 "
                          "(run the teacher on more items)")
    return examples, by_split, export_jsonl(examples, out_dir / "data")


def teacher_latency_s(store: Store, teacher_run: str) -> float:
    """Median seconds per uncached teacher call."""
    return float(np.median([c["latency_s"] for c in store.iter_calls(teacher_run)
                            if not c["cache_hit"]] or [float("nan")]))


def export_jsonl(examples: list[Example], out_dir: Path) -> dict[str, str]:
    """Write one JSONL file per split; returns {split: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in ("train", "val", "test"):
        path = out_dir / f"{split}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for ex in examples:
                if ex.split == split:
                    handle.write(json.dumps(asdict(ex), ensure_ascii=False) + "\n")
        paths[split] = str(path)
    return paths


def pick_threshold(confidences: list[float], student_scores: list[float], teacher_scores: list[float],
                   target: float = 0.98) -> tuple[float, float, float]:
    """The threshold with the fewest escalations whose cascade quality reaches `target` × teacher quality.

    Returns (threshold, cascade quality, escalation rate) on the given (validation) items."""
    teacher_quality = float(np.mean(teacher_scores)) if teacher_scores else 0.0
    best = (1.01, teacher_quality, 1.0)  # escalate everything: the teacher's own quality
    for threshold in [*sorted(set(confidences)), 0.0]:
        routed = [s if c >= threshold else t for c, s, t in zip(confidences, student_scores, teacher_scores,
                                                                 strict=True)]
        quality = float(np.mean(routed)) if routed else 0.0
        escalated = float(np.mean([c < threshold for c in confidences])) if confidences else 1.0
        if quality >= target * teacher_quality and escalated < best[2]:
            best = (float(threshold), quality, escalated)
    return best


@dataclass
class Scored:
    """A student's answers and confidences on the validation and test items."""

    val: list[Any]
    test: list[Any]
    val_confidence: list[float]
    test_confidence: list[float]


def cascade_on(spec: TaskSpec, student: Scored, val: list[Example], test: list[Example],
               target: float) -> tuple[float, float, float]:
    """(threshold picked on validation, cascade quality on test, test escalation rate): the student's answer
    when its confidence reaches the threshold, else the teacher's."""
    def item_scores(answers: list[Any], examples: list[Example]) -> list[float]:
        return [metrics.item_score(spec.main_metric, a, e.gold) for a, e in zip(answers, examples, strict=True)]

    threshold, _, _ = pick_threshold(student.val_confidence, item_scores(student.val, val),
                                     item_scores([e.teacher for e in val], val), target)
    routed = [a if c >= threshold else e.teacher for a, c, e in zip(student.test, student.test_confidence, test,
                                                                     strict=True)]
    escalated = float(np.mean([c < threshold for c in student.test_confidence])) if test else 0.0
    quality = metrics.compute(spec.main_metric, ((a, e.gold) for a, e in zip(routed, test, strict=True)))
    return threshold, quality, escalated


def distill(spec: TaskSpec, store: Store, teacher_run: str, out_dir: Path,
            settings: TrainSettings = TrainSettings(), target: float = 0.98, register: bool = True,
            how: str = "none") -> DistillReport:
    """Train an encoder student on a teacher run and evaluate it on held-out items."""
    if spec.kind == "generate":
        raise LlmbusError("encoder students cover classify and extract tasks; generate tasks need a LoRA "
                          "student (--student lora)")
    _, by_split, files = distillation_data(spec, store, teacher_run, out_dir, how)
    student_dir = out_dir / "student"
    tick = time.perf_counter()
    if spec.kind == "classify":
        train_classifier([e.input for e in by_split["train"]], [str(e.teacher) for e in by_split["train"]],
                         [e.input for e in by_split["val"]], [str(e.teacher) for e in by_split["val"]],
                         student_dir, settings)
    else:
        train = by_split["train"]
        train_tagger([e.tokens or e.input.split() for e in train], [e.teacher for e in train], student_dir,
                     settings)
    train_seconds = time.perf_counter() - tick
    student = EncoderStudent.load(student_dir, threads=settings.threads)
    val_answers, val_conf = predict(spec, student, by_split["val"])
    test_answers, test_conf = predict(spec, student, by_split["test"])
    metric = spec.main_metric
    test = by_split["test"]
    threshold, cascade_quality, escalated = cascade_on(spec, Scored(val_answers, test_answers, val_conf, test_conf),
                                                       by_split["val"], test, target)
    teacher_latency = teacher_latency_s(store, teacher_run)
    report = DistillReport(
        task=spec.name, teacher_run=teacher_run, teacher_model=store.get_run(teacher_run)["model"],
        student=f"encoder:{spec.name}-student", cascade=f"cascade:{spec.name}", metric=metric,
        n_train=len(by_split["train"]), n_val=len(by_split["val"]), n_test=len(test),
        teacher_quality=metrics.compute(metric, ((e.teacher, e.gold) for e in test)),
        student_quality=metrics.compute(metric, ((a, e.gold) for a, e in zip(test_answers, test, strict=True))),
        student_agreement=metrics.compute(metric, ((a, e.teacher) for a, e in zip(test_answers, test, strict=True))),
        cascade_threshold=threshold, cascade_quality=cascade_quality, cascade_escalation_rate=escalated,
        student_latency_ms=1000 * single_item_latency(spec, student, test[:30]),
        teacher_latency_ms=1000 * teacher_latency, train_seconds=train_seconds, out_dir=str(out_dir), files=files,
    )
    pool = by_split["train"] + by_split["val"]
    positives, negatives = validation_pairs([e.input for e in pool], [e.teacher for e in pool], n=150)
    semantic = choose_threshold(positives, negatives)
    report.semantic_threshold, report.semantic_hit_rate = semantic.threshold, semantic.hit_rate
    report.semantic_false_hit_rate = semantic.false_hit_rate
    (out_dir / "distill.json").write_text(json.dumps(report.as_dict(), indent=2))
    if register:
        register_models(spec, report, student_dir.resolve())
    return report


def predict(spec: TaskSpec, student: EncoderStudent, examples: list[Example]) -> tuple[list[Any], list[float]]:
    """Student answers and confidences (1.0 for extraction, which has no single confidence)."""
    if not examples:
        return [], []
    if spec.kind == "extract":
        return student.extract([e.tokens or e.input.split() for e in examples]), [1.0] * len(examples)
    probs = student.predict_proba([e.input for e in examples])
    answers = [max(p, key=lambda k: p[k]) for p in probs]
    return answers, [p[a] for p, a in zip(probs, answers, strict=True)]


def single_item_latency(spec: TaskSpec, student: EncoderStudent, examples: list[Example]) -> float:
    """Median seconds to answer one item at a time (what a request sees)."""
    ticks = []
    for example in examples:
        tick = time.perf_counter()
        predict(spec, student, [example])
        ticks.append(time.perf_counter() - tick)
    return float(np.median(ticks)) if ticks else float("nan")


def register_models(spec: TaskSpec, report: DistillReport, student_dir: Path, path: Path | None = None) -> None:
    """Add the student and the cascade to llmbus.yaml (other entries are kept)."""
    path = path or config_path()
    config = yaml.safe_load(path.read_text()) if path.is_file() else {}
    config = config or {}
    models = config.setdefault("models", {})
    models[report.student] = {"path": str(student_dir), "threads": 1}
    models[report.cascade] = cascade_entry(report.student, report.teacher_model, report.cascade_threshold)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def cascade_entry(student: str, teacher: str, threshold: float) -> dict[str, Any]:
    """A `cascade:` model's llmbus.yaml entry."""
    return {"student": student, "teacher": teacher, "threshold": round(threshold, 6)}

