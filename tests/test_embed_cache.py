"""The store's embedding cache: vectors keyed by (model, text hash), identical to fresh ones, on SQLite and
PostgreSQL; a second nearest-shot run embeds nothing new."""

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from conftest import spam_or_ham, write_items, write_spec
from llmbus.embed import MINILM_NAME, embed, text_hash
from llmbus.run.engine import run_task
from llmbus.run.options import RunOptions
from llmbus.store import Store
from llmbus.store.schema import embeddings
from llmbus.task.spec import load_spec
from llmbus.testing import ScriptedProvider

TEXTS = ["win a free prize now", "see you at lunch", "win a free prize now", "the meeting moved to 3pm"]


def _check_cache(store: Store) -> None:
    cache = store.embeddings
    fresh = embed(TEXTS)
    first = embed(TEXTS, cache=cache)
    assert (cache.hits, cache.misses) == (0, 3)  # the repeated text is looked up and embedded once
    assert first.dtype == np.float32 and first.shape == (4, 384)
    assert np.allclose(first, fresh, rtol=0, atol=1e-6)
    second = embed([*TEXTS, "a new text"], cache=cache)
    assert (cache.hits, cache.misses) == (3, 4)  # only the new text missed
    assert np.array_equal(second[:4], first)  # stored float32 bytes come back bit for bit
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(embeddings.c.model, embeddings.c.text_sha256, embeddings.c.dim)).all()
    assert sorted(rows) == sorted((MINILM_NAME, text_hash(t), 384) for t in set(TEXTS) | {"a new text"})
    # Another model's vectors are other rows: nothing under MiniLM's name answers for it.
    assert cache.get_many("other-model", [text_hash(TEXTS[0])]) == {}


def test_embedding_cache_hits_misses_and_identical_vectors_sqlite(store: Store):
    _check_cache(store)


def test_embedding_cache_on_postgres(postgres_url: str):
    store = Store(postgres_url)
    try:
        with store.engine.begin() as conn:
            conn.execute(sa.delete(embeddings))  # the server is shared by the session's tests
        _check_cache(store)
        # A second writer of the same vectors (another process, say) is no error: first writer wins.
        store.embeddings.put_many(MINILM_NAME, {text_hash(TEXTS[0]): np.zeros(384, dtype=np.float32)})
        kept = store.embeddings.get_many(MINILM_NAME, [text_hash(TEXTS[0])])[text_hash(TEXTS[0])]
        assert np.allclose(kept, embed([TEXTS[0]]), rtol=0, atol=1e-6)
    finally:
        store.close()


def test_second_nearest_run_embeds_nothing_new(tmp_path: Path):
    write_items(tmp_path / "items.jsonl", 40)
    spec = load_spec(write_spec(tmp_path / "task.yaml", "items.jsonl",
                                fewshot={"k": 3, "strategy": "nearest", "pool_fraction": 0.25}))
    first_store = Store(str(tmp_path / "calls.db"))
    first = run_task(spec, "scripted:test", first_store, RunOptions(concurrency=2),
                     provider=ScriptedProvider(spam_or_ham))
    missed = first_store.embeddings.misses
    assert missed == 40 and first_store.embeddings.hits == 0  # 10 pool + 30 eval texts, all distinct
    first_store.close()
    again = Store(str(tmp_path / "calls.db"))  # a new process's store: only the table carries over
    second = run_task(spec, "scripted:test", again, RunOptions(concurrency=2, use_cache=False),
                      provider=ScriptedProvider(spam_or_ham))
    assert (again.embeddings.misses, again.embeddings.hits) == (0, 40)
    prompts = [{c["item_id"]: c["prompt"] for c in again.iter_calls(run)} for run in (first, second)]
    assert prompts[0] == prompts[1]  # the same nearest shots, picked from cached vectors
    again.close()


@pytest.mark.parametrize("lookup_batch", [1, 2])
def test_lookups_go_in_batches(store: Store, lookup_batch: int):
    embed(TEXTS, cache=store.embeddings)
    queries: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *args: queries.append(args[2]))
    again = embed(TEXTS, cache=store.embeddings, lookup_batch=lookup_batch)
    selects = [q for q in queries if q.lstrip().upper().startswith("SELECT")]
    assert len(selects) == -(-3 // lookup_batch)  # 3 distinct texts
    assert not [q for q in queries if q.lstrip().upper().startswith("INSERT")]  # nothing new to write
    assert again.shape == (4, 384)
