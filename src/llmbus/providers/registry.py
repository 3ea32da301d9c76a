"""The provider registry: the backends behind a model reference's prefix (`local:`, `openai:`…), found through
the `llmbus.providers` entry-point group. The built-ins are registered there the same way as any plugin
(pyproject.toml), so a new backend is one file plus one line in its package's pyproject:

    [project.entry-points."llmbus.providers"]
    echo = "echo_plugin:EchoProvider"

The entry point's name is the prefix; it names a provider class (or any callable) that takes its config and
has a `Config` attribute: a `ModelConfig` subclass with the settings of its `llmbus.yaml` entries (see
providers/config.py for the hooks it may override). A provider module is imported only when its prefix is
first used, so `openai:` never loads torch.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol

from pydantic import BaseModel

from llmbus.errors import ModelError
from llmbus.providers.base import Provider

GROUP = "llmbus.providers"


class ProviderType(Protocol):
    """What an entry point names: called with a model's config, it returns a ready provider."""

    Config: type[BaseModel]  # the config model of this prefix's llmbus.yaml entries (a ModelConfig subclass)

    def __call__(self, config: Any, /) -> Provider: ...


class Registry:
    """Providers by prefix, from entry points (default: every installed package's `llmbus.providers` group);
    each loads on first use."""

    def __init__(self, points: Iterable[EntryPoint] | None = None):
        found = entry_points(group=GROUP) if points is None else points
        # the first registration of a prefix wins: the environment's order, like Python's own path search
        self._points: dict[str, EntryPoint] = {}
        for point in found:
            self._points.setdefault(point.name, point)
        self._loaded: dict[str, ProviderType] = {}

    def prefixes(self) -> list[str]:
        """The registered prefixes, sorted."""
        return sorted(self._points)

    def __contains__(self, prefix: object) -> bool:
        return prefix in self._points

    def provider_type(self, prefix: str) -> ProviderType:
        """The provider registered for `prefix` (imported now if it was not yet); a prefix nobody registered,
        or an entry point that does not load, is a ModelError naming it."""
        if prefix not in self._loaded:
            point = self._points.get(prefix)
            if point is None:
                raise ModelError(f"no provider {prefix!r} (registered: {', '.join(self.prefixes()) or 'none'})")
            self._loaded[prefix] = _load(point)
        return self._loaded[prefix]

    def config_type(self, prefix: str) -> type[BaseModel]:
        """The config model of `prefix`'s llmbus.yaml entries."""
        return self.provider_type(prefix).Config


def _load(point: EntryPoint) -> ProviderType:
    """Import one entry point; a broken plugin is one error line naming it, not a traceback."""
    try:
        loaded = point.load()
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"provider {point.name!r} ({point.value}) does not load: {exc}") from None
    config = getattr(loaded, "Config", None)
    if not callable(loaded) or not (isinstance(config, type) and issubclass(config, BaseModel)):
        raise ModelError(f"provider {point.name!r} ({point.value}) is not a provider: it needs a `Config` "
                         "(a ModelConfig subclass) and must be callable with one")
    return loaded


# Entry points are fixed for the life of a process (installing a package needs a restart to be seen), so the
# default registry is read once and each provider imported at most once.
@functools.cache
def registry() -> Registry:
    """The registry of the installed providers."""
    return Registry()

