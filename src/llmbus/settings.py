"""Where llmbus keeps things and the defaults every stop shares, each stated once.

    $LLMBUS_HOME    built tools, converted models, llama-server logs (default ~/.cache/llmbus); llama-server is
                    looked for under it, so moving it hides an earlier `llmbus build-llama`
    $LLMBUS_LLAMA_BIN  a folder with llama-server, llama-bench, llama-quantize (wins over the build under HOME)
    $LLMBUS_CONFIG  the model config file (default ./llmbus.yaml)
    $LLMBUS_DB      the store (default ./llmbus.db; `--db` wins)
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "local:gemma-3-270m"
DEFAULT_DB = "llmbus.db"
USD_PER_HOUR = 0.05  # the CPU machine price local inference, trained judges and baselines are costed at
# On a stop (Ctrl-C, SIGTERM), calls already in flight get this long to finish and be logged (they may already be
# paid for); `llmbus run --grace` changes it.
GRACE_S = 10.0


def default_home() -> Path:
    """~/.cache/llmbus: the home folder when $LLMBUS_HOME is not set."""
    return Path.home() / ".cache" / "llmbus"


def llmbus_home() -> Path:
    """Where llmbus keeps built tools and converted models: $LLMBUS_HOME, default ~/.cache/llmbus."""
    return Path(os.environ.get("LLMBUS_HOME", default_home()))


def config_path() -> Path:
    """The user's config file: $LLMBUS_CONFIG, else ./llmbus.yaml."""
    return Path(os.environ.get("LLMBUS_CONFIG", "llmbus.yaml"))


def db_setting(db: str | None) -> str:
    """The `--db` value, else $LLMBUS_DB, else ./llmbus.db."""
    return db or os.environ.get("LLMBUS_DB") or DEFAULT_DB
