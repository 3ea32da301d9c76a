"""The provider registry: one class per backend, looked up by the prefix of a model reference (`local:`, `openai:`).

Adding a backend is one file with a class that has `complete`, `check` and `close`, plus one line here.
`encoder:` serves a distilled student in-process; `cascade:` composes a student and a teacher.
"""

from __future__ import annotations

from collections.abc import Callable

from llmbus.errors import LlmbusError
from llmbus.providers.base import Provider
from llmbus.providers.cascade import CascadeProvider
from llmbus.providers.config import ModelConfig, resolve_model
from llmbus.providers.encoder import EncoderProvider
from llmbus.providers.local import LocalProvider
from llmbus.providers.openai import OpenAIProvider

REGISTRY: dict[str, Callable[[ModelConfig], Provider]] = {
    "local": LocalProvider,
    "openai": OpenAIProvider,
    "encoder": EncoderProvider,
    "cascade": lambda config: CascadeProvider(config, open_provider),
}


def open_provider(model: str | ModelConfig) -> Provider:
    """A ready provider for a model reference or config (call `close()` when done)."""
    config = resolve_model(model) if isinstance(model, str) else model
    return REGISTRY[config.provider](config)


def model_reads_prompt(model: str) -> bool:
    """Whether a model's provider reads rendered prompts (False for in-process students), known without opening
    it; True for a model that does not resolve (opening it then says why)."""
    try:
        config = resolve_model(model)
    except LlmbusError:
        return True
    return bool(getattr(REGISTRY.get(config.provider), "reads_prompt", True))
