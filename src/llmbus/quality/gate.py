"""The CI quality gate: threshold expressions on a run's metrics, or a maximum drop against a baseline run.

    macro_f1>=0.90                 the point estimate
    accuracy.lo>=0.85, errors<=3   the lower end of the 95% interval; several conditions, all must hold
    assert:no_pii>=0.99            the pass rate of the spec's assertion named no_pii (.lo/.hi: its Wilson interval)
    scoring:tone.lo>=0.7           a team's own metric (metric: module:function in the spec)
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from llmbus.errors import GateError
from llmbus.quality.evaluate import Comparison, EvalReport

CONDITION = re.compile(r"^\s*(assert:[A-Za-z_]\w*|[A-Za-z_][\w.]*:[A-Za-z_]\w*|[a-z_0-9]+)(?:\.(lo|hi))?"
                       r"\s*(>=|<=|==|>|<)\s*(-?\d+(?:\.\d+)?)\s*$")
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


@dataclass(frozen=True)
class Condition:
    """One parsed `metric[.lo|.hi] OP number`."""

    metric: str
    bound: str | None
    op: str
    threshold: float

    def __str__(self) -> str:
        name = f"{self.metric}.{self.bound}" if self.bound else self.metric
        return f"{name}{self.op}{self.threshold:g}"


@dataclass
class GateResult:
    """Whether the run passed, and each check with the value it saw."""

    passed: bool
    checks: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json output."""
        return asdict(self)


def parse_gate(expression: str) -> list[Condition]:
    """Conditions from 'm>=x, m2.lo>y' (comma or 'and' between them); GateError names the bad part."""
    parts = [p for p in re.split(r",|\band\b", expression) if p.strip()]
    if not parts:
        raise GateError(f"gate {expression!r}: empty; write e.g. 'macro_f1>=0.90'")
    conditions = []
    for part in parts:
        match = CONDITION.match(part)
        if match is None:
            raise GateError(f"gate {expression!r}: cannot parse {part.strip()!r}; write METRIC[.lo|.hi] OP NUMBER, "
                            "e.g. 'macro_f1>=0.90', 'accuracy.lo>0.8' or 'assert:no_pii>=0.99'")
        metric, bound, op, number = match.groups()
        conditions.append(Condition(metric, bound, op, float(number)))
    return conditions


def check_gate(report: EvalReport, conditions: list[Condition]) -> GateResult:
    """Evaluate each condition on the report (errors and error_rate are available besides the metrics)."""
    result = GateResult(passed=True)
    for cond in conditions:
        value = _lookup(report, cond)
        ok = OPERATORS[cond.op](value, cond.threshold)
        result.passed &= ok
        result.checks.append({"condition": str(cond), "value": value, "passed": ok})
    return result


def _lookup(report: EvalReport, cond: Condition) -> float:
    counts = {"errors": float(report.errors), "error_rate": report.errors / report.n if report.n else 0.0,
              "n": float(report.n)}
    if cond.metric in counts and cond.bound is None:
        return counts[cond.metric]
    if cond.metric.startswith("assert:"):
        return _pass_rate(report, cond)
    interval = report.values.get(cond.metric)
    if interval is None:
        known = ", ".join([*report.values, *counts])
        raise GateError(f"gate: run {report.run_id} has no metric {cond.metric!r}; it has {known}")
    return float(getattr(interval, cond.bound or "value"))


def _pass_rate(report: EvalReport, cond: Condition) -> float:
    name = cond.metric.removeprefix("assert:")
    rate = report.assertions.get(name)
    if rate is None:
        known = ", ".join(f"assert:{n}" for n in report.assertions) or "none (its spec has no assert: checks)"
        raise GateError(f"gate: run {report.run_id} has no assertion {name!r}; it has {known}")
    if rate["value"] is None:
        raise GateError(f"gate: assert:{name} of run {report.run_id} has no pass rate: {rate['skipped'] or 'no items'}")
    return float(rate[cond.bound or "value"])


def check_drop(baseline: EvalReport, report: EvalReport, max_drop: float,
               comparison: Comparison | None = None) -> GateResult:
    """Pass when the main metric fell by at most `max_drop` from the baseline run's."""
    metric = report.metric
    if metric not in baseline.values:
        raise GateError(f"baseline run {baseline.run_id} has no metric {metric!r}")
    before, after = baseline.values[metric].value, report.values[metric].value
    ok = before - after <= max_drop + 1e-12
    check: dict[str, Any] = {"condition": f"{metric} drop<={max_drop:g} vs {baseline.run_id}",
                             "value": before - after, "passed": ok}
    if comparison is not None:
        check["paired_delta_ci"] = [comparison.delta.lo, comparison.delta.hi]
    return GateResult(passed=ok, checks=[check])
