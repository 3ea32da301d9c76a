"""Trained judges from human labels: a quick logistic head on MiniLM embeddings (`head:DIR`) and a fully
fine-tuned MiniLM encoder (`encoder:DIR`, the student format of stop 5), both cross-validated against the
humans and both usable wherever an LLM judge is: `llmbus judge run JUDGE.yaml --on RUN --model head:DIR`.

A trained judge reads `judge_input`: the item's input and the judged answer, the same text at training and
at judging time. Its cost is the measured CPU time of its predictions at a $/hour price.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmbus.embed import StageCallback
from llmbus.errors import LlmbusError
from llmbus.extras import check
from llmbus.providers.head import HeadJudge, head_features
from llmbus.quality.agreement import cohen_kappa
from llmbus.quality.calibrate import calibrate
from llmbus.quality.judge import answer_text, judge_input, judge_run_info, load_verdicts, run_items
from llmbus.quality.label import consensus, get_project, label_rows
from llmbus.settings import USD_PER_HOUR
from llmbus.store import Store
from llmbus.train.student import EncoderStudent, TrainSettings, train_classifier


@dataclass
class TrainingSet:
    """Human-labeled judgments: what the judge reads and the majority human label."""

    item_ids: list[str]
    texts: list[str]
    labels: list[str]
    humans: int = -1  # the first `humans` rows are human labels (cross-validation scores on these); -1: all


def training_set(store: Store, project: str, judge_run: str | None = None) -> TrainingSet:
    """The project's majority human labels with the item input + answer each annotator saw; with `judge_run`,
    plus that judge's verdicts on items no human labeled, if calibration trusts the judge unattended."""
    meta = get_project(store, project)
    run = store.get_run(meta["run_id"])
    input_field = json.loads(run["spec_json"]).get("data", {}).get("input", "text")
    human = consensus(store, project)
    seen: dict[str, str] = {}
    for row in label_rows(store, project):
        if row["item_id"] in human and row["item_id"] not in seen:
            seen[row["item_id"]] = judge_input(row["fields"], input_field, row["answer"])
    ids = sorted(seen)
    data = TrainingSet(ids, [seen[i] for i in ids], [human[i] for i in ids], humans=len(ids))
    if judge_run:
        _add_trusted_verdicts(store, project, judge_run, data)
    return data


def _add_trusted_verdicts(store: Store, project: str, judge_run: str, data: TrainingSet) -> None:
    check = calibrate(store, judge_run, project)
    if not check.trusted:
        raise LlmbusError(f"judge run {check.judge_run_id} is {check.reason}: its verdicts cannot join the training "
                          "labels (train on human labels only, or fix the judge first)")
    info = judge_run_info(store, judge_run)
    run = store.get_run(info["target_run_id"])
    input_field = json.loads(run["spec_json"]).get("data", {}).get("input", "text")
    fields = run_items(store, run)
    calls = {c["item_id"]: c for c in store.iter_calls(run["id"])}
    known = set(data.item_ids)
    for verdict in load_verdicts(store, info["run_id"]):
        item_id = verdict["item_id"]
        if verdict["verdict"] is not None and item_id not in known and item_id in calls:
            data.item_ids.append(item_id)
            data.texts.append(judge_input(fields.get(item_id, {}), input_field, answer_text(calls[item_id])))
            data.labels.append(verdict["verdict"])


@dataclass
class CrossValidation:
    """A trained judge's agreement with held-out human labels, over k folds, and its cost."""

    kind: str
    folds: int
    n: int
    kappa: float
    accuracy: float
    fold_kappas: list[float] = field(default_factory=list)
    train_s: float = 0.0
    ms_per_judgment: float = 0.0
    usd_per_1k: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json output."""
        return asdict(self)


def fine_tune(train: TrainingSet, out_dir: Path, settings: TrainSettings) -> EncoderStudent:
    """A fully fine-tuned MiniLM judge (an encoder student) saved to out_dir."""
    train_classifier(train.texts, train.labels, [], [], out_dir, settings)
    return EncoderStudent.load(out_dir, threads=settings.threads)


def _subset(data: TrainingSet, rows: list[int]) -> TrainingSet:
    return TrainingSet([data.item_ids[i] for i in rows], [data.texts[i] for i in rows], [data.labels[i] for i in rows])


def _check_trainable(data: TrainingSet, kind: str, folds: int) -> int:
    """The number of human labels, once they can train and cross-validate a judge of this kind."""
    if kind not in {"head", "finetuned"}:
        raise LlmbusError(f"--kind {kind!r}: use head or finetuned")
    n_humans = data.humans if data.humans >= 0 else len(data.texts)
    human_labels = data.labels[:n_humans]
    if len(set(human_labels)) < 2 or n_humans < folds:
        raise LlmbusError(f"training a judge needs at least {folds} human-labeled items with two different labels "
                          f"(have {n_humans}: {', '.join(sorted(set(human_labels))) or 'none'})")
    return n_humans


def cross_validate(data: TrainingSet, kind: str, folds: int = 5, settings: TrainSettings = TrainSettings(),
                   usd_per_hour: float = USD_PER_HOUR, progress: StageCallback | None = None,
                   features: np.ndarray | None = None) -> CrossValidation:
    """k-fold agreement (Cohen's kappa, accuracy) of a trained judge (head | finetuned) with the held-out human
    labels, and its prediction cost (CPU time from text to verdict, measured on each held-out fold); the
    embedding and each fold are reported to `progress`. `features`: the head's, when already computed."""
    n_humans = _check_trainable(data, kind, folds)
    # Folds hold out human labels only; trusted judge labels (rows after the humans) always train.
    order = np.random.default_rng(settings.seed).permutation(n_humans)
    # The head's features are computed once (embedding dominates its cost) and sliced per fold.
    if kind != "head":
        features = None
    elif features is None:
        features = head_features(data.texts, progress)
    kappas, right, train_s, cpu_s, timed = [], 0, 0.0, 0.0, 0
    stage = f"cross-validating the {kind} judge: folds"
    for k in range(folds):
        if progress:
            progress(stage, k, folds)
        test = sorted(order[k::folds].tolist())
        train_rows = sorted(set(range(len(data.texts))) - set(test))
        tick = time.perf_counter()
        test_texts = [data.texts[i] for i in test]
        if features is not None:
            head = HeadJudge.fit(features[train_rows], [data.labels[i] for i in train_rows], settings.seed)
            train_s += time.perf_counter() - tick
            probs = head.predict_features(features[test])
            if k == 0:  # the real per-judgment cost includes embedding the text
                cpu = time.process_time()
                head.predict_proba(test_texts)
                cpu_s, timed = time.process_time() - cpu, len(test)
        else:
            with tempfile.TemporaryDirectory(prefix="llmbus-judge-") as scratch:
                student = fine_tune(_subset(data, train_rows), Path(scratch), settings)
                train_s += time.perf_counter() - tick
                cpu = time.process_time()
                probs = student.predict_proba(test_texts)
                cpu_s, timed = cpu_s + time.process_time() - cpu, timed + len(test)
        predicted = [max(p, key=lambda c: p[c]) for p in probs]
        truth = [data.labels[i] for i in test]
        kappas.append(cohen_kappa(predicted, truth))
        right += sum(p == t for p, t in zip(predicted, truth, strict=True))
    if progress:
        progress(stage, folds, folds)
    n = n_humans
    per_judgment = cpu_s / max(1, timed)
    return CrossValidation(kind=kind, folds=folds, n=n, kappa=float(np.nanmean(kappas)), accuracy=right / n,
                           fold_kappas=kappas, train_s=train_s / folds, ms_per_judgment=1000 * per_judgment,
                           usd_per_1k=1000 * per_judgment * usd_per_hour / 3600)


def train_judge(store: Store, project: str, out_dir: Path, kind: str = "head", folds: int = 5,
                settings: TrainSettings = TrainSettings(epochs=1), judge_run: str | None = None,
                progress: StageCallback | None = None) -> tuple[CrossValidation, str]:
    """Cross-validate a trained judge on the project's human labels, then train it on all of them and save
    it to out_dir; returns the cross-validation and the model reference to judge with. Each stage (embedding,
    folds, the final training) is reported to `progress`."""
    check("train", "llmbus judge train")
    data = training_set(store, project, judge_run)
    _check_trainable(data, kind, folds)  # before the embedding, not after it
    # The head's features serve both the folds and the final head: embedded once.
    features = head_features(data.texts, progress) if kind == "head" else None
    report = cross_validate(data, kind, folds, settings, progress=progress, features=features)
    stage = f"training the {'MiniLM head' if kind == 'head' else 'fine-tuned MiniLM'} on all {len(data.texts):,} labels"
    if progress:
        progress(stage, 0, 1)
    if features is not None:
        HeadJudge.fit(features, data.labels, settings.seed).save(out_dir)
        model = f"head:{out_dir}"
    else:
        fine_tune(data, out_dir, settings)
        model = f"encoder:{out_dir}"
    if progress:
        progress(stage, 1, 1)
    return report, model
