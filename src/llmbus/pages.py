"""The one base template every llmbus page extends (label, review, the savings report) and its loader.

It sits in the bottom layer so serve/report.py and the web UIs both read it without an upward import.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

SHARED = Path(__file__).parent / "templates"


def environment(folder: Path) -> jinja2.Environment:
    """An autoescaping Jinja environment over `folder`, with the shared base.html found beneath it."""
    return jinja2.Environment(loader=jinja2.FileSystemLoader([folder, SHARED]), autoescape=True)
