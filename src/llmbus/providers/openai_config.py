"""The settings of an `openai:` model (any OpenAI-compatible endpoint, providers/openai.py) in llmbus.yaml:

    openai:gpt-small:
      base_url: http://127.0.0.1:8000/v1
      model: gpt-small              # the name the endpoint knows
      api_key_env: OPENAI_API_KEY
      usd_per_1m_input: 0.15
      usd_per_1m_output: 0.60
    openai:qwen:                    # one model on several OpenAI-compatible servers (providers/replicas.py)
      base_urls: [http://10.0.0.1:8000/v1, http://10.0.0.2:8000/v1]
      model: Qwen/Qwen2.5-3B-Instruct
      routing: {affinity: prefix}   # optional; also eject_after, eject_s, health_interval_s…

`openai:MODEL` without an entry works when `OPENAI_BASE_URL` is set.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmbus.providers.config import ModelConfig, describe_value
from llmbus.redact import masked_url


class RoutingConfig(BaseModel):
    """How a model served by several `base_urls` picks a replica and decides one is down (providers/replicas.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # prefix: prompts sharing their first `prefix_chars` characters go to the same replica (its KV prefix cache)
    affinity: Literal["none", "prefix"] = "none"
    prefix_chars: int = Field(default=256, ge=1)
    affinity_slack: int = Field(default=4, ge=0)  # …unless it has this many more requests in flight than the least
    eject_after: int = Field(default=3, ge=1)  # consecutive failures (connection, timeout, 5xx) that eject a replica
    eject_s: float = Field(default=30.0, gt=0)  # how long before an ejected replica gets one trial request
    health_interval_s: float = Field(default=5.0, ge=0)  # GET /health on every replica this often (0: never)


class OpenAIConfig(ModelConfig):
    """One model on an OpenAI-compatible endpoint, or on several serving it (replicas)."""

    provider: Literal["openai"] = "openai"
    base_url: str | None = None
    base_urls: tuple[str, ...] | None = None
    routing: RoutingConfig = RoutingConfig()
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    api: Literal["chat", "completions"] = "chat"
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=4, ge=0)
    max_concurrency: int = Field(default=8, ge=1)

    hint: ClassVar[str] = "set OPENAI_BASE_URL or add the model to llmbus.yaml"

    @classmethod
    def reference(cls, name: str) -> dict[str, Any] | None:
        """`openai:MODEL` is MODEL at $OPENAI_BASE_URL, when it is set."""
        url = os.environ.get("OPENAI_BASE_URL")
        return {"base_url": url, "model": name} if name and url else None

    @field_validator("base_url")
    @classmethod
    def _one_url(cls, value: str | None) -> str | None:
        return value if value is None else endpoint_url(value)

    @field_validator("base_urls", mode="before")
    @classmethod
    def _url_list(cls, value: object) -> object:
        if value is None:
            return None
        if not isinstance(value, list | tuple):
            raise ValueError(f"must be a list of endpoint URLs, e.g. [http://10.0.0.1:8000/v1, "
                             f"http://10.0.0.2:8000/v1], not {describe_value(value)}")
        if not value:
            raise ValueError("must list at least one endpoint URL")
        urls = [endpoint_url(url) for url in value]
        if len(set(urls)) < len(urls):
            raise ValueError(f"lists {masked_url(next(u for u in urls if urls.count(u) > 1))!r} twice")
        return tuple(urls)

    @model_validator(mode="after")
    def _one_kind_of_endpoint(self) -> OpenAIConfig:
        if self.base_url and self.base_urls:
            raise ValueError("give base_url (one endpoint) or base_urls (replicas), not both")
        return self

    @property
    def remote_model(self) -> str:
        """The `model` setting, else the reference's name."""
        return self.model or self.name.partition(":")[2]

    @property
    def urls(self) -> tuple[str, ...]:
        """The endpoint URLs of an OpenAI-compatible model: its replicas, or its one base_url."""
        return self.base_urls or ((self.base_url,) if self.base_url else ())


def endpoint_url(value: object) -> str:
    """An http(s) URL with a host, as given; anything else is a ValueError for the config's error line."""
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
        ok = parts is not None and parts.scheme in ("http", "https") and bool(parts.hostname)
        shown = describe_value(masked_url(value) if isinstance(value, str) else value)
    except ValueError:  # an unclosed IPv6 bracket
        ok, shown = False, "the text given"
    if not ok:
        raise ValueError(f"{shown} is not an endpoint URL (http://HOST:PORT/v1)")
    return str(value)
