"""Providers: the backends behind a model reference (`local:`, `openai:`, `encoder:`, `cascade:`, `head:`),
one module each, looked up by prefix in `registry`; the package exposes what callers use."""

from llmbus.providers.base import Completion, Provider, Request
from llmbus.providers.registry import REGISTRY, open_provider

__all__ = ["REGISTRY", "Completion", "Provider", "Request", "open_provider"]
