"""Errors a user can act on, every one of them here.

    LlmbusError            one clear line for the user; the CLI prints it and exits 2
    ├── SpecError          task spec or config file: names file, line and field
    ├── DataError          dataset file: names file, line and field
    ├── ModelError         unknown model, missing GGUF, a file that is not a GGUF, no llama.cpp binary
    ├── MissingExtra       an optional part is not installed: names the `pip install 'llmbus[EXTRA]'` to run
    ├── ProviderError      a call failed; `kind` is what the call log records
    │   └── Unreachable    the endpoint cannot be reached at all (checked before a run starts)
    ├── RunInterrupted     Ctrl-C during a run (the CLI exits 130); the answered items are logged
    ├── GateError          an eval gate that does not parse or names a missing metric
    ├── JudgeSchemaError   every verdict of a judge run broke the label set
    ├── LabelError         unknown labeling project, item, token or label
    ├── EstimateError      a quality estimate the labels and verdicts cannot support (no labels, bad values)
    ├── ToolError          a flow tool call failed; `kind` is timeout | raised | bad_args | not_allowed
    ├── StepFailed         a flow step raised; the run is resumable
    ├── FlowInterrupted    Ctrl-C during a flow; finished steps are kept
    ├── ReviewConflict     another reviewer holds or decided the review item
    ├── InvalidEdit        a reviewer's edit breaks the answer contract
    └── GatewayError       a request the gateway refuses or cannot answer: HTTP status, headers, kind

A flow's pause for human review (`flows.steps.FlowPaused`) is control flow, not an error, and stays there.
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


class MissingExtra(LlmbusError):
    """A feature needs an optional package that is not installed; the message names the extra that brings it."""

    def __init__(self, extra: str, module: str, feature: str, reason: str):
        super().__init__(f"{feature}: install the '{extra}' extra: pip install 'llmbus[{extra}]' ({reason})")
        self.extra, self.module = extra, module


class ProviderError(LlmbusError):
    """A single call failed after retries; `kind` is a short machine-readable reason."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Unreachable(ProviderError):
    """The provider's endpoint does not answer at all."""

    def __init__(self, message: str):
        super().__init__("unreachable", message)


class ReviewConflict(LlmbusError):
    """Another reviewer holds or already decided the item."""


class InvalidEdit(LlmbusError):
    """The edited answer breaks the answer contract (nothing was written)."""


class StepFailed(LlmbusError):
    """A step raised; the step row holds the error and the run is resumable."""

    def __init__(self, key: str, kind: str, message: str):
        super().__init__(f"step {key!r} failed ({kind}): {message}")
        self.key, self.kind = key, kind


class FlowInterrupted(LlmbusError):
    """Ctrl-C while a flow ran; finished steps are kept."""


class GateError(LlmbusError):
    """A gate expression that does not parse or names a metric the run does not have."""


class LabelError(LlmbusError):
    """A labeling request that cannot be honoured (unknown project, item, token or label)."""


class EstimateError(LlmbusError):
    """Human labels and judge verdicts that cannot support a quality estimate (none, mismatched, out of range)."""


class RunInterrupted(LlmbusError):
    """The user stopped the run; everything answered so far is in the log."""

    def __init__(self, run_id: str, done: int, total: int):
        super().__init__(f"run {run_id} interrupted after {done}/{total} items; "
                         f"finish it with: llmbus run TASK --resume {run_id}")
        self.run_id = run_id


class JudgeSchemaError(LlmbusError):
    """Every verdict of a judge run broke the label set (the calls are logged; nothing is lost)."""


# The kind of each status: the call log's error_kind, the refusal counter's label, the error body's code.
STATUS_KINDS = {400: "invalid_request", 401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded",
                502: "all_failed"}


class GatewayError(LlmbusError):
    """A request the gateway refuses (4xx) or cannot answer (502): the HTTP status and headers to answer with,
    its kind, and the body field at fault (if one is)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, kind: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.headers, self.param = status, headers or {}, param
        self.kind = kind or STATUS_KINDS.get(status, f"http_{status}")


class ToolError(LlmbusError):
    """A tool call failed; `kind` is timeout | raised | bad_args | not_allowed."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
