"""The gateway's response caches (run/cache.py holds the caches themselves): a greedy request's answer is
reused from the exact cache (the same request to the same route), then from the semantic cache (a similar last
user turn, under the same route, parameters and earlier turns). Answers are cached under the model the route
asks first, so a fallback's answer serves the route's next request too.
"""

from __future__ import annotations

import hashlib

from llmbus.providers import Request
from llmbus.providers.base import Completion
from llmbus.run.cache import ExactCache, SemanticCache
from llmbus.serve.config import CacheConfig
from llmbus.store import Store
from llmbus.store.gateway_state import SemanticEntries
from llmbus.task.chat import context_of


class GatewayCaches:
    """The exact and semantic caches serve.yaml's `cache:` turns on, kept in the store."""

    def __init__(self, store: Store, config: CacheConfig):
        self.exact = ExactCache(store) if config.exact else None
        self.semantic = (SemanticCache(config.semantic_threshold, saved=SemanticEntries(store.engine))
                         if config.semantic else None)

    @property
    def on(self) -> bool:
        """Whether any cache is on (a lookup may then wait on the store)."""
        return self.exact is not None or self.semantic is not None

    def load(self, names: list[str]) -> None:
        """Read the saved semantic entries of the served models (at start)."""
        if self.semantic is not None:
            self.semantic.load([f"{name}:" for name in names])

    def remember(self, name: str, model: str, request: Request, completion: Completion) -> None:
        """Put a fresh greedy answer into the caches, under the model its route asked first."""
        if not request.greedy:
            return
        if self.exact is not None:
            self.exact.put(request, model, completion)
        if self.semantic is not None and self._semantic_fits(request):
            assert request.input is not None
            self.semantic.add(self._scope(name, model, request), request.input, completion.cache_dict())

    def cached(self, name: str, model: str, request: Request) -> tuple[Completion, str] | None:
        """A cached answer to a greedy request (exact first, then semantic) and which cache gave it."""
        if not request.greedy:
            return None
        if self.exact is not None:
            cached = self.exact.get(request, model)
            if cached is not None:
                return cached, "cache_exact"
        if self.semantic is not None and self._semantic_fits(request):
            assert request.input is not None
            found = self.semantic.lookup(self._scope(name, model, request), request.input)
            if found is not None:
                completion = Completion(**found[0])
                completion.extra["similarity"] = round(found[1], 4)
                return completion, "cache_semantic"
        return None

    @staticmethod
    def _scope(name: str, model: str, request: Request) -> str:
        """The semantic cache's scope: a similar last user turn is the same question only under the same route,
        parameters and earlier turns (the system prompt, the conversation so far)."""
        context = hashlib.sha256(context_of(request.messages).encode()).hexdigest()[:16]
        return f"{name}:{model}:{request.max_tokens}:{request.temperature}:{context}"

    def _semantic_fits(self, request: Request) -> bool:
        """Whether a similar question may share an answer: not when tools may be called or several answers
        (n > 1) or a particular response format were asked for."""
        return self.semantic is not None and bool(request.input) and not request.tools and (request.n or 1) == 1 \
            and request.response_format is None
