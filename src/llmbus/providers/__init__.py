"""Providers: one class per backend, looked up by the prefix of a model reference (`local:`, `openai:`).

Adding a backend is one file with a class that has `complete`, `check` and `close`, plus one line here.
`encoder:` serves a distilled student in-process; `cascade:` composes a student and a teacher.
"""

from __future__ import annotations

from collections.abc import Callable

from llmbus.models import ModelConfig, resolve_model
from llmbus.providers.base import Completion, Provider, Request
from llmbus.providers.cascade import CascadeProvider
from llmbus.providers.encoder import EncoderProvider
from llmbus.providers.local import LocalProvider
from llmbus.providers.openai import OpenAIProvider

__all__ = ["REGISTRY", "Completion", "Provider", "Request", "open_provider"]

REGISTRY: dict[str, Callable[[ModelConfig], Provider]] = {
    "local": LocalProvider,
    "openai": OpenAIProvider,
    "encoder": EncoderProvider,
    "cascade": CascadeProvider,
}


def open_provider(model: str | ModelConfig) -> Provider:
    """A ready provider for a model reference or config (call `close()` when done)."""
    config = resolve_model(model) if isinstance(model, str) else model
    return REGISTRY[config.provider](config)
