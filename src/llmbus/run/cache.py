"""The response caches — the one copy, used by runs, judge runs and the gateway.

`ExactCache`: an answer is reused when the request is identical (model + rendered prompt + every parameter),
kept in the store's cache table so it survives restarts and is shared by every process on the same store.

`SemanticCache`: on MiniLM embeddings, scoped per served model (and so per task). A near-duplicate input reuses a
cached answer when its cosine similarity reaches the threshold — unless the two inputs differ in negation ("is
it open" vs "is it not open"), which embeddings place close together but which must never share an answer. The
threshold is chosen on validation pairs by `choose_threshold`, which also reports the false-hit rate it will
have; `task_threshold` draws those pairs from a task's inputs and answers (distill reports it for serving).
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
from llmbus.store.gateway_state import SemanticEntries

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


class _Ring:
    """One scope's vectors and entries: a preallocated matrix that doubles until `limit` rows, then overwrites its
    oldest row (an add is O(dim), never a copy of the whole index)."""

    def __init__(self, dim: int, limit: int):
        self.limit = limit
        self.vectors = np.zeros((min(limit, 256), dim), dtype=np.float32)
        self.entries: list[tuple[str, Any]] = []
        self.oldest = 0  # once full: the row the next add overwrites

    def add(self, vector: np.ndarray, entry: tuple[str, Any]) -> None:
        count = len(self.entries)
        if count < self.limit:
            if count == len(self.vectors):
                grown = np.zeros((min(self.limit, 2 * count), self.vectors.shape[1]), dtype=np.float32)
                grown[:count] = self.vectors
                self.vectors = grown
            slot = count
            self.entries.append(entry)
        else:
            slot, self.oldest = self.oldest, (self.oldest + 1) % self.limit
            self.entries[slot] = entry
        self.vectors[slot] = vector

    def nearest(self, vector: np.ndarray) -> tuple[tuple[str, Any], float] | None:
        if not self.entries:
            return None
        similarity = self.vectors[: len(self.entries)] @ vector
        best = int(np.argmax(similarity))
        return self.entries[best], float(similarity[best])


class SemanticCache:
    """In-memory nearest-neighbour cache: (scope, embedding) → answer; thread-safe, bounded per scope. With
    `saved` (the store's semantic entries) each entry added is kept there too, and `load` reads them back at
    start, so the cache survives a restart and a new gateway process starts with what the others learned."""

    def __init__(self, threshold: float, max_entries: int = 50_000, saved: SemanticEntries | None = None):
        self.threshold = threshold
        self.max_entries = max_entries
        self.saved = saved
        self._lock = threading.Lock()
        self._rings: dict[str, _Ring] = {}

    def lookup(self, scope: str, text: str, vector: np.ndarray | None = None) -> tuple[Any, float] | None:
        """(cached answer, similarity) of the nearest entry at or above the threshold, or None."""
        vector = embed([text])[0] if vector is None else vector
        with self._lock:
            ring = self._rings.get(scope)
            found = ring.nearest(vector) if ring is not None else None
        if found is None:
            return None
        (cached_text, answer), score = found
        if score < self.threshold or negation_signature(cached_text) % 2 != negation_signature(text) % 2:
            return None
        return answer, score

    def add(self, scope: str, text: str, answer: Any, vector: np.ndarray | None = None) -> None:
        """Remember an answer (oldest entries go first once the scope is full)."""
        vector = embed([text])[0] if vector is None else vector
        self._remember(scope, text, answer, vector)
        if self.saved is not None:
            self.saved.put(scope, text, vector, answer)

    def load(self, prefixes: list[str]) -> int:
        """Read the saved entries of the scopes starting with `prefixes` (the newest `max_entries` of each);
        returns how many."""
        if self.saved is None:
            return 0
        count = 0
        for scope, text, vector, answer in self.saved.load(prefixes, self.max_entries):
            self._remember(scope, text, answer, vector)
            count += 1
        return count

    def _remember(self, scope: str, text: str, answer: Any, vector: np.ndarray) -> None:
        with self._lock:
            ring = self._rings.get(scope)
            if ring is None:
                ring = self._rings[scope] = _Ring(vector.shape[0], self.max_entries)
            ring.add(vector, (text, answer))


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


def task_threshold(inputs: list[str], answers: list[Any], n: int = 150) -> ThresholdChoice:
    """The semantic cache's threshold for one task (what `llmbus distill` reports for serving it): chosen on up
    to n validation pairs drawn from the task's inputs and their answers."""
    positives, negatives = validation_pairs(inputs, answers, n=n)
    return choose_threshold(positives, negatives)
