"""The Jinja2 environment every spec template is compiled in, and a cache of compiled templates: a template
text is compiled once per process, not once per item (a run renders thousands of prompts from one spec)."""

from __future__ import annotations

import json
from functools import lru_cache

import jinja2

_JINJA = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
# Plain JSON for prompts (Jinja's own `tojson` HTML-escapes quotes and angle brackets).
_JINJA.filters["json"] = lambda value: json.dumps(value, ensure_ascii=False)


@lru_cache(maxsize=512)
def compiled(text: str) -> jinja2.Template:
    """`text` as a compiled template (raises jinja2.TemplateSyntaxError)."""
    return _JINJA.from_string(text)
