"""Run llmbus in this process with an in-memory OpenTelemetry exporter and write the finished spans as JSON:

    python tests/otel_capture.py SPANS.json ARGS...        the `llmbus` CLI with ARGS
    python tests/otel_capture.py SPANS.json -c CODE        Python code (after the tracer provider is set)

A process of its own, because a tracer provider is set once per process: the test process never gets one.
The exit code is the CLI's (or the code's).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def as_dict(span: object) -> dict[str, object]:
    """A finished span's name, ids, kind, status, times and attributes."""
    context, parent = span.context, span.parent  # type: ignore[attr-defined]
    return {"name": span.name, "trace_id": f"{context.trace_id:032x}",  # type: ignore[attr-defined]
            "span_id": f"{context.span_id:016x}", "parent_id": f"{parent.span_id:016x}" if parent else None,
            "kind": span.kind.name, "status": span.status.status_code.name,  # type: ignore[attr-defined]
            "start": span.start_time, "end": span.end_time,  # type: ignore[attr-defined]
            "attributes": {k: list(v) if isinstance(v, tuple) else v
                           for k, v in (span.attributes or {}).items()}}  # type: ignore[attr-defined]


def main() -> int:
    out, args = Path(sys.argv[1]), sys.argv[2:]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    code: int | str | None = 0
    try:
        if args[:1] == ["-c"]:
            exec(compile(args[1], "<otel_capture>", "exec"), {"__name__": "__otel_capture__"})
        else:
            from llmbus.cli import main as cli

            sys.argv = ["llmbus", *args]
            cli()
    except SystemExit as exc:
        code = exc.code
    finally:
        out.write_text(json.dumps([as_dict(s) for s in exporter.get_finished_spans()], default=str))
    return code if isinstance(code, int) else (0 if code is None else 1)


if __name__ == "__main__":
    sys.exit(main())
