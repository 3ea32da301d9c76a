"""Run one Python tool call bounded in time: in a forked child process that is killed when it overruns.

A thread cannot be stopped in Python, so a hung tool in a thread would hold the flow forever; a child
process can be killed. The result travels back through a pipe and must be JSON-like (picklable).
"""

from __future__ import annotations

import inspect
import multiprocessing
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmbus.errors import ToolError


@dataclass(frozen=True)
class Tool:
    """An allow-listed Python function with a one-line description shown to a model."""

    name: str
    fn: Callable[..., Any]
    description: str = ""

    @property
    def signature(self) -> str:
        """name(arg, …): description — what an agent prompt lists."""
        params = ", ".join(inspect.signature(self.fn).parameters)
        doc = self.description or (inspect.getdoc(self.fn) or "").split("\n")[0]
        return f"{self.name}({params}): {doc}" if doc else f"{self.name}({params})"


def tool(fn: Callable[..., Any], name: str | None = None, description: str = "") -> Tool:
    """Wrap a function as a Tool (its name and docstring by default)."""
    return Tool(name or fn.__name__, fn, description)


def _child(conn: Any, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    try:
        conn.send(("ok", fn(**kwargs)))
    except BaseException as exc:  # everything, so the parent gets a reason instead of a silent exit
        conn.send(("raised", f"{exc.__class__.__name__}: {exc}", traceback.format_exc(limit=3)))
    finally:
        conn.close()


def call_tool(t: Tool, kwargs: dict[str, Any], timeout_s: float) -> Any:
    """Call a tool with keyword arguments in a child process; ToolError on timeout, exception or bad args."""
    try:
        inspect.signature(t.fn).bind(**kwargs)
    except TypeError as exc:
        raise ToolError("bad_args", f"tool {t.name}: {exc}") from None
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(child, t.fn, kwargs), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(timeout_s):
            raise ToolError("timeout", f"tool {t.name} did not finish within {timeout_s:g}s (killed)")
        try:
            message = parent.recv()
        except EOFError:
            raise ToolError("raised", f"tool {t.name} exited without a result "
                                      f"(exit code {process.exitcode})") from None
    finally:
        if process.is_alive():
            process.kill()
        process.join(5)
        parent.close()
    if message[0] == "raised":
        raise ToolError("raised", f"tool {t.name} raised {message[1]}")
    return message[1]
