"""Read every span of a Phoenix project through Phoenix's own client and print them as JSON (run with the
Phoenix venv's Python: its packages are not llmbus's).

    python phoenix_spans.py BASE_URL [PROJECT]

Each span: name, span kind (Phoenix's OpenInference kind), ids, status and its attributes with dotted names
(Phoenix hands them back nested: {"gen_ai": {"usage": {"input_tokens": 3}}} → "gen_ai.usage.input_tokens").
"""

from __future__ import annotations

import json
import sys
from typing import Any

from phoenix.client import Client


def flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    """Nested attribute dicts as dotted keys."""
    if isinstance(value, dict):
        for key, inner in value.items():
            flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = value.tolist() if hasattr(value, "tolist") else value


def main() -> None:
    base_url, project = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "default"
    frame = Client(base_url=base_url).spans.get_spans_dataframe(project_identifier=project, limit=100_000)
    spans = []
    for span_id, row in frame.iterrows():
        attributes: dict[str, Any] = {}
        for column, value in row.items():
            if str(column).startswith("attributes.") and not (isinstance(value, float) and value != value):
                flatten(str(column).removeprefix("attributes."), value, attributes)
        parent = row.get("parent_id")
        spans.append({"name": row["name"], "span_kind": row["span_kind"], "span_id": str(span_id),
                      "trace_id": row["context.trace_id"], "parent_id": parent if isinstance(parent, str) else None,
                      "status": row["status_code"], "attributes": attributes})
    json.dump(spans, sys.stdout, default=str)


if __name__ == "__main__":
    main()
