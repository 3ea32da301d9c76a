"""The response caches — the one copy, used by runs, judge runs and the gateway.

`ExactCache`: an answer is reused when the request is identical (model + rendered prompt + every parameter),
kept in the store's cache table so it survives restarts and is shared by every process on the same store.

`SemanticCache`: on MiniLM embeddings, scoped per served model (and so per task). A near-duplicate input reuses a
cached answer when its cosine similarity reaches the threshold — unless the two inputs differ in negation ("is
it open" vs "is it not open"), which embeddings place close together but which must never share an answer. The
threshold is chosen on validation pairs by `choose_threshold`, which also reports the false-hit rate it will
have.
"""

from __future__ import annotations

import random
import re
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmbus.embed import embed
from llmbus.providers import Completion, Request
from llmbus.store import Store

NEGATIONS = re.compile(r"\b(not|no|never|none|nobody|nothing|neither|nor|cannot|without)\b|n't\b", re.I)


class ExactCache:
    """Answers by exact request, in the store (whether sampled requests may be reused is the caller's call)."""

    def __init__(self, store: Store):
        self.store = store

    def get(self, request: Request, model: str) -> Completion | None:
        """The cached answer to this exact request, or None."""
        found = self.store.cache_get(request.cache_key(model))
        return Completion(**found) if found is not None else None

    def entry(self, request: Request, model: str, completion: Completion) -> tuple[str, str, dict[str, Any]]:
        """What `put_many` stores for an answer (callers collect these and write them in one transaction)."""
        return request.cache_key(model), model, completion.cache_dict()

    def put(self, request: Request, model: str, completion: Completion) -> None:
        """Remember an answer."""
        self.put_many([self.entry(request, model, completion)])

    def put_many(self, entries: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Store `entry` tuples in one transaction; keys already cached keep their value."""
        self.store.cache_put_many(entries)


def negation_signature(text: str) -> int:
    """How many negation words a text has (parity differences flip meaning)."""
    return len(NEGATIONS.findall(text))


class SemanticCache:
    """In-memory nearest-neighbour cache: (scope, embedding) → answer; thread-safe, bounded per scope."""

    def __init__(self, threshold: float, max_entries: int = 50_000):
        self.threshold = threshold
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._vectors: dict[str, np.ndarray] = {}
        self._entries: dict[str, list[tuple[str, Any]]] = {}

    def lookup(self, scope: str, text: str, vector: np.ndarray | None = None) -> tuple[Any, float] | None:
        """(cached answer, similarity) of the nearest entry at or above the threshold, or None."""
        vector = embed([text])[0] if vector is None else vector
        with self._lock:
            matrix = self._vectors.get(scope)
            if matrix is None or not len(matrix):
                return None
            similarity = matrix @ vector
            best = int(np.argmax(similarity))
            cached_text, answer = self._entries[scope][best]
        score = float(similarity[best])
        if score < self.threshold or negation_signature(cached_text) % 2 != negation_signature(text) % 2:
            return None
        return answer, score

    def add(self, scope: str, text: str, answer: Any, vector: np.ndarray | None = None) -> None:
        """Remember an answer (oldest entries go first once the scope is full)."""
        vector = embed([text])[0] if vector is None else vector
        with self._lock:
            matrix = self._vectors.get(scope, np.zeros((0, vector.shape[0]), dtype=np.float32))
            entries = self._entries.setdefault(scope, [])
            self._vectors[scope] = np.vstack([matrix, vector[None, :]])[-self.max_entries:]
            entries.append((text, answer))
            del entries[: max(0, len(entries) - self.max_entries)]


@dataclass
class ThresholdChoice:
    """A threshold and what it does on the validation pairs."""

    threshold: float
    hit_rate: float  # share of same-answer paraphrases that hit
    false_hit_rate: float  # share of different-answer pairs (negations, other items) that would hit
    false_hit_rate_without_guard: float  # the same without the negation guard
    n_positive: int
    n_negative: int


def perturb(text: str, rng: random.Random) -> str:
    """A same-meaning near-duplicate: casing, punctuation and spacing noise, or one dropped filler word."""
    choice = rng.randrange(4)
    if choice == 0:
        return text.lower()
    if choice == 1:
        return text.rstrip(".!?") + rng.choice(["?", "!", " .", ""])
    if choice == 2:
        return "  ".join(text.split())
    words = text.split()
    fillers = [i for i, w in enumerate(words) if w.lower() in {"the", "a", "an", "please", "just", "so", "very"}]
    if fillers:
        del words[rng.choice(fillers)]
    return " ".join(words)


def negate(text: str) -> str:
    """An opposite-meaning near-duplicate: insert or remove a negation."""
    swapped = re.sub(r"\b(is|are|was|were|do|does|did|can|will|should|would|could)\b", r"\1 not", text, count=1,
                     flags=re.I)
    return swapped if swapped != text else "not " + text


def validation_pairs(texts: list[str], answers: list[Any], seed: int = 0,
                     n: int = 200) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Positive pairs (same answer: paraphrase noise) and negative pairs (negation, or an item with another
    answer) drawn from a task's validation items."""
    rng = random.Random(seed)
    indices = rng.sample(range(len(texts)), min(n, len(texts)))
    positives = [(texts[i], perturb(texts[i], rng)) for i in indices]
    negatives = [(texts[i], negate(texts[i])) for i in indices]
    others = [j for j in range(len(texts))]
    for i in indices:
        different = [j for j in rng.sample(others, min(20, len(others))) if answers[j] != answers[i]]
        if different:
            negatives.append((texts[i], texts[different[0]]))
    return positives, negatives


def choose_threshold(positives: list[tuple[str, str]], negatives: list[tuple[str, str]],
                     max_false_hit_rate: float = 0.01) -> ThresholdChoice:
    """The lowest threshold (most hits) whose false-hit rate on negative pairs stays within the bound."""
    def similarities(pairs: list[tuple[str, str]]) -> np.ndarray:
        left = embed([a for a, _ in pairs])
        right = embed([b for _, b in pairs])
        return np.sum(left * right, axis=1)

    pos, neg = similarities(positives), similarities(negatives)
    guarded = np.array([negation_signature(a) % 2 == negation_signature(b) % 2 for a, b in negatives])
    pos_guard = np.array([negation_signature(a) % 2 == negation_signature(b) % 2 for a, b in positives])
    best = None
    for threshold in np.round(np.arange(0.80, 1.0001, 0.005), 3):
        false_hits = float(np.mean((neg >= threshold) & guarded)) if len(neg) else 0.0
        if false_hits <= max_false_hit_rate:
            best = float(threshold)
            break
    threshold = best if best is not None else 1.0
    return ThresholdChoice(
        threshold=threshold,
        hit_rate=float(np.mean((pos >= threshold) & pos_guard)) if len(pos) else 0.0,
        false_hit_rate=float(np.mean((neg >= threshold) & guarded)) if len(neg) else 0.0,
        false_hit_rate_without_guard=float(np.mean(neg >= threshold)) if len(neg) else 0.0,
        n_positive=len(positives), n_negative=len(negatives))
