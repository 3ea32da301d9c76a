"""Small encoder students: MiniLM fine-tuned on teacher answers, on CPU, in minutes.

- classify → sequence classification; confidence calibrated by temperature scaling on validation items.
- extract  → token classification over BIO tags aligned from the teacher's entity lists.

A student is a folder: the Hugging Face model + tokenizer and `student.json` (kind, labels, temperature).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmbus.embed import minilm_path, torch_for_training
from llmbus.errors import ModelError
from llmbus.task.data import bio_to_entities

META = "student.json"


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


def train_classifier(texts: list[str], labels: list[str], val_texts: list[str], val_labels: list[str],
                     out_dir: Path, settings: TrainSettings = TrainSettings()) -> StudentMeta:
    """Fine-tune MiniLM + a linear head on (text, label) pairs, calibrate on validation, save to out_dir."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch = torch_for_training(settings.threads)
    torch.manual_seed(settings.seed)
    classes = sorted(set(labels) | set(val_labels))
    if len(classes) < 2:
        raise ModelError("the teacher gave only one label on the training items: nothing to learn")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    model = AutoModelForSequenceClassification.from_pretrained(str(minilm_path()), num_labels=len(classes))
    targets = [classes.index(label) for label in labels]
    _fit(model, torch, settings, len(texts), lambda idx: (
        tokenizer([texts[i] for i in idx], truncation=True, max_length=settings.max_len, padding=True,
                  return_tensors="pt"), torch.tensor([targets[i] for i in idx])))
    meta = StudentMeta(kind="classify", labels=classes, max_len=settings.max_len)
    student = EncoderStudent(model, tokenizer, meta)
    if val_texts:
        logits = student.logits(val_texts)
        meta.temperature = fit_temperature(logits, [classes.index(v) for v in val_labels])
    student.save(out_dir)
    return meta


def train_tagger(sentences: list[list[str]], entity_lists: list[list[dict[str, str]]], out_dir: Path,
                 settings: TrainSettings = TrainSettings()) -> StudentMeta:
    """Fine-tune MiniLM for BIO token classification on teacher entities, save to out_dir."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    torch = torch_for_training(settings.threads)
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

    _fit(model, torch, settings, len(sentences), batch)
    meta = StudentMeta(kind="extract", labels=tags, max_len=settings.max_len)
    EncoderStudent(model, tokenizer, meta).save(out_dir)
    return meta


def _fit(model: Any, torch: Any, settings: TrainSettings, n: int, make_batch: Any) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    steps = settings.epochs * math.ceil(n / settings.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / max(1, steps)))
    rng = random.Random(settings.seed)
    model.train()
    for _ in range(settings.epochs):
        order = list(range(n))
        rng.shuffle(order)
        for start in range(0, n, settings.batch_size):
            encoded, target = make_batch(order[start:start + settings.batch_size])
            loss = model(**encoded, labels=target).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    model.eval()


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


class EncoderStudent:
    """A trained encoder student: predicts labels with calibrated probabilities, or entity lists."""

    def __init__(self, model: Any, tokenizer: Any, meta: StudentMeta):
        self.model, self.tokenizer, self.meta = model, tokenizer, meta

    @classmethod
    def load(cls, path: Path, threads: int = 1) -> EncoderStudent:
        """Load a student folder written by train_classifier / train_tagger."""
        meta_path = Path(path) / META
        if not meta_path.is_file():
            raise ModelError(f"{path}: not a student folder (no {META}); train one with `llmbus distill`")
        from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

        torch_for_training(threads)
        meta = StudentMeta(**json.loads(meta_path.read_text()))
        auto = AutoModelForSequenceClassification if meta.kind == "classify" else AutoModelForTokenClassification
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

        rows = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                encoded = self.tokenizer(texts[start:start + batch_size], truncation=True,
                                         max_length=self.meta.max_len, padding=True, return_tensors="pt")
                rows.append(self.model(**encoded).logits.numpy())
        return np.vstack(rows) if rows else np.zeros((0, len(self.meta.labels)))

    def predict_proba(self, texts: list[str]) -> list[dict[str, float]]:
        """Calibrated label probabilities per text."""
        probs = softmax(self.logits(texts) / self.meta.temperature)
        return [{label: float(p) for label, p in zip(self.meta.labels, row, strict=True)} for row in probs]

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
