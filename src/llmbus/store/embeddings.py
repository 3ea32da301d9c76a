"""The store's embedding cache: float32 vectors keyed by (embedding model, sha256 of the text).

It implements `llmbus.embed.EmbeddingCache`, so layers below the store (the few-shot selector) take it as a
plain argument; run, advise and distill share the vectors through the one `embeddings` table.
"""

from __future__ import annotations

import threading

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from llmbus.store.schema import embeddings


class StoreEmbeddings:
    """Cached vectors in the store's `embeddings` table; counts hits and misses (safe to share between threads)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def get_many(self, model: str, hashes: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors among `hashes`, in one query; the rest count as misses."""
        wanted = list(dict.fromkeys(hashes))
        if not wanted:
            return {}
        query = sa.select(embeddings.c.text_sha256, embeddings.c.dim, embeddings.c.vector).where(
            embeddings.c.model == model, embeddings.c.text_sha256.in_(wanted))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        # A row whose bytes do not match its dim (written by hand, truncated) is a miss: it is embedded again.
        found = {digest: np.frombuffer(blob, dtype="<f4").astype(np.float32) for digest, dim, blob in rows
                 if len(blob) == 4 * dim}
        with self._lock:
            self.hits += len(found)
            self.misses += len(wanted) - len(found)
        return found

    def put_many(self, model: str, vectors: dict[str, np.ndarray]) -> None:
        """Store hash -> vector entries in one transaction; ones already cached (another writer) keep theirs."""
        if not vectors:
            return
        rows = [{"model": model, "text_sha256": digest, "dim": int(vector.shape[0]),
                 "vector": np.ascontiguousarray(vector, dtype="<f4").tobytes()}
                for digest, vector in vectors.items()]
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        with self.engine.begin() as conn:
            conn.execute(dialect.insert(embeddings).on_conflict_do_nothing(), rows)

