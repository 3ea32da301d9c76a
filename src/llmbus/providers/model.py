"""`llmbus.get_model(ref)`: a model reference opened for calls from Python, like simonw/llm's
`get_model("…").prompt("…")`.

    with llmbus.get_model("openai:gpt-4o-mini") as model:
        print(model.prompt("Name a colour.", system="Answer in one word.").text)
        answer = model.chat([{"role": "user", "content": "Hi"}], max_tokens=20)

Settings given to `get_model` override the model's own for this Model only (`get_model("local:gemma-3-270m",
threads=2, parallel=8)`); the config file is never written. A Model can be handed to `Project.run` and
`Project.judge`, which then call it instead of opening the reference again.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from llmbus.errors import LlmbusError, ModelError
from llmbus.providers.base import Completion, Provider, Request
from llmbus.providers.config import ModelConfig, resolve_model
from llmbus.providers.registry import registry
from llmbus.task.chat import Message


class Model:
    """One model reference and its open provider (a context manager: leaving it stops servers, closes sockets)."""

    def __init__(self, ref: str, provider: Provider | None = None, **settings: Any):
        self.config: ModelConfig | None = None if provider is not None else configured(resolve_model(ref), settings)
        self.ref = ref
        self.provider = provider if provider is not None else open_provider(self.config or ref)

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def complete(self, request: Request) -> Completion:
        """One call with a full request (turns, labels, schema, OpenAI fields)."""
        return self.provider.complete(request)

    def chat(self, messages: list[Message], **options: Any) -> Completion:
        """The answer to chat turns; `options` are Request fields (max_tokens, temperature, tools, labels…)."""
        return self.complete(replace(Request(messages=tuple(messages)), **options))

    def prompt(self, text: str, *, system: str | None = None, **options: Any) -> Completion:
        """The answer to one user turn (after an optional system turn)."""
        turns: list[Message] = [{"role": "system", "content": system}] if system else []
        return self.chat([*turns, {"role": "user", "content": text}], **options)

    def close(self) -> None:
        """Release the provider (stops a local llama-server)."""
        self.provider.close()


def open_provider(model: str | ModelConfig) -> Provider:
    """A ready provider for a model reference or config, from the provider its prefix registered (call
    `close()` when done)."""
    config = resolve_model(model) if isinstance(model, str) else model
    return registry().provider_type(config.provider)(config)


def get_model(ref: str, **settings: Any) -> Model:
    """A model by reference (`local:gemma-3-270m`, `openai:NAME`, a name in llmbus.yaml…), ready for calls;
    `settings` override its config's fields (threads, parallel, flash_attn…: what its llmbus.yaml entry takes)."""
    return Model(ref, **settings)


def configured(config: ModelConfig, settings: dict[str, Any]) -> ModelConfig:
    """The config with some fields replaced, validated as its provider's config (an unknown field or a wrong
    value is one error line naming the model and the field)."""
    if not settings:
        return config
    try:
        return type(config).model_validate({**config.model_dump(), **settings})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        message = "unknown setting" if error["type"] == "extra_forbidden" else error["msg"]
        raise ModelError(f"model {config.name}: {field}: {message}") from None


def model_reads_prompt(model: str) -> bool:
    """Whether a model's provider reads rendered prompts (False for in-process students and heads), known
    without opening it; True for a model that does not resolve (opening it then says why)."""
    try:
        config = resolve_model(model)
        return bool(getattr(registry().provider_type(config.provider), "reads_prompt", True))
    except LlmbusError:
        return True
