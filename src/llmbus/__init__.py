"""llmbus: carry one LLM feature from prompt to production.

The package reads as the five stops, each importing only from the ones below it (tests/test_layers.py):
errors, settings and shared helpers → task/ → train/ → providers/ → store/ → run/ → advise/ (stop 1) →
quality/ (stop 3) | flows/ (stop 4) → distill/ (stop 5) → serve/ → web/ → cli/.
The names below load on first use, so `import llmbus` stays cheap.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

# A library's records are the application's to route: silent unless it (or LLMBUS_LOG_LEVEL in the CLI) adds a
# handler, so Python's last-resort handler never prints llmbus warnings on its own.
logging.getLogger("llmbus").addHandler(logging.NullHandler())

try:
    __version__ = version("llmbus")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# public name -> the module that defines it
_EXPORTS = {
    "LlmbusError": "llmbus.errors",
    "load_spec": "llmbus.task.spec",
    "TaskSpec": "llmbus.task.spec",
    "load_items": "llmbus.task.data",
    "open_provider": "llmbus.providers",
    "Store": "llmbus.store",
    "run_task": "llmbus.run.engine",
    "advise": "llmbus.advise.advise",
    "evaluate": "llmbus.quality.evaluate",
    "flow": "llmbus.flows.engine",  # what a flow file needs: `from llmbus import FlowContext, flow`
    "FlowContext": "llmbus.flows.engine",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'llmbus' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    """The public names (for completion and `dir(llmbus)`)."""
    return sorted(__all__)
