"""In-context learning by default: a pool of solved examples per flow, the k nearest pulled into a prompt.

Examples are (input text, answer) pairs with a MiniLM embedding of the input, kept in the store. Answers a
human approves or edits in the review queue join the pool at once, so the next similar input sees them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sqlalchemy as sa

from llmbus.embed import embed
from llmbus.store import Store, now
from llmbus.store.schema import example_pool


class ExamplePool:
    """The solved examples of one named pool."""

    def __init__(self, store: Store, name: str):
        self.store, self.name = store, name

    def add(self, text: str, answer: str, *, label: str | None = None, origin: str = "seed") -> None:
        """Add one solved example (embedded now, so it is searchable at once)."""
        self.add_many([(text, answer)], label=label, origin=origin)

    def add_many(self, pairs: list[tuple[str, str]], *, label: str | None = None, origin: str = "seed") -> None:
        """Add solved examples in one batch."""
        if not pairs:
            return
        vectors = embed([text for text, _ in pairs])
        rows = [{"pool": self.name, "input_text": text, "answer": answer, "label": label, "origin": origin,
                 "vector": vector.astype(np.float32).tobytes(), "created_at": now()}
                for (text, answer), vector in zip(pairs, vectors, strict=True)]
        with self.store.engine.begin() as conn:
            conn.execute(example_pool.insert(), rows)

    def size(self) -> int:
        """How many examples the pool holds."""
        query = sa.select(sa.func.count()).select_from(example_pool).where(example_pool.c.pool == self.name)
        with self.store.engine.connect() as conn:
            return int(conn.scalar(query) or 0)

    def nearest(self, text: str, k: int = 3) -> list[dict[str, Any]]:
        """The k most similar examples, least similar first (the closest sits next to the new input)."""
        query = sa.select(example_pool.c.input_text, example_pool.c.answer, example_pool.c.label,
                          example_pool.c.origin, example_pool.c.vector).where(example_pool.c.pool == self.name)
        with self.store.engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows or k <= 0:
            return []
        matrix = np.stack([np.frombuffer(r.vector, dtype=np.float32) for r in rows])
        similarity = matrix @ embed([text])[0]
        best = np.argsort(-similarity, kind="stable")[:k]
        return [{"input": rows[i].input_text, "answer": rows[i].answer, "label": rows[i].label,
                 "origin": rows[i].origin, "similarity": round(float(similarity[i]), 4)} for i in reversed(best)]
