"""The classify student's recipe, picked on the validation items: a logistic head on frozen MiniLM embeddings, or
MiniLM fine-tuned for 1..epochs epochs (a tie goes to the cheaper). The choice keeps a way to retrain the same
recipe on fewer rows, which the learning curve uses.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmbus.distill.examples import Example
from llmbus.distill.heldout import predict, task_metric
from llmbus.embed import StageCallback, embed
from llmbus.task.spec import TaskSpec
from llmbus.train.student import (
    HeadStudent,
    TrainSettings,
    load_student,
    train_classifier,
    train_head,
    train_tagger,
)


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


def train_student(spec: TaskSpec, by_split: dict[str, list[Example]], student_dir: Path, settings: TrainSettings,
                  progress: StageCallback | None = None) -> RecipeChoice:
    """Train the student into student_dir: a classify student's recipe picked on validation, a tagger's one
    recipe for extraction."""
    if spec.kind == "classify":
        return choose_classifier(spec, by_split, student_dir, settings, progress)
    train = by_split["train"]
    train_tagger([e.tokens or e.input.split() for e in train], [e.teacher for e in train], student_dir, settings,
                 progress)
    return RecipeChoice(f"finetune-{settings.epochs}ep", {}, None)
