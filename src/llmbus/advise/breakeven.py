"""The break-even a team decides on: at a monthly volume, which system to run, what each costs, when a one-off
pays back, and the volumes where the answer changes. Pure functions of measured figures (no store, no model).

Every system s has a cost per item c_s to run, an error rate e_s = 1 − quality (its 95% interval from the
quality's: for F1-type metrics 1 − metric stands in for the share of wrong answers), and a one-off cost F_s
(teacher answers × the teacher's $/item + human labels × the label cost + training CPU-seconds × $/hour).
At V items a month, with a cost per wrong answer E and a horizon of H months:

    monthly_s(V) = c_s·V + e_s·V·E                  (run + errors, every month)
    total_s(V)   = F_s + H·monthly_s(V)             (what the horizon costs, one-off included)

The cheapest total wins. Two systems' totals meet where F_s + H·m_s·V = F_t + H·m_t·V, m = c + e·E:
V* = (F_t − F_s) / (H·(m_s − m_t)), a crossover; along the cheapest of all lines these are the volumes where
the answer changes. A system's payback against the current choice k is F_s / (monthly_k(V) − monthly_s(V))
months, where F_s leaves out what k already paid (its own labels, say): never when it saves nothing a month.
The totals and crossovers compare the systems from scratch, one-offs included. Unpriced systems (a model without
a price) are listed, never ranked.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from llmbus.errors import LlmbusError

HORIZON_MONTHS = 12.0
ERROR_COST = 0.05  # USD per wrong answer, unless the team says otherwise (--error-cost)
LABEL_COST = 0.10  # USD per human label (--label-cost)


@dataclass(frozen=True)
class System:
    """One way to answer the task, measured: quality with its interval, cost per item, one-off costs."""

    name: str
    kind: str  # baseline | llm | student | cascade | projected
    quality: float
    quality_lo: float
    quality_hi: float
    usd_per_item: float | None  # None: the model has no price
    one_off: dict[str, float | None] = field(default_factory=dict)  # {"teacher answers": 1.20, "labels": 0.0, …}
    n_items: int = 0  # items the quality was measured on
    note: str = ""

    @property
    def one_off_usd(self) -> float | None:
        """The one-off cost (None when a part of it is unpriced)."""
        parts = list(self.one_off.values())
        return None if any(p is None for p in parts) else float(sum(p for p in parts if p is not None))

    @property
    def priced(self) -> bool:
        """Whether the system can be ranked: its run cost and one-off cost are known."""
        return self.usd_per_item is not None and self.one_off_usd is not None


@dataclass(frozen=True)
class Assumptions:
    """What the team tells the decision: monthly volume, the cost of a wrong answer and of a label, horizon."""

    volume: float  # items a month
    error_cost: float = ERROR_COST
    label_cost: float = LABEL_COST
    horizon_months: float = HORIZON_MONTHS


@dataclass
class Line:
    """One system's row of the decision table at the assumed volume (USD; None where unpriced)."""

    system: str
    kind: str
    quality: float
    quality_lo: float
    quality_hi: float
    run_month: float | None
    errors_month: float
    errors_month_lo: float
    errors_month_hi: float
    one_off: float | None
    total: float | None  # over the horizon, one-off included
    total_lo: float | None
    total_hi: float | None
    payback_months: float | None = None  # against the current choice; None: never (or it is the current one)
    note: str = ""


@dataclass(frozen=True)
class Crossover:
    """A volume where the cheapest system changes: `below` wins under it, `above` over it."""

    volume: float
    below: str
    above: str


@dataclass
class Decision:
    """The decision table, its crossovers and the one sentence."""

    assumptions: Assumptions
    current: str | None
    lines: list[Line]
    choice: str | None
    overlapping: list[str]  # systems whose horizon total overlaps the choice's within the quality intervals
    crossovers: list[Crossover]
    unpriced: list[str]
    sentence: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json."""
        return asdict(self)


def error_rate(quality: float) -> float:
    """The share of wrong answers a quality stands for (1 − quality, within [0, 1])."""
    return min(1.0, max(0.0, 1.0 - quality))


def monthly_per_item(system: System, a: Assumptions, quality: float | None = None) -> float:
    """Run cost plus error cost of one item (at `quality`, default the system's point estimate)."""
    assert system.usd_per_item is not None
    q = system.quality if quality is None else quality
    return system.usd_per_item + error_rate(q) * a.error_cost


def horizon_total(system: System, a: Assumptions, volume: float | None = None, quality: float | None = None) -> float:
    """One-off plus `horizon_months` of running and errors at `volume` items a month."""
    one_off = system.one_off_usd
    assert one_off is not None
    v = a.volume if volume is None else volume
    return one_off + a.horizon_months * monthly_per_item(system, a, quality) * v


def crossover_volume(s: System, t: System, a: Assumptions) -> float | None:
    """The monthly volume where s and t cost the same over the horizon (None: the lines never meet at V > 0)."""
    slope = a.horizon_months * (monthly_per_item(s, a) - monthly_per_item(t, a))
    if slope == 0:
        return None
    v = ((t.one_off_usd or 0.0) - (s.one_off_usd or 0.0)) / slope
    return v if v > 0 else None


def cheapest_path(systems: list[System], a: Assumptions) -> list[Crossover]:
    """The crossovers along the cheapest line as the volume grows from 0: at each, the next system that gets
    cheaper (lowest one-off first; then, of the lines with smaller monthly slopes, the one met first)."""
    priced = [s for s in systems if s.priced]
    if not priced:
        return []
    current = min(priced, key=lambda s: (s.one_off_usd or 0.0, monthly_per_item(s, a)))
    volume, found = 0.0, list[Crossover]()
    while True:
        met = [(v, monthly_per_item(s, a), s) for s in priced
               if monthly_per_item(s, a) < monthly_per_item(current, a)
               and (v := crossover_volume(current, s, a)) is not None and v > volume]
        if not met:
            return found
        v, _, nxt = min(met, key=lambda m: (m[0], m[1]))
        found.append(Crossover(v, current.name, nxt.name))
        current, volume = nxt, v


def payback_months(system: System, current: System, a: Assumptions) -> float | None:
    """Months until what `system` still has to pay once is paid back by what it saves a month against `current`
    (None: it saves nothing, or it is the current choice). What the current choice already paid is sunk: each
    one-off part it has too (the same labeled pool, say) counts only above the current's amount."""
    if system is current or not system.priced or not current.priced:
        return None
    saving = (monthly_per_item(current, a) - monthly_per_item(system, a)) * a.volume
    if saving <= 0:
        return None
    paid = current.one_off
    still = sum(max(0.0, (cost or 0.0) - (paid.get(part) or 0.0)) for part, cost in system.one_off.items())
    return still / saving


def line_of(system: System, a: Assumptions, current: System | None) -> Line:
    """A system's row at the assumed volume."""
    errors = error_rate(system.quality) * a.volume * a.error_cost
    errors_lo = error_rate(_finite(system.quality_hi, system.quality)) * a.volume * a.error_cost
    errors_hi = error_rate(_finite(system.quality_lo, system.quality)) * a.volume * a.error_cost
    line = Line(system.name, system.kind, system.quality, system.quality_lo, system.quality_hi,
                run_month=None if system.usd_per_item is None else system.usd_per_item * a.volume,
                errors_month=errors, errors_month_lo=errors_lo, errors_month_hi=errors_hi,
                one_off=system.one_off_usd, total=None, total_lo=None, total_hi=None, note=system.note)
    if system.priced:
        line.total = horizon_total(system, a)
        line.total_lo = horizon_total(system, a, quality=_finite(system.quality_hi, system.quality))
        line.total_hi = horizon_total(system, a, quality=_finite(system.quality_lo, system.quality))
        line.payback_months = payback_months(system, current, a) if current is not None else None
    return line


def _finite(value: float, fallback: float) -> float:
    return value if math.isfinite(value) else fallback


def decide(systems: list[System], a: Assumptions, current: str | None = None) -> Decision:
    """The decision table at `a.volume`: rows cheapest first over the horizon (unpriced last), the choice,
    the systems within its interval, the crossovers, and the sentence."""
    by_name = {s.name: s for s in systems}
    now = by_name.get(current) if current else None
    lines = sorted((line_of(s, a, now) for s in systems),
                   key=lambda line: (line.total is None, line.total if line.total is not None else 0.0))
    priced = [line for line in lines if line.total is not None]
    choice = priced[0] if priced else None
    overlapping = [line.system for line in priced[1:]
                   if choice is not None and _at_most(line.total_lo, choice.total_hi)]
    decision = Decision(a, current, lines, choice.system if choice else None, overlapping,
                        cheapest_path(systems, a), [s.name for s in systems if not s.priced])
    decision.sentence = sentence(decision)
    return decision


def _at_most(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and a <= b


def sentence(d: Decision) -> str:
    """ONE sentence: which system to run at this volume, and the volumes where the answer changes."""
    a = d.assumptions
    lines = {line.system: line for line in d.lines}
    if d.choice is None:
        return (f"No system here has a price yet ({', '.join(d.unpriced)}): set the models' prices in llmbus.yaml "
                "to decide.")
    best = lines[d.choice]
    head = f"At {volume_text(a.volume)} items a month"
    cost = (f"{dollars(best.total)} over {a.horizon_months:g} months (run {dollars(best.run_month)} + errors "
            f"{dollars(best.errors_month)} a month + {dollars(best.one_off)} one-off)")
    if d.overlapping:
        others = d.overlapping[:2] + ([f"{len(d.overlapping) - 2} more"] if len(d.overlapping) > 2 else [])
        main = (f"{head}, the 95% quality intervals leave {', '.join(others[:-1]) + ' and ' if len(others) > 1 else ''}"
                f"{others[-1]} within reach of {d.choice} ({dollars(best.total_lo)}–{dollars(best.total_hi)} over "
                f"{a.horizon_months:g} months), so these items do not pick a winner: {d.choice} is cheapest at the "
                f"point estimates, {cost}")
    else:
        main = f"{head}, run {d.choice}: {cost}"
        if d.current and d.current != d.choice and best.payback_months is not None:
            main += f", paying back against {d.current} in {months_text(best.payback_months)}"
    return f"{main}; {changes_text(d.crossovers, a.volume)}."


def changes_text(crossovers: list[Crossover], volume: float) -> str:
    """Where the answer changes: each crossover volume with the systems either side of it."""
    if not crossovers:
        return "the answer is the same at every volume"
    parts = [f"{volume_text(c.volume)} items a month ({c.below} below, {c.above} above)" for c in crossovers]
    return "the answer changes at " + " and at ".join(parts)


def dollars(usd: float | None) -> str:
    """An amount for the table and the sentence: `?` when unpriced."""
    if usd is None or not math.isfinite(usd):
        return "?"
    if usd == 0:
        return "$0"
    if usd >= 100:
        return f"${usd:,.0f}"
    return f"${usd:,.2f}" if usd >= 0.01 else f"${usd:.4f}" if usd >= 0.0001 else f"${usd:.2e}"


def months_text(months: float) -> str:
    """A payback time: at once, under a day, days under a month, else months."""
    if months == 0:
        return "at once"
    if months * 30 < 1:
        return "under a day"
    return f"{months * 30:.0f} days" if months < 1 else f"{months:,.1f} months"


def volume_text(volume: float) -> str:
    """1,000,000 → 1M; 31,400 → 31k; small volumes as integers."""
    if volume >= 1e6:
        return f"{volume / 1e6:,.3g}M"
    if volume >= 1e4:
        return f"{volume / 1e3:,.3g}k"
    return f"{volume:,.0f}"


def parse_volume(text: str) -> float:
    """`1M/month`, `250k`, `1000000`, `1.5M` → items a month; anything else is one error line."""
    match = re.fullmatch(r"\s*([0-9][0-9_,]*(?:\.[0-9]+)?)\s*([kKmMbB]?)\s*(?:/\s*(?:month|mo))?\s*", text)
    if not match:
        raise LlmbusError(f"--volume {text!r}: give items a month, e.g. 1M/month, 250k or 40000")
    number = float(match.group(1).replace(",", "").replace("_", ""))
    value = number * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}[match.group(2).lower()]
    if value <= 0:
        raise LlmbusError(f"--volume {text!r}: must be more than 0 items a month")
    return value
