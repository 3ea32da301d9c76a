"""Successive halving (Jamieson & Talwalkar 2016) over prompt candidates, in validation items and model calls.

Every candidate answers the first n₀ validation items; the best 1/η (η = 3) answer the first η·n₀, and so on
until one is left. A survivor's run grows (its earlier answers stay), so a rung costs only its new items.
`schedule` picks the largest n₀ whose worst case (every survivor at the dearest candidate's calls per item) fits
the budget, cutting candidates from the end of the list when even `min_items` does not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

ETA = 3  # Hyperband's usual rate: fewer, cheaper rungs than halving, so more candidates fit a budget
MIN_ITEMS = 16


@dataclass(frozen=True)
class Rung:
    """One round: how many candidates answer how many validation items (cumulative)."""

    candidates: int
    items: int


@dataclass(frozen=True)
class Schedule:
    """The rungs of one halving, the candidates it keeps, and its worst-case calls."""

    rungs: tuple[Rung, ...]
    n_candidates: int
    max_calls: int


def rungs_for(n_candidates: int, first_items: int, max_items: int, eta: int = ETA) -> tuple[Rung, ...]:
    """The rungs from n₀ items: candidates shrink by η, items grow by η (capped), until one candidate is left."""
    rungs, count, items = [], n_candidates, first_items
    while True:
        rungs.append(Rung(count, min(items, max_items)))
        if count <= 1:
            break
        count, items = math.ceil(count / eta), items * eta
        if count == 1:
            break
    return tuple(rungs)


def worst_case_calls(rungs: tuple[Rung, ...], calls_per_item: list[int]) -> int:
    """Calls if no answer came from the cache beyond earlier rungs: rung 0 at each candidate's own rate, later
    rungs at the dearest rate."""
    total, previous = 0, 0
    dearest = max(calls_per_item, default=1)
    for index, rung in enumerate(rungs):
        new = rung.items - previous
        if index == 0:
            total += sum(rate * new for rate in calls_per_item[: rung.candidates])
        else:
            total += rung.candidates * new * dearest
        previous = rung.items
    return total


def schedule(calls_per_item: list[int], budget: int, max_items: int, min_items: int = MIN_ITEMS,
             eta: int = ETA) -> Schedule | None:
    """The halving that fits `budget` calls with the most items at rung 0 (None when not even one candidate on
    `min_items` items fits). `calls_per_item` is per candidate, in priority order."""
    min_items = max(1, min(min_items, max_items))
    for n in range(len(calls_per_item), 0, -1):
        rates = calls_per_item[:n]
        best: tuple[Rung, ...] | None = None
        low, high = min_items, max_items
        while low <= high:  # the largest n₀ that fits: cost grows with n₀
            mid = (low + high) // 2
            rungs = rungs_for(n, mid, max_items, eta)
            if worst_case_calls(rungs, rates) <= budget:
                best, low = rungs, mid + 1
            else:
                high = mid - 1
        if best is not None:
            return Schedule(best, n, worst_case_calls(best, rates))
    return None


def successive_halving(n_candidates: int, plan: Schedule, measure: Callable[[int, int], bool],
                       rank: Callable[[list[int]], list[int]], on_rung: Callable[[int, Rung], None] | None = None,
                       eta: int = ETA) -> list[int]:
    """Run the halving: `measure(candidate, items)` answers a candidate on the first `items` validation items
    (False when the budget left could not pay for it), `rank(candidates)` orders them best first. Returns the
    candidates left after the last rung, best first."""
    alive = list(range(min(n_candidates, plan.n_candidates)))
    for index, rung in enumerate(plan.rungs):
        if on_rung:
            on_rung(index, rung)
        alive = [c for c in alive if measure(c, rung.items)] or alive[:1]
        alive = rank(alive)
        if index + 1 < len(plan.rungs):
            alive = alive[: max(1, math.ceil(len(alive) / eta))]
    return alive
