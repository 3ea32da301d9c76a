"""OpenTelemetry traces of llmbus's model calls (the GenAI semantic conventions), and its `logging` records.

Off by default. On with `LLMBUS_OTEL=1`, or an `otel:` section in llmbus.yaml (`LLMBUS_OTEL=0` wins):

    otel:
      capture_content: false   # true: prompts and answers go on the spans (gen_ai.input/output.messages)
      service_name: llmbus     # unless OTEL_SERVICE_NAME says otherwise

Spans go out over OTLP/HTTP, configured by the standard variables (OTEL_EXPORTER_OTLP_ENDPOINT,
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS, OTEL_BSP_SCHEDULE_DELAY, …). When the
application already set a tracer provider, llmbus's spans join it; otherwise llmbus sets one up once per
process. With telemetry off nothing from OpenTelemetry is imported: a call site pays one settings look-up
(an environment read and a stat of llmbus.yaml, cached).

The tree: a run, judge run, flow run (with a span per executed step) or gateway request span, and under it one
span per model call — per row of the call log, emitted when the row is complete, with its start and end time.
The attribute table is in docs/telemetry.md. Executors hand their threads the caller's context
(`carry_context`), so call spans made in a thread pool nest under the run that submitted them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

import yaml

from llmbus.errors import LlmbusError, SpecError
from llmbus.settings import config_path

CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"  # the GenAI instrumentations' switch
# gen_ai.provider.name by model-reference prefix; others are named by their prefix (encoder, head, cascade)
PROVIDER_NAMES = {"openai": "openai", "local": "llama.cpp"}
IN_PROCESS = frozenset({"encoder", "head"})  # models answering inside this process: INTERNAL spans
TRUE = frozenset({"1", "true", "yes", "on"})
T = TypeVar("T")
Y = TypeVar("Y")
R = TypeVar("R")

calls_log = logging.getLogger("llmbus.calls")


@dataclass(frozen=True)
class OtelSettings:
    """Whether spans are made, and what goes on them."""

    enabled: bool = False
    capture_content: bool = False
    service_name: str = "llmbus"


def otel_settings() -> OtelSettings:
    """The settings in force now: $LLMBUS_OTEL, the `otel:` section of llmbus.yaml, $CAPTURE_ENV."""
    path = config_path()
    try:
        stamp: int | None = path.stat().st_mtime_ns
    except OSError:
        stamp = None
    return _settings(os.environ.get("LLMBUS_OTEL"), os.environ.get(CAPTURE_ENV), str(path), stamp)


@cache
def _settings(env: str | None, capture: str | None, path: str, stamp: int | None) -> OtelSettings:
    section = _yaml_section(Path(path)) if stamp is not None else None
    enabled = section is not None and section.get("enabled", True) is not False
    if env is not None and env.strip():
        enabled = env.strip().lower() in TRUE
    capture_content = bool((section or {}).get("capture_content", False))
    if capture is not None and capture.strip():
        capture_content = capture.strip().lower() in TRUE
    return OtelSettings(enabled, capture_content, str((section or {}).get("service_name") or "llmbus"))


def _yaml_section(path: Path) -> dict[str, Any] | None:
    """llmbus.yaml's `otel:` mapping (None without one; `otel:` with nothing under it is an empty mapping)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # reading models reports a malformed file with its line; telemetry stays off
    if not isinstance(raw, dict) or "otel" not in raw:
        return None
    section = raw["otel"]
    if section is None:
        return {}
    known = {"enabled", "capture_content", "service_name"}
    if not isinstance(section, dict) or set(section) - known:
        raise SpecError(f"{path}: otel: a mapping of {', '.join(sorted(known))}")
    return section


def tracer() -> Any | None:
    """llmbus's OpenTelemetry tracer, or None while telemetry is off."""
    settings = otel_settings()
    return _tracer(settings.service_name) if settings.enabled else None


@cache
def _tracer(service_name: str) -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        raise _missing() from None
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):  # nobody set one up: llmbus does
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise _missing() from None
        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
        provider = TracerProvider(resource=Resource.create(attributes))  # flushed and shut down at exit
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
    try:
        release = version("llmbus")
    except PackageNotFoundError:  # a source tree that was never installed
        release = None
    return trace.get_tracer("llmbus", release)


def _missing() -> LlmbusError:
    return LlmbusError("telemetry is on (LLMBUS_OTEL or otel: in llmbus.yaml) but OpenTelemetry is not installed: "
                       "pip install 'llmbus[otel]'")


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    """OTel attribute values: None dropped, tuples as lists (OTel takes str, bool, int, float and lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in attributes.items() if v is not None}


@contextmanager
def span(name: str, attributes: dict[str, Any], kind: str = "INTERNAL",
         parent_headers: dict[str, str] | None = None,
         expected: tuple[type[BaseException], ...] = ()) -> Iterator[Any]:
    """A span around a block (a run, a judge run, a flow run or step, a gateway request), current inside it;
    yields None while telemetry is off. `parent_headers` (an incoming request's) give the parent when no span
    is current. An exception leaving the block marks the span as an error, unless it is one of `expected`
    (a flow pausing for review)."""
    found = tracer()
    if found is None:
        yield None
        return
    from opentelemetry import propagate, trace

    parent = None
    if parent_headers is not None:
        if trace.get_current_span().get_span_context().is_valid:  # the HTTP server's own span: nest under it
            kind = "INTERNAL"
        else:
            parent = propagate.extract(parent_headers)
    with found.start_as_current_span(name, context=parent, kind=getattr(trace.SpanKind, kind),
                                     attributes=_clean(attributes), record_exception=False,
                                     set_status_on_exception=False) as current:
        try:
            yield current
        except BaseException as exc:
            if not isinstance(exc, expected):
                current.record_exception(exc)
                current.set_status(trace.Status(trace.StatusCode.ERROR, f"{exc.__class__.__name__}: {exc}"[:500]))
            raise


def response_headers(current: Any) -> dict[str, str]:
    """The trace id of `current` (a span from `span`) for an HTTP response: x-trace-id and W3C traceresponse."""
    if current is None:
        return {}
    context = current.get_span_context()
    trace_id, span_id = f"{context.trace_id:032x}", f"{context.span_id:016x}"
    return {"x-trace-id": trace_id, "traceresponse": f"00-{trace_id}-{span_id}-{int(context.trace_flags):02x}"}


def set_attributes(current: Any, attributes: dict[str, Any]) -> None:
    """Add attributes to a span from `span` (nothing while telemetry is off)."""
    if current is not None:
        current.set_attributes(_clean(attributes))


def carry_context(fn: Callable[..., R]) -> Callable[..., R]:
    """`fn`, to run in another thread within the caller's context (the current span is a context variable, so a
    thread pool's work nests under the span that submitted it)."""
    captured = contextvars.copy_context()

    def run(*args: Any, **kwargs: Any) -> R:
        return captured.copy().run(fn, *args, **kwargs)

    return run


def carry_generator(generator: Generator[Y, None, R]) -> Generator[Y, None, R]:
    """A generator stepped from other threads (a streamed response) that runs within the context of the code that
    called this (captured now, not at the first step, which happens elsewhere)."""
    return _stepped_in(contextvars.copy_context(), generator)


def _stepped_in(captured: contextvars.Context, generator: Generator[Y, None, R]) -> Generator[Y, None, R]:
    try:
        while True:
            try:
                item = captured.run(next, generator)
            except StopIteration as stop:
                return stop.value
            yield item
    finally:
        captured.run(generator.close)


def observe_call(record: Any, request: Any = None, completion: Any = None, provider: Any = None,
                 route: str | None = None) -> None:
    """A complete call-log row (a `store.CallRecord`): a warning record when it failed, and with telemetry on a
    span with the GenAI attributes and llmbus's, timed from the row (its end, minus its latency). `request`,
    `completion` and `provider` add the request parameters, finish reason and model names when at hand; `route`
    is the gateway's (cache_exact, cache_semantic, backend, fallback, failed)."""
    if record.error_kind is not None:
        calls_log.warning("call failed: task %s, run %s, item %s, model %s: %s: %s", record.task, record.run_id,
                          record.item_id, record.model, record.error_kind, record.error)
    found = tracer()
    if found is None:
        return
    from opentelemetry import trace

    attributes = call_attributes(record, request, completion, provider, route,
                                 otel_settings().capture_content)
    end = _ns(record.finished_at)
    start = min(end - int((record.latency_s or 0.0) * 1e9), end)
    prefix = str(record.model).partition(":")[0]
    kind = trace.SpanKind.INTERNAL if prefix in IN_PROCESS else trace.SpanKind.CLIENT
    current = found.start_span(f"{attributes['gen_ai.operation.name']} {attributes['gen_ai.request.model']}",
                               kind=kind, attributes=attributes, start_time=start)
    if record.error_kind is not None:
        current.set_status(trace.Status(trace.StatusCode.ERROR, str(record.error or "")[:500]))
    current.end(end_time=end)


def call_attributes(record: Any, request: Any = None, completion: Any = None, provider: Any = None,
                    route: str | None = None, capture_content: bool = False) -> dict[str, Any]:
    """A call's span attributes: gen_ai.* (semantic conventions) and llmbus.* (the call log's own columns)."""
    prefix = str(record.model).partition(":")[0]
    config = getattr(provider, "config", None)
    request_model = getattr(provider, "remote_model", None) or getattr(config, "model", None) or record.model
    finish = getattr(completion, "finish_reason", None)
    extra = getattr(completion, "extra", None) or {}
    meta = record.meta or {}
    system = PROVIDER_NAMES.get(prefix, prefix)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat" if getattr(config, "api", None) == "chat" else "text_completion",
        "gen_ai.provider.name": system,
        "gen_ai.system": system,  # the name before semantic conventions 1.37, still what many backends read
        "gen_ai.request.model": request_model,
        "gen_ai.response.model": getattr(completion, "response_model", None) or request_model,
        "gen_ai.usage.input_tokens": int(record.tokens_in or 0),
        "gen_ai.usage.output_tokens": int(record.tokens_out or 0),
        "gen_ai.response.finish_reasons": ["error"] if record.error_kind else [finish] if finish else None,
        "gen_ai.request.max_tokens": getattr(request, "max_tokens", None),
        "gen_ai.request.temperature": getattr(request, "temperature", None),
        "gen_ai.request.stop_sequences": list(getattr(request, "stop", ()) or ()) or None,
        "error.type": record.error_kind,
        "llmbus.model": record.model,
        "llmbus.task": record.task,
        "llmbus.spec_version": record.spec_version,
        "llmbus.run_id": record.run_id or None,
        "llmbus.item_id": record.item_id,
        "llmbus.cost_usd": float(record.cost_usd or 0.0),
        "llmbus.latency_s": float(record.latency_s or 0.0),
        "llmbus.cache_hit": bool(record.cache_hit),
        "llmbus.route": route or ("cache_exact" if record.cache_hit else "backend"),
        "llmbus.cascade_route": extra.get("route") if extra.get("route") in ("student", "teacher") else None,
        "llmbus.canary_arm": meta.get("arm"),
        "llmbus.flow_run_id": meta.get("flow_run"),
        "llmbus.flow_step": meta.get("step"),
        "llmbus.confidence": record.confidence,
    }
    if capture_content:
        attributes.update(content_attributes(record, request, finish))
    return _clean(attributes)


def content_attributes(record: Any, request: Any, finish: str | None) -> dict[str, str]:
    """gen_ai.input.messages / gen_ai.output.messages (JSON, the conventions' message shape): the request's chat
    messages when it has them, else the logged prompt as one user message; the raw answer."""
    messages = getattr(request, "messages", None)
    if messages:
        given = [{"role": str(_get(m, "role", "user")), "parts": [{"type": "text", "content": _get(m, "content", "")}]}
                 for m in messages]
    else:
        given = [{"role": "user", "parts": [{"type": "text", "content": record.prompt}]}]
    answer = [{"role": "assistant", "parts": [{"type": "text", "content": record.raw_output or ""}],
               "finish_reason": "error" if record.error_kind else finish or "stop"}]
    return {"gen_ai.input.messages": json.dumps(given, ensure_ascii=False, default=str),
            "gen_ai.output.messages": json.dumps(answer, ensure_ascii=False, default=str)}


def _get(message: Any, key: str, default: str) -> Any:
    return message.get(key, default) if isinstance(message, dict) else getattr(message, key, default)


def _ns(stamp: datetime | None) -> int:
    """Nanoseconds since the epoch of a (timezone-aware) datetime; now when None."""
    if stamp is None:
        stamp = datetime.now().astimezone()
    return int(stamp.timestamp() * 1e9)


def configure_logging() -> None:
    """Send llmbus's logging records to stderr at $LLMBUS_LOG_LEVEL (debug, info, warning…); without it,
    nothing is added (the package's NullHandler keeps them silent, so applications choose)."""
    level = os.environ.get("LLMBUS_LOG_LEVEL")
    if not level:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("llmbus")
    root.addHandler(handler)
    root.setLevel(level.upper())
