"""`litellm:MODEL`: every backend LiteLLM's SDK reaches (Anthropic, Bedrock, Vertex AI, Azure OpenAI, Mistral,
OpenAI-compatible servers…) as an llmbus provider, through one dependency (`pip install 'llmbus[litellm]'`).

A plugin like any third party's: this file, plus one line in pyproject.toml's `llmbus.providers` entry points;
it uses only llmbus's plugin API (`llmbus.providers`) and changes nothing in llmbus. In llmbus.yaml:

    models:
      litellm:claude:
        model: anthropic/claude-3-5-haiku-20241022    # LiteLLM's PROVIDER/MODEL name
        api_key_env: ANTHROPIC_API_KEY                 # optional: LiteLLM reads each provider's own variables
      litellm:azure-mini:
        model: azure/my-gpt-4o-mini-deployment
        api_base: https://my-resource.openai.azure.com
        api_version: "2024-10-21"
      litellm:bedrock-haiku:
        model: bedrock/anthropic.claude-3-5-haiku-20241022-v1:0
        options: {aws_region_name: us-east-1}          # any other litellm.completion keyword

An unnamed `litellm:PROVIDER/MODEL` works too. Calls are OpenAI's format on both sides (LiteLLM translates to
each backend), so llmbus's own wire functions build the request and read the answer: chat turns, tools, JSON
schemas, and label probabilities from logprobs where the backend returns them (others still answer; their
labels come without probabilities). Cost comes from llmbus's prices (llmbus.yaml, else the genai-prices
table, else unknown), never LiteLLM's cost map, so every backend is priced one way.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

from pydantic import Field

from llmbus.errors import ModelError, ProviderError
from llmbus.extras import require
from llmbus.providers import Completion, ModelConfig, Request, price_of, usage_of
from llmbus.providers.openai_wire import from_response, to_payload


class LiteLLMConfig(ModelConfig):
    """A model LiteLLM can call, by LiteLLM's name, with the connection settings it needs."""

    provider: Literal["litellm"] = "litellm"
    model: str | None = None  # LiteLLM's PROVIDER/MODEL name (default: the reference's name)
    api_base: str | None = None  # the endpoint, where the backend needs one (Azure, self-hosted servers)
    api_key_env: str | None = None  # the variable holding the key (default: the one LiteLLM reads per backend)
    api_version: str | None = None  # Azure OpenAI's API version
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=4, ge=0)  # LiteLLM retries rate limits, timeouts and 5xx with backoff
    options: dict[str, Any] = Field(default_factory=dict)  # more litellm.completion keywords (aws_region_name…)

    hint: ClassVar[str] = "name it as litellm:PROVIDER/MODEL, e.g. litellm:anthropic/claude-3-5-haiku-20241022"

    @classmethod
    def reference(cls, name: str) -> dict[str, Any] | None:
        """`litellm:PROVIDER/MODEL` is that model with LiteLLM's defaults."""
        return {"model": name} if name else None

    @property
    def litellm_model(self) -> str:
        """The name LiteLLM routes by."""
        return self.model or self.name.partition(":")[2]

    @property
    def remote_model(self) -> str:
        """The backend's own model name (LiteLLM's provider prefix removed): what the price table knows."""
        return self.litellm_model.partition("/")[2] or self.litellm_model

    @property
    def urls(self) -> tuple[str, ...]:
        """The endpoint, when one is set."""
        return (self.api_base,) if self.api_base else ()


def _litellm() -> Any:
    """The litellm module, or MissingExtra: one error line naming `pip install 'llmbus[litellm]'`."""
    # LiteLLM fetches its model cost map from the network at import unless told to use the bundled copy;
    # llmbus never prices with it, and nothing is fetched at run time
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm: Any = require("litellm", "litellm", "litellm: models")
    litellm.suppress_debug_info = True  # its "Give Feedback / Get Help" banner on every error
    return litellm


class LiteLLMProvider:
    """Calls one model through `litellm.completion`."""

    Config = LiteLLMConfig

    def __init__(self, config: LiteLLMConfig):
        self.name = config.name
        self.config = config
        self.price = price_of(config)
        self.litellm = _litellm()

    def check(self) -> None:
        """A configured key variable must be set (LiteLLM cannot ask a backend whether it is up without a
        billed call, so reachability shows on the first call)."""
        if self.config.api_key_env and not os.environ.get(self.config.api_key_env):
            raise ModelError(f"{self.name}: ${self.config.api_key_env} is not set")

    def complete(self, request: Request) -> Completion:
        """One call (LiteLLM retries); raises ProviderError with a kind once retries are spent."""
        body = to_payload(self.config.litellm_model, "chat", request)
        try:
            response = self.litellm.completion(**body, **self._connection())
        except Exception as exc:  # LiteLLM's errors carry the HTTP status the backend gave
            raise provider_error(self.name, exc) from None
        completion = from_response("chat", response.model_dump(), request)
        # an unknown price costs 0 here: the run's stored price says its cost is unknown (shown as ?)
        completion.cost_usd = self.price.cost(usage_of(completion)) or 0.0
        return completion

    def _connection(self) -> dict[str, Any]:
        """The keywords that reach the backend: endpoint, key, version, timeout, retries and any options."""
        config = self.config
        found: dict[str, Any] = {"timeout": config.timeout_s, "num_retries": config.max_retries,
                                 "drop_params": True}  # a backend without logprobs still answers
        if config.api_base:
            found["api_base"] = config.api_base
        if config.api_key_env and os.environ.get(config.api_key_env):
            found["api_key"] = os.environ[config.api_key_env]
        if config.api_version:
            found["api_version"] = config.api_version
        return {**found, **config.options}

    def close(self) -> None:
        """Nothing held between calls."""


def provider_error(name: str, exc: Exception) -> ProviderError:
    """A LiteLLM exception as llmbus's error kinds: rate_limited, timeout, connection, http_STATUS."""
    status = getattr(exc, "status_code", None)
    kind = type(exc).__name__
    if status == 429 or kind == "RateLimitError":
        found = "rate_limited"
    elif kind == "Timeout" or status == 408:
        found = "timeout"
    elif kind == "APIConnectionError":
        found = "connection"
    else:
        found = f"http_{status}" if isinstance(status, int) else "bad_response"
    return ProviderError(found, f"{name}: {kind}: {str(exc)[:200]}")
