"""Pick the solved examples that go into each prompt: fixed, random, or nearest by MiniLM embedding."""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict

import numpy as np

from llmbus.embed import EmbeddingCache, embed
from llmbus.task.data import Item
from llmbus.task.spec import TaskSpec


class ExampleSelector:
    """Chooses k pool examples for an item, following the spec's few-shot strategy."""

    def __init__(self, spec: TaskSpec, pool: list[Item], cache: EmbeddingCache | None = None):
        self.spec = spec
        self.pool = pool
        self.cache = cache  # the store's embedding cache, passed in (this layer sits below the store)
        self.k = min(spec.fewshot.k, len(pool))
        self._fixed: list[Item] | None = None
        self._pool_vectors: np.ndarray | None = None

    def select(self, item: Item) -> list[Item]:
        """The examples for one item; nearest puts the most similar example last, next to the item."""
        return self.select_many([item])[0]

    def select_many(self, items: list[Item]) -> list[list[Item]]:
        """Examples for many items at once (embeds them in one batch for the nearest strategy)."""
        if self.k == 0:
            return [[] for _ in items]
        strategy = self.spec.fewshot.strategy
        if strategy == "fixed":
            return [self._fixed_examples() for _ in items]
        if strategy == "random":
            return [self._random_examples(item) for item in items]
        return self._nearest_examples(items)

    def _fixed_examples(self) -> list[Item]:
        if self._fixed is None:
            self._fixed = balanced_pick(self.pool, self.k, self.spec.fewshot.seed)
        return self._fixed

    def _random_examples(self, item: Item) -> list[Item]:
        seed = int(hashlib.sha256(f"{self.spec.fewshot.seed}:{item.id}".encode()).hexdigest(), 16)
        return random.Random(seed).sample(self.pool, self.k)

    def _nearest_examples(self, items: list[Item]) -> list[list[Item]]:
        field = self.spec.data.input
        if self._pool_vectors is None:
            self._pool_vectors = embed([p.text(field) for p in self.pool], cache=self.cache)
        queries = embed([item.text(field) for item in items], cache=self.cache)
        similarity = queries @ self._pool_vectors.T
        chosen = []
        for row in similarity:
            best = np.argsort(-row, kind="stable")[: self.k]
            chosen.append([self.pool[i] for i in reversed(best)])
        return chosen


def balanced_pick(pool: list[Item], k: int, seed: int) -> list[Item]:
    """k examples spread evenly over the expected answers (round-robin), shuffled with a fixed seed."""
    by_answer: dict[str, list[Item]] = defaultdict(list)
    for item in pool:
        by_answer[str(item.expected)].append(item)
    rng = random.Random(seed)
    groups = [rng.sample(group, len(group)) for _, group in sorted(by_answer.items())]
    picked: list[Item] = []
    while len(picked) < k and any(groups):
        for group in groups:
            if group and len(picked) < k:
                picked.append(group.pop())
    rng.shuffle(picked)
    return picked
