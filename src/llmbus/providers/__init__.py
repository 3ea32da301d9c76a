"""Providers: the backends behind a model reference (`local:`, `openai:`, `encoder:`, `cascade:`, `head:`, and
any plugin's), one module each, found by prefix through the `llmbus.providers` entry points (`registry`).

What a plugin builds on: `ModelConfig` (its settings' base), `Request` and `Completion` (what a call takes and
returns), `price_of`/`Usage` (what a call costs), and `openai_wire`'s pure functions for OpenAI's format.
"""

from llmbus.providers.base import Completion, Provider, Request
from llmbus.providers.config import ModelConfig, resolve_model
from llmbus.providers.model import open_provider
from llmbus.providers.prices import Usage, price_of, usage_of
from llmbus.providers.registry import registry

__all__ = ["Completion", "ModelConfig", "Provider", "Request", "Usage", "open_provider", "price_of", "registry",
           "resolve_model", "usage_of"]
