"""serve.yaml: the served model names and their routes, API keys, caches, canaries and logging settings.

    models:
      sms: {model: cascade:sms_spam, task: examples/sms_spam/task.yaml, fallbacks: [openai:backup]}
      gemma: {model: local:gemma-3-270m, timeout_s: 60}
    keys:
      - {key: env:TEAM_A_KEY, name: team-a, requests_per_minute: 600, budget_usd: 20}
    cache: {exact: true, semantic: true, semantic_threshold: 0.97}

Errors name the file, line and field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmbus.errors import SpecError
from llmbus.serve.canary import CanaryConfig
from llmbus.serve.gateway_keys import KeyConfig
from llmbus.task.spec import describe_validation_error, read_yaml, yaml_line


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RouteConfig(_Config):
    """One served model name → a model reference, its fallbacks and (optionally) the task it serves."""

    model: str
    task: str | None = None  # a task spec: gives the label set / schema, and scopes the semantic cache
    fallbacks: list[str] = Field(default_factory=list)
    timeout_s: float = Field(default=120.0, gt=0)


class CacheConfig(_Config):
    """Response caches: exact (call log) and semantic (MiniLM, per served model)."""

    exact: bool = True
    semantic: bool = False
    semantic_threshold: float = Field(default=0.97, gt=0, le=1)


class ServeConfig(_Config):
    """serve.yaml."""

    models: dict[str, RouteConfig]
    keys: list[KeyConfig] = Field(default_factory=list)
    cache: CacheConfig = CacheConfig()
    metrics_key: str | None = None  # literal or env:NAME: /metrics then needs `Authorization: Bearer KEY`
    log_prompt_chars: int | None = Field(default=None, ge=0)  # the call log keeps at most this much of a prompt
    canary: dict[str, CanaryConfig] = Field(default_factory=dict)  # served model → its candidate on live traffic
    budget_unpriced: Literal["refuse", "allow"] = "refuse"  # a key budget over a model without a price
    source: Path | None = Field(default=None, exclude=True)

    def secret_refs(self) -> list[tuple[str, str]]:
        """(field, literal or env:NAME) of every API key and of the metrics key."""
        refs = [(f"keys[{i}] ({k.name})", k.key) for i, k in enumerate(self.keys)]
        return refs + ([("metrics_key", self.metrics_key)] if self.metrics_key is not None else [])


def load_serve_config(path: str | Path) -> ServeConfig:
    """Read serve.yaml; errors name file, line and field."""
    path = Path(path)
    node, raw = read_yaml(path, "serve config")
    if not isinstance(raw, dict | None):
        raise SpecError(f"{path}:1: serve config is a mapping with `models:` (and keys, cache…), not a "
                        f"{type(raw).__name__}")
    try:
        config = ServeConfig.model_validate({**(raw or {}), "source": path.resolve()})
    except ValidationError as exc:
        raise SpecError(describe_validation_error(path, node, exc)) from None
    for name, canary in config.canary.items():
        if name not in config.models:
            raise SpecError(f"{path}:{yaml_line(node, ['canary', name])}: canary.{name}: not a served model "
                            f"(models: {', '.join(sorted(config.models))})")
        if canary.candidate == config.models[name].model:
            raise SpecError(f"{path}:{yaml_line(node, ['canary', name, 'candidate'])}: canary.{name}.candidate: "
                            f"{canary.candidate} already serves {name}")
    return config
