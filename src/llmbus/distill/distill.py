"""Distill a teacher run into a small student: data from the call log, training, held-out evaluation, and a
cascade threshold picked on validation data.

    llmbus distill TASK --teacher RUN_ID [--student encoder] [--filter none|judge|human] [--allow-missing-labels]
    llmbus distill TASK --from-traffic SERVED [--since 7d] [--filter …]   (the gateway's answers: traffic.py)

The steps live in their own modules: the teacher's answers, split and exported (teacher_data.py); teacher
answers that cannot teach (one label, or a label with fewer than MIN_LABEL_EXAMPLES answers on the training
split) refused before any training (teacher_coverage.py); the student's recipe, picked on validation items
(recipe.py); its answers, quality and latency on held-out items (heldout.py); the cascade threshold
(cascade.py); below TARGET_SHARE × the teacher, a learning curve that says how many teacher answers would close
the gap (learning_curve.py); the semantic cache's threshold on the task's inputs (run/cache.py).

Writes OUT/data/{train,val,test}.jsonl (no lock-in), the student folder OUT/student and OUT/distill.json. The
`encoder:<task>-student` and `cascade:<task>` entries that let `llmbus run … --model cascade:<task>` and
`llmbus serve` use them at once come back as data (`DistillReport.registration`): the library writes no
config; `llmbus distill` adds them to llmbus.yaml, keeping the file's comments.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmbus.distill.cascade import cascade_entry, cascade_on
from llmbus.distill.heldout import answer_heldout, same_answer, single_item_latency, task_metric
from llmbus.distill.learning_curve import TARGET_SHARE, CurvePoint, curve_message, measure_curve, project
from llmbus.distill.recipe import RecipeChoice, train_student
from llmbus.distill.teacher_coverage import check_coverage, gold_coverage_warning, one_answer_warning
from llmbus.distill.teacher_data import TeacherData, run_teacher, split_examples
from llmbus.embed import StageCallback
from llmbus.errors import LlmbusError
from llmbus.extras import check
from llmbus.run.cache import task_threshold
from llmbus.store import Store
from llmbus.task.spec import TaskSpec
from llmbus.train.student import TrainSettings, load_student


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
    # The llmbus.yaml entries that make the student and the cascade usable by name. distill() writes no config:
    # its caller does (the CLI; Project.distill(register=True)) with providers.config.add_models.
    registration: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json and distill.json (the registration goes to llmbus.yaml, not there)."""
        data = asdict(self)
        del data["registration"]
        return data


def distill(spec: TaskSpec, store: Store, teacher_run: str | TeacherData, out_dir: Path,
            settings: TrainSettings | None = None, target: float = 0.98, how: str = "none",
            allow_missing_labels: bool = False, progress: StageCallback | None = None) -> DistillReport:
    """Train an encoder student on a teacher run (its id, filtered by `how`) or on TeacherData (a served
    model's traffic: traffic.traffic_teacher) and evaluate it on held-out items; `settings.epochs` is the
    most fine-tuning epochs a classify student tries (default 3; a tagger trains 2). The llmbus.yaml entries
    to register come back in `report.registration` (written by the caller: providers.config.add_models)."""
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
    choice = train_student(spec, by_split, student_dir, settings, progress)
    train_seconds, train_cpu = time.perf_counter() - tick, time.process_time() - cpu_tick
    student = load_student(student_dir, threads=settings.threads)
    scored = answer_heldout(spec, student, val, test, progress)
    val_answers, test_answers = scored.val, scored.test
    threshold, cascade_quality, escalated = cascade_on(spec, scored, val, test, target)
    report = DistillReport(
        task=spec.name, teacher_run=teacher.ref, teacher_model=teacher.model,
        student=f"encoder:{spec.name}-student", cascade=f"cascade:{spec.name}", metric=spec.main_metric,
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
    semantic = task_threshold([e.input for e in pool], [e.teacher for e in pool])
    report.semantic_threshold, report.semantic_hit_rate = semantic.threshold, semantic.hit_rate
    report.semantic_false_hit_rate = semantic.false_hit_rate
    (out_dir / "distill.json").write_text(json.dumps(report.as_dict(), indent=2))
    report.registration = registration(report, student_dir.resolve())
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


def registration(report: DistillReport, student_dir: Path) -> dict[str, dict[str, Any]]:
    """The llmbus.yaml entries of the student and the cascade, by model name."""
    return {report.student: {"path": str(student_dir), "threads": 1},
            report.cascade: cascade_entry(report.student, report.teacher_model, report.cascade_threshold)}
