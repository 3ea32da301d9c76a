"""Pick the solved examples that go into each prompt: one fixed set, a label-balanced or random set per item,
or the nearest pool examples by MiniLM embedding, TF-IDF cosine or BM25.

An item never gets itself as an example: eval items are never in the pool, but the optimizer's validation
items are pool items, so every strategy leaves the item out (leave-one-out) and stays honest there too.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import Counter, defaultdict
from typing import Any

import numpy as np

from llmbus.embed import EmbeddingCache, embed
from llmbus.extras import check
from llmbus.task.data import Item
from llmbus.task.spec import TaskSpec

NEAREST = ("nearest", "tfidf", "bm25")  # the strategies that rank the pool by similarity to the item
BM25_K1, BM25_B = 1.5, 0.75  # Robertson's usual constants


class ExampleSelector:
    """Chooses k pool examples for an item, following the spec's few-shot strategy."""

    def __init__(self, spec: TaskSpec, pool: list[Item], cache: EmbeddingCache | None = None):
        self.spec = spec
        self.pool = pool
        self.cache = cache  # the store's embedding cache, passed in (this layer sits below the store)
        self.k = min(spec.fewshot.k, len(pool))
        self._fixed: list[Item] | None = None
        self._index: Any = None  # the pool's vectors (MiniLM), or its TF-IDF / BM25 index
        self._position = {item.id: i for i, item in enumerate(pool)}
        if spec.fewshot.strategy == "nearest" and self.k:  # fail before a run starts, not at its first item
            check("embed", "fewshot strategy nearest (MiniLM; tfidf and bm25 need no extra)")

    def select(self, item: Item) -> list[Item]:
        """The examples for one item; nearest puts the most similar example last, next to the item."""
        return self.select_many([item])[0]

    def select_many(self, items: list[Item]) -> list[list[Item]]:
        """Examples for many items at once (embeds them in one batch for the nearest strategy)."""
        if self.k == 0:
            return [[] for _ in items]
        strategy = self.spec.fewshot.strategy
        if strategy in NEAREST:
            chosen = self._nearest_examples(items)
        else:
            chosen = [self._drawn_examples(item, strategy) for item in items]
        if self.spec.fewshot.order == "reverse":
            chosen = [list(reversed(examples)) for examples in chosen]
        return chosen

    def _others(self, item: Item) -> list[Item]:
        """The pool without the item itself."""
        if item.id not in self._position:
            return self.pool
        return [p for p in self.pool if p.id != item.id]

    def _drawn_examples(self, item: Item, strategy: str) -> list[Item]:
        seed = self.spec.fewshot.seed
        if strategy == "fixed":
            if self._fixed is None:
                self._fixed = balanced_pick(self.pool, self.k, seed)
            if all(example.id != item.id for example in self._fixed):
                return self._fixed
            return balanced_pick(self._others(item), self.k, seed)
        per_item = int(hashlib.sha256(f"{seed}:{item.id}".encode()).hexdigest(), 16)
        others = self._others(item)
        if strategy == "balanced":
            return balanced_pick(others, self.k, per_item)
        return random.Random(per_item).sample(others, min(self.k, len(others)))

    def _nearest_examples(self, items: list[Item]) -> list[list[Item]]:
        field = self.spec.data.input
        pool_texts = [p.text(field) for p in self.pool]
        queries = [item.text(field) for item in items]
        strategy = self.spec.fewshot.strategy
        if strategy == "nearest":
            if self._index is None:
                self._index = embed(pool_texts, cache=self.cache)
            similarity = embed(queries, cache=self.cache) @ self._index.T
        elif strategy == "tfidf":
            if self._index is None:
                self._index = TfidfIndex(pool_texts)
            similarity = self._index.scores(queries)
        else:
            if self._index is None:
                self._index = Bm25Index(pool_texts)
            similarity = self._index.scores(queries)
        chosen = []
        for item, row in zip(items, similarity, strict=True):
            row = np.array(row, dtype=np.float64)
            if item.id in self._position:
                row[self._position[item.id]] = -np.inf  # never the item itself
            best = np.argsort(-row, kind="stable")[: self.k]
            chosen.append([self.pool[i] for i in reversed(best)])
        return chosen


# scikit-learn's default tokens (lowercased words of two or more word characters): the indexes below equal its
# TfidfVectorizer / CountVectorizer (tests compare), without making scikit-learn a core dependency.
WORD = re.compile(r"(?u)\b\w\w+\b")


def words(text: str) -> list[str]:
    """The index terms of a text."""
    return WORD.findall(text.lower())


class _Postings:
    """A sparse (pool × term) weight matrix kept per term, so a query costs only the postings of its own words."""

    def __init__(self, rows: list[dict[int, float]], n_terms: int):
        self.n = len(rows)
        by_term: list[tuple[list[int], list[float]]] = [([], []) for _ in range(n_terms)]
        for doc, row in enumerate(rows):
            for term, weight in row.items():
                by_term[term][0].append(doc)
                by_term[term][1].append(weight)
        self.docs = [np.array(docs, dtype=np.int64) for docs, _ in by_term]
        self.weights = [np.array(weights, dtype=np.float64) for _, weights in by_term]

    def dot(self, queries: list[dict[int, float]]) -> np.ndarray:
        """(queries × pool) sums of query weight · pool weight over the shared terms."""
        out = np.zeros((len(queries), self.n))
        for q, query in enumerate(queries):
            for term in sorted(query):
                out[q, self.docs[term]] += query[term] * self.weights[term]
        return out


class TfidfIndex:
    """Cosine similarity of TF-IDF word vectors: sublinear term frequency 1 + ln(tf), smoothed idf
    ln((1 + n) / (1 + df)) + 1, unit length (scikit-learn's TfidfVectorizer(sublinear_tf=True))."""

    def __init__(self, texts: list[str]):
        counts = [Counter(words(text)) for text in texts]
        self.vocabulary = {term: i for i, term in enumerate(sorted({t for c in counts for t in c}))}
        df = np.zeros(len(self.vocabulary))
        for c in counts:
            df[[self.vocabulary[t] for t in c]] += 1
        self.idf = np.log((1 + len(texts)) / (1 + df)) + 1
        self.postings = _Postings([self._vector(c) for c in counts], len(self.vocabulary))

    def _vector(self, count: Counter[str]) -> dict[int, float]:
        raw = {self.vocabulary[t]: (1 + math.log(n)) * self.idf[self.vocabulary[t]]
               for t, n in count.items() if t in self.vocabulary}
        length = math.sqrt(sum(w * w for w in raw.values()))
        return {t: w / length for t, w in raw.items()} if length else {}

    def scores(self, queries: list[str]) -> np.ndarray:
        """(queries × pool) similarities."""
        return self.postings.dot([self._vector(Counter(words(q))) for q in queries])


class Bm25Index:
    """Okapi BM25 scores of the pool texts for each query's words."""

    def __init__(self, texts: list[str]):
        counts = [Counter(words(text)) for text in texts]
        self.vocabulary = {term: i for i, term in enumerate(sorted({t for c in counts for t in c}))}
        n = len(texts)
        df = np.zeros(len(self.vocabulary))
        for c in counts:
            df[[self.vocabulary[t] for t in c]] += 1
        self.idf = np.log1p((n - df + 0.5) / (df + 0.5))
        lengths = np.array([sum(c.values()) for c in counts], dtype=np.float64)
        # Per (document, term): tf·(k1+1) / (tf + k1·(1 − b + b·len/avglen)).
        norm = BM25_K1 * (1 - BM25_B + BM25_B * lengths / max(1e-9, float(lengths.mean()) if n else 1.0))
        rows = [{self.vocabulary[t]: tf * (BM25_K1 + 1) / (tf + norm[d]) for t, tf in c.items()}
                for d, c in enumerate(counts)]
        self.postings = _Postings(rows, len(self.vocabulary))

    def scores(self, queries: list[str]) -> np.ndarray:
        """(queries × pool) BM25 scores (each query word counted once)."""
        present = [{self.vocabulary[t]: float(self.idf[self.vocabulary[t]]) for t in set(words(q))
                    if t in self.vocabulary} for q in queries]
        return self.postings.dot(present)


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


def needs_per_item_examples(spec: TaskSpec) -> bool:
    """Whether items get examples of their own (so a prompt prefix is not shared by every item)."""
    return spec.fewshot.k > 0 and spec.fewshot.strategy != "fixed"

