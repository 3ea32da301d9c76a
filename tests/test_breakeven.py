"""The break-even maths on hand-computed numbers: monthly costs, one-off, payback, crossovers, the sentence."""

from __future__ import annotations

import pytest

from llmbus.advise.breakeven import Assumptions, System, crossover_volume, decide, horizon_total, parse_volume
from llmbus.errors import LlmbusError

A = Assumptions(volume=1_000_000, error_cost=0.05, label_cost=0.10, horizon_months=12)


def systems(teacher_interval: tuple[float, float] = (0.949, 0.951),
            student_interval: tuple[float, float] = (0.929, 0.931)) -> list[System]:
    return [
        System("teacher", "llm", 0.95, *teacher_interval, usd_per_item=0.001),
        System("student", "student", 0.93, *student_interval, usd_per_item=0.00001,
               one_off={"teacher answers": 300 * 0.001, "training": 0.02}),
        System("baseline", "baseline", 0.96, 0.959, 0.961, usd_per_item=0.000001, one_off={"labels": 1000 * 0.10}),
    ]


def test_monthly_costs_one_off_and_payback_by_hand():
    decision = decide(systems(), A, current="teacher")
    lines = {line.system: line for line in decision.lines}
    teacher, student, baseline = lines["teacher"], lines["student"], lines["baseline"]
    # teacher: $0.001 × 1M = $1,000 to run; 5% wrong × 1M × $0.05 = $2,500 in errors; no one-off
    assert teacher.run_month == pytest.approx(1000) and teacher.errors_month == pytest.approx(2500)
    assert teacher.total == pytest.approx(12 * 3500) and teacher.payback_months is None
    # student: $10 to run, 7% × 1M × $0.05 = $3,500 in errors, $0.32 one-off: saves nothing a month
    assert student.run_month == pytest.approx(10) and student.errors_month == pytest.approx(3500)
    assert student.one_off == pytest.approx(0.32) and student.total == pytest.approx(0.32 + 12 * 3510)
    assert student.payback_months is None
    # baseline: $1 to run + $2,000 in errors a month, $100 of labels: saves $1,499 a month → 100 / 1,499 months
    assert baseline.total == pytest.approx(100 + 12 * 2001)
    assert baseline.payback_months == pytest.approx(100 / 1499)
    assert baseline.errors_month_lo == pytest.approx(0.039 * 1e6 * 0.05)  # the quality's upper end
    assert [line.system for line in decision.lines] == ["baseline", "teacher", "student"]
    assert decision.choice == "baseline" and decision.overlapping == []


def test_the_crossover_is_where_the_two_cost_lines_meet():
    teacher, _, baseline = systems()
    # 100 + 12·0.002001·V = 12·0.0035·V  →  V = 100 / (12 × 0.001499)
    v = crossover_volume(teacher, baseline, A)
    assert v == pytest.approx(100 / (12 * 0.001499))
    assert horizon_total(teacher, A, v) == pytest.approx(horizon_total(baseline, A, v))
    decision = decide(systems(), A, current="teacher")
    assert [(round(c.volume), c.below, c.above) for c in decision.crossovers] == [(5559, "teacher", "baseline")]
    assert decision.sentence == (
        "At 1M items a month, run baseline: $24,112 over 12 months (run $1.00 + errors $2,000 a month + $100 "
        "one-off), paying back against teacher in 2 days; the answer changes at 5,559 items a month (teacher "
        "below, baseline above).")
    # below the crossover the teacher is the choice, and the sentence names the same crossover
    small = decide(systems(), Assumptions(volume=1000), current="teacher")
    assert small.choice == "teacher" and "5,559 items a month (teacher below, baseline above)" in small.sentence


def test_overlapping_intervals_are_said_not_ranked():
    wide = systems(teacher_interval=(0.90, 0.99), student_interval=(0.88, 0.97))
    decision = decide([s for s in wide if s.name != "baseline"], A, current="teacher")
    assert decision.choice == "teacher" and decision.overlapping == ["student"]
    lines = {line.system: line for line in decision.lines}
    assert decision.sentence.startswith(
        f"At 1M items a month, the 95% quality intervals leave student within reach of teacher "
        f"(${lines['teacher'].total_lo:,.0f}–${lines['teacher'].total_hi:,.0f} over 12 months), so these items do "
        "not pick a winner: teacher is cheapest at the point estimates, $42,000 over 12 months")
    assert "run teacher:" not in decision.sentence


def test_payback_leaves_out_what_the_current_choice_already_paid():
    # both learned from the same labeled pool ($100): only the baseline's training is still to pay
    teacher = System("teacher", "llm", 0.95, 0.949, 0.951, usd_per_item=0.001, one_off={"labels": 100.0})
    baseline = System("baseline", "baseline", 0.96, 0.959, 0.961, usd_per_item=0.000001,
                      one_off={"labels": 100.0, "training": 3.0})
    decision = decide([teacher, baseline], A, current="teacher")
    line = next(line for line in decision.lines if line.system == "baseline")
    assert line.one_off == pytest.approx(103.0) and line.payback_months == pytest.approx(3.0 / 1499)


def test_an_unpriced_system_is_listed_never_ranked():
    unpriced = System("openai:mystery", "llm", 0.99, 0.98, 1.0, usd_per_item=None)
    decision = decide([*systems(), unpriced], A)
    assert decision.unpriced == ["openai:mystery"] and decision.choice == "baseline"
    last = decision.lines[-1]
    assert last.system == "openai:mystery" and last.total is None and last.run_month is None
    nothing = decide([unpriced], A)
    assert nothing.choice is None and "No system here has a price yet (openai:mystery)" in nothing.sentence


def test_a_one_off_with_an_unpriced_part_is_unpriced():
    student = System("student", "student", 0.9, 0.85, 0.95, usd_per_item=1e-5, one_off={"teacher answers": None})
    assert student.one_off_usd is None and not student.priced


@pytest.mark.parametrize(("text", "value"), [("1M/month", 1e6), ("250k", 250e3), ("40000", 4e4), ("1.5M", 1.5e6),
                                             ("2,000,000 / month", 2e6)])
def test_volumes_read_as_people_write_them(text: str, value: float):
    assert parse_volume(text) == value


@pytest.mark.parametrize("text", ["lots", "-5", "0", "1M/week"])
def test_a_bad_volume_is_one_clear_error(text: str):
    with pytest.raises(LlmbusError, match="--volume"):
        parse_volume(text)
