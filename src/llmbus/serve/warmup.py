"""Warming a served task before its first request: the nearest-shot pool embedded (or its TF-IDF / BM25 index
built) at start, so no client waits for it. Pool vectors the store's embedding cache holds are read, not
computed, so a restart is quick; embedding shows progress on stderr (the CLI's callback)."""

from __future__ import annotations

from llmbus.embed import EmbeddingCache, StageCallback, embed
from llmbus.task.data import Item
from llmbus.task.fewshot import NEAREST, ExampleSelector


def warm_selectors(selectors: dict[str, ExampleSelector], cache: EmbeddingCache,
                   progress: StageCallback | None = None) -> None:
    """Build each similarity-ranked selector's pool index now (by its first selection, on a placeholder item)."""
    for name, selector in selectors.items():
        strategy = selector.spec.fewshot.strategy
        if strategy not in NEAREST or not selector.pool or selector.k == 0:
            continue
        field = selector.spec.data.input
        if strategy == "nearest":  # embedded here with progress; the selector then reads the cached vectors
            embed([item.text(field) for item in selector.pool], progress=progress, what=f"{name} pool examples",
                  cache=cache)
        elif progress:
            progress(f"indexing {name} pool examples", None, None)
        selector.select(Item(id="warm-up", fields={field: "warm-up"}, expected=None))
