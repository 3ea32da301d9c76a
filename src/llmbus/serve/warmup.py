"""Warming a served task before its first request: the nearest-shot pool embedded (or its TF-IDF / BM25 index
built) at start, so no client waits for it. Pool vectors the store's embedding cache holds are read, not
computed, so a restart is quick; embedding shows progress on stderr (the CLI's callback)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from llmbus.embed import EmbeddingCache, StageCallback, embed
from llmbus.task.data import Item, load_items, split_items
from llmbus.task.fewshot import NEAREST, ExampleSelector
from llmbus.task.spec import TaskSpec, load_spec


class ServedRoute(Protocol):
    """What warming needs of a served model's route (gateway.RouteConfig)."""

    task: str | None


def served_specs(routes: Mapping[str, ServedRoute], source: Path | None) -> dict[str, TaskSpec]:
    """The task spec of each served model that serves one (a relative path is read next to serve.yaml)."""
    specs = {}
    for name, route in routes.items():
        if route.task:
            path = Path(route.task)
            if not path.is_absolute() and source is not None:
                path = source.parent / path
            specs[name] = load_spec(path)
    return specs


def embed_pools(specs: dict[str, TaskSpec], cache: EmbeddingCache, progress: StageCallback | None = None) -> None:
    """Put each served task's pool vectors into the embedding cache (what `llmbus serve --workers N` does once,
    before its workers start and read them)."""
    warm_selectors({name: ExampleSelector(spec, split_items(spec, load_items(spec)).pool, cache)
                    for name, spec in specs.items()}, cache, progress)


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
