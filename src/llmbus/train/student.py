"""Small encoder students on CPU, in seconds to minutes: two recipes for classify, one for extract.

- classify, recipe `head`     → frozen MiniLM sentence embeddings + a logistic head (head.json).
- classify, recipe `finetune` → MiniLM fine-tuned for sequence classification (Hugging Face weights).
- extract  (recipe finetune)  → token classification over BIO tags aligned from the teacher's entity lists.
Classifier confidences are calibrated by temperature scaling on validation items.

A student is a folder holding `student.json` (kind, recipe, labels, temperature) and the recipe's weights;
`load_student` reads either recipe, so `encoder:FOLDER` serves both.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self

import numpy as np

from llmbus.embed import EmbeddingCache, StageCallback, embed, load_minilm, minilm_path, torch_for_training
from llmbus.errors import ModelError
from llmbus.extras import require
from llmbus.task.data import bio_to_entities
from llmbus.task.kinds import kind_of

META = "student.json"
HEAD_FILE = "head.json"


@dataclass(frozen=True)
class TrainSettings:
    """Fine-tuning knobs; the defaults train a few thousand short texts in minutes on 2 cores."""

    epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 1e-4
    max_len: int = 64
    threads: int = 2
    seed: int = 0


@dataclass
class StudentMeta:
    """What a saved student needs besides its weights."""

    kind: str  # classify | extract
    labels: list[str]  # class labels, or BIO tags for extract
    temperature: float = 1.0
    max_len: int = 64
    recipe: str = "finetune"  # finetune (Hugging Face weights in the folder) | head (head.json on MiniLM embeddings)
    epochs: int = 0  # fine-tuning epochs of the saved weights (0 for a head)
    epoch_scores: list[float] = field(default_factory=list)  # validation score after each epoch, when scored


def train_classifier(texts: list[str], labels: list[str], val_texts: list[str], val_labels: list[str],
                     out_dir: Path, settings: TrainSettings = TrainSettings(), *, classes: list[str] | None = None,
                     score: Callable[[list[str]], float] | None = None, stop_after: int | None = None,
                     progress: StageCallback | None = None) -> StudentMeta:
    """Fine-tune MiniLM + a linear head on (text, label) pairs, calibrate on validation, save to out_dir.

    With `score` (validation predictions → score), every epoch is scored on the validation texts and the best
    epoch's weights are kept (the earlier epoch on a tie); `stop_after` ends training after that many epochs of a
    `settings.epochs` schedule. `classes` adds labels the training items may lack."""
    torch = torch_for_training(settings.threads, "training a student")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(settings.seed)
    classes = sorted(set(labels) | set(val_labels) | set(classes or []))
    if len(classes) < 2:
        raise ModelError("the teacher gave only one label on the training items: nothing to learn")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    model = AutoModelForSequenceClassification.from_pretrained(str(minilm_path()), num_labels=len(classes))
    meta = StudentMeta(kind="classify", labels=classes, max_len=settings.max_len, epochs=settings.epochs)
    student = EncoderStudent(model, tokenizer, meta)
    best: dict[str, Any] = {}

    def after_epoch(epoch: int) -> None:
        assert score is not None
        predicted = [classes[int(i)] for i in student.logits(val_texts).argmax(axis=1)]
        meta.epoch_scores.append(float(score(predicted)))
        if meta.epoch_scores[-1] > best.get("score", -math.inf):
            best.update(score=meta.epoch_scores[-1], epoch=epoch,
                        state={k: v.detach().clone() for k, v in model.state_dict().items()})

    targets = [classes.index(label) for label in labels]
    _fit(model, torch, settings, len(texts), lambda idx: (
        tokenizer([texts[i] for i in idx], truncation=True, max_length=settings.max_len, padding=True,
                  return_tensors="pt"), torch.tensor([targets[i] for i in idx])),
         after_epoch=after_epoch if score is not None and val_texts else None, stop_after=stop_after,
         progress=progress)
    meta.epochs = stop_after or settings.epochs
    if best:
        model.load_state_dict(best["state"])
        meta.epochs = best["epoch"]
    if val_texts:
        meta.temperature = fit_temperature(student.logits(val_texts), [classes.index(v) for v in val_labels])
    student.save(out_dir)
    return meta


def train_head(features: np.ndarray, labels: list[str], val_features: np.ndarray, val_labels: list[str],
               seed: int = 0) -> HeadStudent:
    """The cheap recipe: a logistic head on frozen MiniLM embeddings (rows of `embed`), calibrated on validation."""
    if len(set(labels)) < 2:
        raise ModelError("an embedding head needs at least two labels among the training items")
    head = LogisticHead.fit(features, labels, seed)
    student = HeadStudent(head, StudentMeta(kind="classify", labels=head.classes, recipe="head"))
    known = [i for i, v in enumerate(val_labels) if v in head.classes]  # a label it never saw has no logit
    if known:
        student.meta.temperature = fit_temperature(head.logits(val_features[known]),
                                                   [head.classes.index(val_labels[i]) for i in known])
    return student


def train_tagger(sentences: list[list[str]], entity_lists: list[list[dict[str, str]]], out_dir: Path,
                 settings: TrainSettings = TrainSettings(), progress: StageCallback | None = None) -> StudentMeta:
    """Fine-tune MiniLM for BIO token classification on teacher entities, save to out_dir."""
    torch = torch_for_training(settings.threads, "training a student")
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    torch.manual_seed(settings.seed)
    tag_lists = [entities_to_bio(tokens, entities) for tokens, entities in zip(sentences, entity_lists, strict=True)]
    tags = sorted({t for seq in tag_lists for t in seq} | {"O"})
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    model = AutoModelForTokenClassification.from_pretrained(str(minilm_path()), num_labels=len(tags))

    def batch(idx: list[int]) -> tuple[Any, Any]:
        encoded = tokenizer([sentences[i] for i in idx], is_split_into_words=True, truncation=True,
                            max_length=settings.max_len, padding=True, return_tensors="pt")
        target = torch.full(encoded["input_ids"].shape, -100)
        for row, i in enumerate(idx):
            seen: set[int] = set()
            for pos, word in enumerate(encoded.word_ids(row)):
                if word is not None and word not in seen:  # label the first piece of each word only
                    target[row, pos] = tags.index(tag_lists[i][word])
                    seen.add(word)
        return encoded, target

    _fit(model, torch, settings, len(sentences), batch, progress=progress)
    meta = StudentMeta(kind="extract", labels=tags, max_len=settings.max_len)
    EncoderStudent(model, tokenizer, meta).save(out_dir)
    return meta


def _fit(model: Any, torch: Any, settings: TrainSettings, n: int, make_batch: Any,
         after_epoch: Callable[[int], None] | None = None, stop_after: int | None = None,
         progress: StageCallback | None = None) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    per_epoch = math.ceil(n / settings.batch_size)
    steps = settings.epochs * per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / max(1, steps)))
    rng = random.Random(settings.seed)
    epochs = min(settings.epochs, stop_after or settings.epochs)
    done = 0
    for epoch in range(1, epochs + 1):
        model.train()
        order = list(range(n))
        rng.shuffle(order)
        for start in range(0, n, settings.batch_size):
            encoded, target = make_batch(order[start:start + settings.batch_size])
            loss = model(**encoded, labels=target).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            done += 1
            if progress:
                progress("fine-tuning MiniLM", done, epochs * per_epoch)
        model.eval()
        if after_epoch:
            after_epoch(epoch)


def fit_temperature(logits: np.ndarray, targets: list[int]) -> float:
    """The softmax temperature minimizing validation negative log-likelihood (Guo et al., 2017)."""
    best, best_nll = 1.0, float("inf")
    for temperature in np.exp(np.linspace(math.log(0.25), math.log(10.0), 60)):
        probs = softmax(logits / temperature)
        nll = -float(np.mean(np.log(probs[np.arange(len(targets)), targets] + 1e-12)))
        if nll < best_nll:
            best, best_nll = float(temperature), nll
    return best


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def entities_to_bio(tokens: list[str], entities: list[dict[str, str]]) -> list[str]:
    """BIO tags for tokens, marking each entity's first exact token-span occurrence (unmatched ones are skipped)."""
    tags = ["O"] * len(tokens)
    for entity in entities or []:
        words = str(entity.get("text", "")).split()
        kind = str(entity.get("type", "")).strip()
        if not words or not kind:
            continue
        for start in range(len(tokens) - len(words) + 1):
            span = tokens[start:start + len(words)]
            if [w.lower() for w in span] == [w.lower() for w in words] and all(t == "O" for t in
                                                                                 tags[start:start + len(words)]):
                tags[start] = f"B-{kind}"
                for k in range(start + 1, start + len(words)):
                    tags[k] = f"I-{kind}"
                break
    return tags


class Student(Protocol):
    """What distillation and the `encoder:` provider need from a student of either recipe."""

    meta: StudentMeta

    def predict_proba(self, texts: list[str]) -> list[dict[str, float]]: ...

    def extract(self, sentences: list[list[str]]) -> list[list[dict[str, str]]]: ...

    def save(self, path: Path) -> None: ...


def load_student(path: Path, threads: int = 1) -> Student:
    """Load a student folder of either recipe (written by `llmbus distill` or the trained judges)."""
    meta_path = Path(path) / META
    if not meta_path.is_file():
        raise ModelError(f"{path}: not a student folder (no {META}); train one with `llmbus distill`")
    meta = StudentMeta(**json.loads(meta_path.read_text()))
    if meta.recipe == "head":
        torch_for_training(threads, "a trained judge or student")  # the embedding model runs in torch too
        student = HeadStudent(LogisticHead.read(Path(path)), meta)
        load_minilm()  # now, not on the first answer: a loaded student answers at once
        return student
    return EncoderStudent.load(path, threads)


def label_probs(logits: np.ndarray, meta: StudentMeta) -> list[dict[str, float]]:
    """Calibrated label probabilities from raw logits, one dict per row."""
    probs = softmax(logits / meta.temperature)
    return [{label: float(p) for label, p in zip(meta.labels, row, strict=True)} for row in probs]


class LogisticHead:
    """Multinomial logistic regression over fixed features, kept as plain arrays (a JSON file, no pickle)."""

    def __init__(self, classes: list[str], coef: np.ndarray, intercept: np.ndarray):
        self.classes, self.coef, self.intercept = classes, coef, intercept

    @classmethod
    def fit(cls, features: np.ndarray, labels: list[str], seed: int = 0) -> Self:
        """Fit on feature rows and their labels (classes weighted to balance)."""
        require("train", "sklearn", "training a judge or student head")
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=10.0, max_iter=3000, class_weight="balanced", random_state=seed)
        model.fit(features, labels)
        coef, intercept = model.coef_, model.intercept_
        if len(model.classes_) == 2:  # sklearn keeps one row for binary problems: make it a softmax pair
            coef, intercept = np.vstack([-coef[0] / 2, coef[0] / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
        return cls([str(c) for c in model.classes_], coef, intercept)

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Raw class scores, one row per feature row."""
        return np.asarray(features @ self.coef.T + self.intercept)

    def predict_features(self, features: np.ndarray) -> list[dict[str, float]]:
        """Label probabilities per feature row."""
        probs = softmax(self.logits(features))
        return [dict(zip(self.classes, map(float, row), strict=True)) for row in probs]

    def save(self, path: Path) -> None:
        """Write head.json into a folder."""
        path.mkdir(parents=True, exist_ok=True)
        (path / HEAD_FILE).write_text(json.dumps({"classes": self.classes, "coef": self.coef.tolist(),
                                                  "intercept": self.intercept.tolist()}))

    @classmethod
    def read(cls, path: Path) -> Self:
        """Read a folder written by save."""
        if not (path / HEAD_FILE).is_file():
            raise ModelError(f"{path}: no {HEAD_FILE} (an embedding head's weights); train it again")
        raw = json.loads((path / HEAD_FILE).read_text())
        return cls(raw["classes"], np.array(raw["coef"]), np.array(raw["intercept"]))


class HeadStudent:
    """A classify student of recipe `head`: MiniLM sentence embeddings of the input through a logistic head."""

    def __init__(self, head: LogisticHead, meta: StudentMeta):
        self.head, self.meta = head, meta
        self.embeddings: EmbeddingCache | None = None  # vectors something else embedded already (see embed)

    def predict_proba(self, texts: list[str]) -> list[dict[str, float]]:
        """Calibrated label probabilities per text."""
        return label_probs(self.head.logits(embed(texts, cache=self.embeddings)), self.meta) if texts else []

    def extract(self, sentences: list[list[str]]) -> list[list[dict[str, str]]]:
        """Heads classify whole texts; extraction needs a fine-tuned tagger."""
        raise ModelError("an embedding-head student classifies; it cannot extract entities")

    def save(self, path: Path) -> None:
        """Write head.json and the meta."""
        self.head.save(path)
        (path / META).write_text(json.dumps(asdict(self.meta), indent=2))


class EncoderStudent:
    """A trained encoder student: predicts labels with calibrated probabilities, or entity lists."""

    def __init__(self, model: Any, tokenizer: Any, meta: StudentMeta):
        self.model, self.tokenizer, self.meta = model, tokenizer, meta

    @classmethod
    def load(cls, path: Path, threads: int = 1) -> EncoderStudent:
        """Load a fine-tuned student folder written by train_classifier / train_tagger (load_student reads both
        recipes)."""
        meta_path = Path(path) / META
        if not meta_path.is_file():
            raise ModelError(f"{path}: not a student folder (no {META}); train one with `llmbus distill`")
        torch_for_training(threads, "a trained judge or student")
        from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

        meta = StudentMeta(**json.loads(meta_path.read_text()))
        if meta.recipe != "finetune":
            raise ModelError(f"{path}: a {meta.recipe} student, not fine-tuned weights (load it with load_student)")
        auto = AutoModelForTokenClassification if kind_of(meta).tags_tokens() else AutoModelForSequenceClassification
        model = auto.from_pretrained(str(path))
        model.eval()
        return cls(model, AutoTokenizer.from_pretrained(str(path)), meta)

    def save(self, path: Path) -> None:
        """Write weights, tokenizer and meta."""
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
        (path / META).write_text(json.dumps(asdict(self.meta), indent=2))

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Raw class logits, one row per text."""
        import torch

        # Longest first, so each batch pads to texts of similar length (as sentence-transformers does).
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        rows = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                encoded = self.tokenizer([texts[i] for i in order[start:start + batch_size]], truncation=True,
                                         max_length=self.meta.max_len, padding=True, return_tensors="pt")
                rows.append(self.model(**encoded).logits.numpy())
        if not rows:
            return np.zeros((0, len(self.meta.labels)))
        logits = np.empty((len(texts), rows[0].shape[1]), dtype=rows[0].dtype)
        logits[order] = np.vstack(rows)
        return logits

    def predict_proba(self, texts: list[str]) -> list[dict[str, float]]:
        """Calibrated label probabilities per text."""
        return label_probs(self.logits(texts), self.meta)

    def extract(self, sentences: list[list[str]]) -> list[list[dict[str, str]]]:
        """Entity lists for whitespace-tokenized sentences."""
        import torch

        out = []
        with torch.no_grad():
            for tokens in sentences:
                encoded = self.tokenizer([tokens], is_split_into_words=True, truncation=True,
                                         max_length=self.meta.max_len, return_tensors="pt")
                best = self.model(**encoded).logits[0].argmax(-1).tolist()
                tags = ["O"] * len(tokens)
                seen: set[int] = set()
                for pos, word in enumerate(encoded.word_ids(0)):
                    if word is not None and word not in seen:
                        tags[word] = self.meta.labels[best[pos]]
                        seen.add(word)
                out.append(bio_to_entities(tokens, tags))
        return out
