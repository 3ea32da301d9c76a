"""Distill a teacher run into a small student: data from the call log, training, held-out evaluation, and a
cascade threshold picked on validation data.

    llmbus distill TASK --teacher RUN_ID [--student encoder] [--filter none|judge|human] [--allow-missing-labels]
    llmbus distill TASK --from-traffic SERVED [--since 7d] [--filter …]   (the gateway's answers: traffic.py)

Teacher answers that cannot teach (one label, or a label with fewer than MIN_LABEL_EXAMPLES answers on the
training split; teacher_coverage.py) are refused before any training. A classify student's recipe is picked on
validation items: a logistic head on frozen MiniLM embeddings, or MiniLM fine-tuned for 1..epochs epochs (a tie
goes to the cheaper). Below TARGET_SHARE × the teacher, a learning curve says how many teacher answers would
close the gap (learning_curve.py).

Writes OUT/data/{train,val,test}.jsonl (no lock-in), the student folder OUT/student, OUT/distill.json, and
registers `encoder:<task>-student` and `cascade:<task>` in llmbus.yaml so `llmbus run … --model cascade:<task>`
and `llmbus serve` can use them at once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmbus.distill.examples import Example
from llmbus.distill.learning_curve import TARGET_SHARE, CurvePoint, curve_message, measure_curve, project
from llmbus.distill.teacher_coverage import check_coverage, gold_coverage_warning, one_answer_warning
from llmbus.distill.teacher_filter import decisions
from llmbus.embed import StageCallback, embed
from llmbus.errors import LlmbusError
from llmbus.extras import check
from llmbus.providers.config import add_models
from llmbus.run.cache import choose_threshold, validation_pairs
from llmbus.store import Store
from llmbus.store.traffic import GATEWAY_PREFIX
from llmbus.task import metrics
from llmbus.task.data import Item, load_items, split_items
from llmbus.task.spec import TaskSpec
from llmbus.train.student import (
    HeadStudent,
    Student,
    TrainSettings,
    load_student,
    train_classifier,
    train_head,
    train_tagger,
)


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
    teacher_quality: float  # the teacher's answers vs gold, on the test items
    student_quality: float  # the student's answers vs gold, on the test items
    # The main metric with the teacher's answers in place of gold, on the test items (kept for compatibility;
    # for accuracy it equals student_vs_teacher_agreement).
    student_agreement: float
    student_vs_teacher_agreement: float  # share of test items where the student's answer is the teacher's
    cascade_threshold: float
    cascade_quality: float
    cascade_escalation_rate: float
    student_latency_ms: float
    teacher_latency_ms: float
    train_seconds: float
    out_dir: str
    # What "quality" is measured against on held-out items: the dataset's gold answers for a teacher run; for
    # traffic (no gold) the served model's answers, or the human labels under --filter human.
    reference: str = "gold"
    semantic_threshold: float = 1.0  # for the gateway's semantic cache, chosen on this task's inputs
    semantic_hit_rate: float = 0.0
    semantic_false_hit_rate: float = 0.0
    recipe: str = "finetune"  # the student recipe picked on validation: head, or finetune-<k>ep
    recipe_scores: dict[str, float] = field(default_factory=dict)  # each candidate's validation quality vs gold
    recipe_one_label: list[str] = field(default_factory=list)  # candidates ranked last: one label on every item
    # On all held-out items (validation + test): the share of the teacher the learning curve starts from.
    heldout_teacher_quality: float = float("nan")
    heldout_student_quality: float = float("nan")
    learning_curve: list[dict[str, Any]] = field(default_factory=list)  # {n, quality, share} on held-out items
    learning_curve_message: str = ""
    projected_teacher_answers: int | None = None  # usable teacher answers the curve projects for the target
    warnings: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    train_cpu_seconds: float = float("nan")  # CPU time of training (all threads): the break-even's training cost

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json."""
        return asdict(self)


def split_of(item_id: str, seed: int = 0) -> str:
    """train (70%) / val (15%) / test (15%) by a hash of the item id: stable across runs and students."""
    bucket = int(hashlib.sha256(f"distill:{seed}:{item_id}".encode()).hexdigest(), 16) % 100
    return "train" if bucket < 70 else "val" if bucket < 85 else "test"


@dataclass
class TeacherData:
    """The answers a student learns from, wherever they were logged: a teacher run, or a served model's traffic."""

    ref: str  # the teacher run's id, or gateway:NAME for traffic
    what: str  # for messages: "teacher run 1a2b3c4d", "the traffic of gateway:sms"
    model: str
    examples: list[Example]
    latency_s: float  # median seconds per uncached teacher call
    answered: int  # items the teacher answered, usable or not (for the learning curve's answers per item)
    items_left: int | None = None  # dataset eval items it has not answered (None for traffic)
    reference: str = "gold"  # what held-out quality is measured against (DistillReport.reference)
    how: str = "none"
    more: str = "run the teacher on more items"  # the fix when there are too few answers
    warnings: list[str] = field(default_factory=list)

    @property
    def runs_teacher(self) -> bool:
        """More answers come from running the teacher (a teacher run), not from serving or labeling traffic."""
        return not self.ref.startswith(GATEWAY_PREFIX)


def run_teacher(spec: TaskSpec, store: Store, teacher_run: str, how: str = "none") -> TeacherData:
    """A teacher run's usable answers (after the filter) and what distill reports about it."""
    run = store.get_run(teacher_run)
    examples = collect_examples(spec, store, run["id"], how)
    answered = {c["item_id"] for c in store.iter_calls(run["id"])}
    left = sum(1 for item in split_items(spec, load_items(spec)).eval if item.id not in answered)
    return TeacherData(run["id"], f"teacher run {run['id']}", run["model"], examples,
                       teacher_latency_s(store, run["id"]), len(answered), left, how=how)


def teacher_answer(spec: TaskSpec, parsed: Any) -> Any:
    """What a student learns from a parsed answer (extraction: its entity list)."""
    return parsed["entities"] if spec.kind == "extract" and isinstance(parsed, dict) else parsed


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
        teacher = teacher_answer(spec, call["parsed"])
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
    return split_examples(collect_examples(spec, store, teacher_run, how), f"run {teacher_run}", how, out_dir)


def split_examples(examples: list[Example], what: str, how: str, out_dir: Path,
                   more: str = "run the teacher on more items"
                   ) -> tuple[list[Example], dict[str, list[Example]], dict[str, str]]:
    """Examples by split (exported as JSONL under out_dir/data); too few to train and test on is refused."""
    by_split = {s: [e for e in examples if e.split == s] for s in ("train", "val", "test")}
    if len(by_split["train"]) < 10 or not by_split["test"]:
        raise LlmbusError(f"{what} has {len(examples)} usable answers"
                          f"{'' if how == 'none' else f' after --filter {how}'}: distillation needs at least ~20 "
                          f"({more})")
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


def task_metric(spec: TaskSpec, pairs: Iterable[tuple[Any, Any]]) -> float:
    """The task's main metric over (answer, reference) pairs, over the task's label set as runs score it."""
    return metrics.compute(spec.main_metric, pairs, spec.output.labels or ())


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
    quality = task_metric(spec, ((a, e.gold) for a, e in zip(routed, test, strict=True)))
    return threshold, quality, escalated


@dataclass
class RecipeChoice:
    """The classify recipe picked on validation, every candidate's score, and how to retrain it on some rows."""

    recipe: str  # head | finetune-<k>ep
    scores: dict[str, float]
    retrain: Callable[[list[int]], float] | None  # training rows → held-out quality of the same recipe
    one_label: list[str] = field(default_factory=list)  # candidates that gave one label on every validation item


def pick_recipe(scores: dict[str, float]) -> str:
    """The best validation score; candidates come cheapest first, and a tie (or nan) keeps the cheaper."""
    best = next(iter(scores))
    for name, score in scores.items():
        if score > scores[best] or (scores[best] != scores[best] and score == score):
            best = name
    return best


def choose_classifier(spec: TaskSpec, by_split: dict[str, list[Example]], student_dir: Path,
                      settings: TrainSettings, progress: StageCallback | None = None) -> RecipeChoice:
    """Train the head and fine-tune MiniLM for 1..settings.epochs epochs, score each on the validation items
    against gold, and save the best to student_dir (a tie goes to the cheaper: head, then fewer epochs).

    A candidate answering one label on every validation item, where the teacher gives several, ranks below every
    other (selection_score): on skewed labels a majority-label student scores well on a few items and has
    learned nothing."""
    train, val, held_out = by_split["train"], by_split["val"], by_split["val"] + by_split["test"]
    texts, labels = [e.input for e in train], [str(e.teacher) for e in train]
    val_texts, val_labels = [e.input for e in val], [str(e.teacher) for e in val]
    qualities: list[float] = []  # every ranked candidate's validation quality, in ranking order

    def quality(predicted: list[str], examples: list[Example]) -> float:
        return task_metric(spec, zip(predicted, [e.gold for e in examples], strict=True))

    def score(predicted: list[str]) -> float:
        qualities.append(quality(predicted, val))
        return selection_score(qualities[-1], predicted, val_labels)

    ranks: dict[str, float] = {}
    head: HeadStudent | None = None
    features = np.zeros((0, 384))
    if len(set(labels)) >= 2 and val:
        features = embed(texts + [e.input for e in held_out], progress=progress, what="inputs")  # train, val, test
        val_rows = features[len(texts):len(texts) + len(val)]
        head = train_head(features[:len(texts)], labels, val_rows, val_labels, settings.seed)
        ranks["head"] = score(argmax(head.head.predict_features(val_rows)))
    meta = train_classifier(texts, labels, val_texts, val_labels, student_dir, settings,
                            classes=spec.output.labels, score=score if val else None, progress=progress)
    ranks |= {f"finetune-{k}ep": s for k, s in enumerate(meta.epoch_scores, 1)}
    scores = dict(zip(ranks, qualities, strict=True))
    one_label = [name for name in ranks if ranks[name] < scores[name]]
    if not ranks:  # no validation items: nothing to choose on
        return RecipeChoice(f"finetune-{meta.epochs}ep", {}, None)
    chosen = pick_recipe(ranks)
    if head is not None and chosen == "head":
        shutil.rmtree(student_dir)
        head.save(student_dir)

        def retrain_head(rows: list[int]) -> float:
            fitted = train_head(features[rows], [labels[r] for r in rows], val_rows, val_labels)
            return quality(argmax(fitted.head.predict_features(features[len(texts):])), held_out)

        return RecipeChoice(chosen, scores, retrain_head, one_label)

    def retrain_finetune(rows: list[int]) -> float:
        with tempfile.TemporaryDirectory(prefix="llmbus-curve-") as scratch:
            train_classifier([texts[r] for r in rows], [labels[r] for r in rows], [], [], Path(scratch), settings,
                             classes=spec.output.labels, stop_after=meta.epochs)
            answers, _ = predict(spec, load_student(Path(scratch), settings.threads), held_out)
        return quality([str(a) for a in answers], held_out)

    return RecipeChoice(chosen, scores, retrain_finetune, one_label)


def selection_score(quality: float, predicted: list[str], teacher: list[str]) -> float:
    """A candidate's rank on validation: its quality, less 1 (below every other) when it gives one label on
    every item where the teacher gives several."""
    return quality - (1.0 if len(set(predicted)) < 2 <= len(set(teacher)) else 0.0)


def argmax(probs: list[dict[str, float]]) -> list[str]:
    """The most likely label of each probability dict."""
    return [max(p, key=lambda k: p[k]) for p in probs]


def same_answer(spec: TaskSpec, a: Any, b: Any) -> bool:
    """Whether two answers are identical (entity lists: the same entities, in any order)."""
    if spec.kind == "extract":
        _, fp, fn = metrics.entity_counts(a, b)
        return fp == 0 and fn == 0
    return str(a) == str(b)


def distill(spec: TaskSpec, store: Store, teacher_run: str | TeacherData, out_dir: Path,
            settings: TrainSettings | None = None, target: float = 0.98, register: bool = True,
            how: str = "none", allow_missing_labels: bool = False,
            progress: StageCallback | None = None) -> DistillReport:
    """Train an encoder student on a teacher run (its id, filtered by `how`) or on TeacherData (a served
    model's traffic: traffic.traffic_teacher) and evaluate it on held-out items; `settings.epochs` is the
    most fine-tuning epochs a classify student tries (default 3; a tagger trains 2)."""
    if spec.kind == "generate":
        raise LlmbusError("encoder students cover classify and extract tasks; generate tasks need a LoRA "
                          "student (--student lora)")
    check("train", "llmbus distill")
    settings = settings or TrainSettings(epochs=3 if spec.kind == "classify" else 2)
    teacher = run_teacher(spec, store, teacher_run, how) if isinstance(teacher_run, str) else teacher_run
    examples, by_split, files = split_examples(teacher.examples, teacher.what, teacher.how, out_dir, teacher.more)
    warnings = teacher.warnings + check_coverage(spec, teacher.what, by_split["train"], allow_missing_labels,
                                                 None if teacher.runs_teacher else teacher.more)
    student_dir = out_dir / "student"
    tick, cpu_tick = time.perf_counter(), time.process_time()
    train, val, test = by_split["train"], by_split["val"], by_split["test"]
    if spec.kind == "classify":
        choice = choose_classifier(spec, by_split, student_dir, settings, progress)
    else:
        train_tagger([e.tokens or e.input.split() for e in train], [e.teacher for e in train], student_dir,
                     settings, progress)
        choice = RecipeChoice(f"finetune-{settings.epochs}ep", {}, None)
    train_seconds, train_cpu = time.perf_counter() - tick, time.process_time() - cpu_tick
    student = load_student(student_dir, threads=settings.threads)
    if progress:
        progress("answering the held-out items", 0, len(val) + len(test))
    val_answers, val_conf = predict(spec, student, val)
    if progress:
        progress("answering the held-out items", len(val), len(val) + len(test))
    test_answers, test_conf = predict(spec, student, test)
    if progress:
        progress("answering the held-out items", len(val) + len(test), len(val) + len(test))
    metric = spec.main_metric
    threshold, cascade_quality, escalated = cascade_on(spec, Scored(val_answers, test_answers, val_conf, test_conf),
                                                       val, test, target)
    report = DistillReport(
        task=spec.name, teacher_run=teacher.ref, teacher_model=teacher.model,
        student=f"encoder:{spec.name}-student", cascade=f"cascade:{spec.name}", metric=metric,
        n_train=len(train), n_val=len(val), n_test=len(test),
        teacher_quality=task_metric(spec, ((e.teacher, e.gold) for e in test)),
        student_quality=task_metric(spec, ((a, e.gold) for a, e in zip(test_answers, test, strict=True))),
        student_agreement=task_metric(spec, ((a, e.teacher) for a, e in zip(test_answers, test, strict=True))),
        student_vs_teacher_agreement=float(np.mean([same_answer(spec, a, e.teacher)
                                                    for a, e in zip(test_answers, test, strict=True)])),
        cascade_threshold=threshold, cascade_quality=cascade_quality, cascade_escalation_rate=escalated,
        student_latency_ms=1000 * single_item_latency(spec, student, test[:30]),
        teacher_latency_ms=1000 * teacher.latency_s, train_seconds=train_seconds, out_dir=str(out_dir), files=files,
        reference=teacher.reference,
        recipe=choice.recipe, recipe_scores=choice.scores, recipe_one_label=choice.one_label,
        warnings=warnings + one_answer_warning(spec, val_answers + test_answers, [e.teacher for e in val + test],
                                               None if teacher.runs_teacher else teacher.more)
        + gold_coverage_warning(spec, test),
        heldout_teacher_quality=task_metric(spec, ((e.teacher, e.gold) for e in val + test)),
        heldout_student_quality=task_metric(spec, ((a, e.gold) for a, e in zip(val_answers + test_answers,
                                                                               val + test, strict=True))),
        train_cpu_seconds=train_cpu,
    )
    add_learning_curve(report, choice, [str(e.teacher) for e in train], len(examples) / max(1, teacher.answered),
                       teacher.items_left, progress, None if teacher.runs_teacher else teacher.more)
    pool = train + val
    if progress:
        progress("semantic-cache threshold", 0, None)
    positives, negatives = validation_pairs([e.input for e in pool], [e.teacher for e in pool], n=150)
    semantic = choose_threshold(positives, negatives)
    report.semantic_threshold, report.semantic_hit_rate = semantic.threshold, semantic.hit_rate
    report.semantic_false_hit_rate = semantic.false_hit_rate
    (out_dir / "distill.json").write_text(json.dumps(report.as_dict(), indent=2))
    if register:
        register_models(spec, report, student_dir.resolve())
    return report


def add_learning_curve(report: DistillReport, choice: RecipeChoice, train_labels: list[str], answers_per_item: float,
                       items_left: int | None = None, progress: StageCallback | None = None,
                       more: str | None = None) -> None:
    """The student's share of the teacher on the held-out items; below TARGET_SHARE, the curve over train
    fractions and its projection of the teacher answers needed (classify students only: the tagger keeps one
    recipe). The curve's students are never served, so scoring them on the test items too halves the noise."""
    teacher, student = report.heldout_teacher_quality, report.heldout_student_quality
    if not (teacher > 0 and student == student):
        report.learning_curve_message = (f"no share of the teacher: it scores {teacher:.3f} {report.metric} on "
                                         f"the {report.n_val + report.n_test} held-out items")
        return
    share = student / teacher
    n_answers = report.n_train + report.n_val + report.n_test
    full = CurvePoint(report.n_train, student, share)
    projection = None
    if share < TARGET_SHARE and choice.retrain is not None:
        points = measure_curve(train_labels, choice.retrain, teacher, full, progress)
        report.learning_curve = [p.as_dict() for p in points]
        projection = project(points)
        if projection.n_needed is not None:
            report.projected_teacher_answers = round(projection.n_needed * n_answers / report.n_train)
    report.learning_curve_message = curve_message(share, report.n_train, n_answers, 1 / answers_per_item,
                                                  projection, report.n_val + report.n_test, items_left,
                                                  more=more)


def predict(spec: TaskSpec, student: Student, examples: list[Example]) -> tuple[list[Any], list[float]]:
    """Student answers and confidences (1.0 for extraction, which has no single confidence)."""
    if not examples:
        return [], []
    if spec.kind == "extract":
        return student.extract([e.tokens or e.input.split() for e in examples]), [1.0] * len(examples)
    probs = student.predict_proba([e.input for e in examples])
    answers = [max(p, key=lambda k: p[k]) for p in probs]
    return answers, [p[a] for p, a in zip(probs, answers, strict=True)]


def single_item_latency(spec: TaskSpec, student: Student, examples: list[Example]) -> float:
    """Median seconds to answer one item at a time (what a request sees)."""
    ticks = []
    for example in examples:
        tick = time.perf_counter()
        predict(spec, student, [example])
        ticks.append(time.perf_counter() - tick)
    return float(np.median(ticks)) if ticks else float("nan")


def register_models(spec: TaskSpec, report: DistillReport, student_dir: Path, path: Path | None = None) -> None:
    """Add the student and the cascade to llmbus.yaml (other entries are kept)."""
    add_models({report.student: {"path": str(student_dir), "threads": 1},
                report.cascade: cascade_entry(report.student, report.teacher_model, report.cascade_threshold)}, path)


def cascade_entry(student: str, teacher: str, threshold: float) -> dict[str, Any]:
    """A `cascade:` model's llmbus.yaml entry."""
    return {"student": student, "teacher": teacher, "threshold": round(threshold, 6)}

