"""Retrieval over a document set: chunking, MiniLM vectors kept in the store, BM25, and a hybrid of both.

Chunks and their vectors are stored once per corpus content (the corpus key includes a hash of the
documents), so a second process loads them instead of embedding again. Search fuses the dense and BM25
rankings by reciprocal rank, which holds up when either one alone misses (exact error codes vs paraphrase).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from llmbus.embed import embed
from llmbus.store import Store
from llmbus.store.schema import doc_chunks

TOKEN = re.compile(r"[a-z0-9]+")
# The common English stopword list (as in NLTK), so function words never count as content or as new facts.
STOPWORDS = frozenset([
    "i", "me", "my", "myself", "we", "our", "ours", "ourselves", "you", "your", "yours", "yourself",
    "yourselves", "he", "him", "his", "himself", "she", "her", "hers", "herself", "it", "its", "itself", "they",
    "them", "their", "theirs", "themselves", "what", "which", "who", "whom", "this", "that", "these", "those",
    "am", "is", "are", "was", "were", "be", "been", "being", "have", "has", "had", "having", "do", "does", "did",
    "doing", "a", "an", "the", "and", "but", "if", "or", "because", "as", "until", "while", "of", "at", "by",
    "for", "with", "about", "against", "between", "into", "through", "during", "before", "after", "above",
    "below", "to", "from", "up", "down", "in", "out", "on", "off", "over", "under", "again", "further", "then",
    "once", "here", "there", "when", "where", "why", "how", "all", "any", "both", "each", "few", "more", "most",
    "other", "some", "such", "no", "nor", "not", "only", "own", "same", "so", "than", "too", "very", "s", "t",
    "can", "will", "just", "don", "should", "now", "d", "ll", "m", "o", "re", "ve", "y", "ain", "aren", "couldn",
    "didn", "doesn", "hadn", "hasn", "haven", "isn", "ma", "mightn", "mustn", "needn", "shan", "shouldn", "wasn",
    "weren", "won", "wouldn", "could", "would",
])


@dataclass(frozen=True)
class Doc:
    """One source document."""

    id: str
    text: str


@dataclass(frozen=True)
class Source:
    """A retrieved chunk with its document id and fused score."""

    doc: str
    text: str
    score: float
    position: int


def tokens(text: str) -> list[str]:
    """Lower-case word tokens without stopwords (BM25 and the guardrail's novelty check share these)."""
    return [t for t in TOKEN.findall(text.lower()) if t not in STOPWORDS]


def chunk(doc: Doc, max_words: int = 120, overlap: int = 20) -> list[str]:
    """Split a document into windows of whole sentences of at most ~max_words, overlapping by ~overlap words."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n+", doc.text) if s.strip()]
    chunks: list[str] = []
    current: list[str] = []
    for sentence in sentences:
        if current and len(" ".join([*current, sentence]).split()) > max_words:
            chunks.append(" ".join(current))
            tail: list[str] = []
            while current and len(" ".join([current[-1], *tail]).split()) <= overlap:
                tail.insert(0, current.pop())
            current = tail
        current.append(sentence.strip())
    if current:
        chunks.append(" ".join(current))
    return chunks


class BM25:
    """Okapi BM25 over tokenized chunks."""

    def __init__(self, texts: list[str], k1: float = 1.5, b: float = 0.75):
        self.docs = [Counter(tokens(t)) for t in texts]
        self.lengths = np.array([sum(d.values()) for d in self.docs], dtype=np.float64)
        self.avg = float(self.lengths.mean()) if len(self.docs) else 0.0
        df = Counter(term for d in self.docs for term in d)
        n = len(self.docs)
        self.idf = {term: math.log(1 + (n - f + 0.5) / (f + 0.5)) for term, f in df.items()}
        self.k1, self.b = k1, b

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every chunk for the query."""
        out = np.zeros(len(self.docs))
        norm = self.k1 * (1 - self.b + self.b * self.lengths / max(self.avg, 1e-9))
        for term in set(tokens(query)):
            idf = self.idf.get(term)
            if idf is None:
                continue
            tf = np.array([d.get(term, 0) for d in self.docs], dtype=np.float64)
            out += idf * tf * (self.k1 + 1) / (tf + norm)
        return out


class Index:
    """A searchable corpus: chunk texts, their unit MiniLM vectors, and BM25."""

    def __init__(self, corpus: str, doc_ids: list[str], texts: list[str], vectors: np.ndarray):
        self.corpus, self.doc_ids, self.texts, self.vectors = corpus, doc_ids, texts, vectors
        self.bm25 = BM25(texts)

    def search(self, query: str, k: int = 4, mode: str = "hybrid") -> list[Source]:
        """Top-k chunks: dense, bm25, or hybrid (reciprocal-rank fusion of both)."""
        if not self.texts:
            return []
        dense = self.vectors @ embed([query])[0]
        if mode == "dense":
            fused = dense.astype(np.float64)
        elif mode == "bm25":
            fused = self.bm25.scores(query)
        else:
            fused = _rrf(dense) + _rrf(self.bm25.scores(query))
        best = np.argsort(-fused, kind="stable")[:k]
        return [Source(self.doc_ids[i], self.texts[i], round(float(fused[i]), 5), int(i)) for i in best]


def _rrf(scores: np.ndarray, k: int = 60) -> np.ndarray:
    ranks = np.empty(len(scores))
    ranks[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
    return 1.0 / (k + ranks)


def corpus_key(name: str, docs: list[Doc], max_words: int) -> str:
    """name:hash of the documents and chunk size (a changed document means a new index)."""
    digest = hashlib.sha256(f"{max_words}".encode())
    for doc in docs:
        digest.update(f"\0{doc.id}\0{doc.text}".encode())
    return f"{name}:{digest.hexdigest()[:16]}"


def build_index(store: Store, name: str, docs: list[Doc], max_words: int = 120) -> Index:
    """The index of a corpus: loaded from the store when built before, else chunked, embedded and stored."""
    key = corpus_key(name, docs, max_words)
    query = sa.select(doc_chunks.c.doc, doc_chunks.c.text, doc_chunks.c.vector).where(
        doc_chunks.c.corpus == key).order_by(doc_chunks.c.position)
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    if rows:
        vectors = np.stack([np.frombuffer(r.vector, dtype=np.float32) for r in rows])
        return Index(key, [r.doc for r in rows], [r.text for r in rows], vectors)
    pairs = [(doc.id, text) for doc in docs for text in chunk(doc, max_words)]
    doc_ids, texts = [p[0] for p in pairs], [p[1] for p in pairs]
    vectors = embed(texts)
    with store.engine.begin() as conn:
        if not conn.scalar(sa.select(sa.func.count()).where(doc_chunks.c.corpus == key)):
            conn.execute(doc_chunks.insert(), [
                {"corpus": key, "position": i, "doc": d, "text": t, "vector": v.astype(np.float32).tobytes()}
                for i, (d, t, v) in enumerate(zip(doc_ids, texts, vectors, strict=True))])
    return Index(key, doc_ids, texts, vectors)
