"""Errors a user can act on.

    LlmbusError            one clear line for the user; the CLI prints it and exits 2
    ├── SpecError          task spec or config file: names file, line and field
    ├── DataError          dataset file: names file, line and field
    ├── ModelError         unknown model, missing GGUF, a file that is not a GGUF, no llama.cpp binary
    └── ProviderError      a call failed; `kind` is what the call log records
        └── Unreachable    the endpoint cannot be reached at all (checked before a run starts)
"""

from __future__ import annotations


class LlmbusError(Exception):
    """An error whose message is meant for the user as it is."""


class SpecError(LlmbusError):
    """A task spec or config file is malformed."""


class DataError(LlmbusError):
    """A dataset file is missing, empty or malformed."""


class ModelError(LlmbusError):
    """A model reference cannot be resolved or loaded."""


class ProviderError(LlmbusError):
    """A single call failed after retries; `kind` is a short machine-readable reason."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Unreachable(ProviderError):
    """The provider's endpoint does not answer at all."""

    def __init__(self, message: str):
        super().__init__("unreachable", message)
