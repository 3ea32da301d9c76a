"""The break-even table as `advise --volume` and `report` print it (no commands of its own)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from llmbus.advise.breakeven import dollars, months_text, volume_text
from llmbus.cli.app import fmt, out, plain, warn
from llmbus.providers.prices import unknown_price_warning


def print_decision(economics: Any, metric: str, price_warnings: bool = True) -> None:
    """The decision table, its sentence, its notes, and (unless printed already) one warning per unpriced
    model."""
    d = economics.decision
    a = d.assumptions
    table = Table(title=plain(f"break-even at {volume_text(a.volume)} items a month · wrong answers at "
                              f"{dollars(a.error_cost)} each · labels at {dollars(a.label_cost)} each · "
                              f"{a.horizon_months:g}-month horizon · current: {d.current or 'none'}"),
                  title_justify="left")
    # payback: of the one-off the current choice has not paid already
    columns = ["system", "kind", metric, "95% CI", "run $/month", "errors $/month (95% CI)", "one-off $",
               f"{a.horizon_months:g}-month total", "payback"]
    for column in columns:
        table.add_column(column, justify="left" if column in {"system", "kind"} else "right")
    for line in d.lines:
        payback = "–" if line.system == d.current or line.total is None else \
            months_text(line.payback_months) if line.payback_months is not None else "never"
        table.add_row(plain(line.system), line.kind, fmt(line.quality),
                      f"{fmt(line.quality_lo)}–{fmt(line.quality_hi)}", dollars(line.run_month),
                      f"{dollars(line.errors_month)} ({dollars(line.errors_month_lo)}–{dollars(line.errors_month_hi)})",
                      dollars(line.one_off), dollars(line.total), payback)
    out.print(table)
    out.print(d.sentence, highlight=False)
    for system in economics.systems:
        if system.note:
            out.print(f"  {plain(system.name)}: {plain(system.note)}", highlight=False)
    for note in economics.notes:
        out.print(f"  note: {plain(note)}", highlight=False)
    for name in d.unpriced if price_warnings else []:
        warn(unknown_price_warning(name.split(" (run ")[0]) if " (run " in name else
             f"{name}: its one-off cost is unknown (a part of it has no price)")
