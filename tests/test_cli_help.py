"""`llmbus --help` reads as the bus: one panel per stop, in the order a feature meets them, every command in one."""

from __future__ import annotations

import os
import subprocess
import sys

from llmbus.cli import app
from llmbus.cli.app import STOPS

PANELS = ["Stop 1 · Do you need an LLM?", "Stop 2 · Prompt-driven development", "Stop 3 · Quality",
          "Stop 4 · Architecture", "Stop 5 · Saving", "Serving", "Production loop"]


def test_help_groups_the_commands_by_stop_in_the_bus_order():
    shown = subprocess.run([sys.executable, "-m", "llmbus.cli", "--help"], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "COLUMNS": "120", "NO_COLOR": "1"})
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    positions = [text.index(f"─ {panel} ─") for panel in PANELS]
    assert positions == sorted(positions), text  # panels in the bus's order
    assert "─ Commands ─" not in text  # no command left outside a stop
    lines = text.splitlines()

    def panel_of(command: str) -> str:
        row = next(i for i, line in enumerate(lines) if line.startswith(f"│ {command} "))
        return next(line for line in reversed(lines[:row]) if line.startswith("╭─")).strip("╭─ ╮")

    assert panel_of("advise") == PANELS[0] and panel_of("run") == PANELS[1] and panel_of("eval") == PANELS[2]
    assert panel_of("flow") == PANELS[3] and panel_of("distill") == PANELS[4] and panel_of("serve") == PANELS[5]
    assert panel_of("monitor") == PANELS[6] and panel_of("accept") == PANELS[6]
    rows = [line.split()[1] for line in lines if line.startswith("│ ") and line[2] not in " -"]  # not continuations
    assert rows == [name for names in STOPS.values() for name in names]  # and each panel in its own order


def test_every_command_has_a_stop():
    import typer.main

    registered = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    placed = [name for names in STOPS.values() for name in names]
    assert registered == set(placed) and len(placed) == len(set(placed)), registered ^ set(placed)
    assert list(STOPS) == PANELS
