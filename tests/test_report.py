"""The savings report: built from the SMS pipeline's runs, opened in headless Chromium, screenshotted."""

from pathlib import Path

import pytest

from conftest import SMS_TASK
from llmbus.serve.report import Report, ReportRow, build_report, mark_pareto, render_html, row_kind
from llmbus.task.spec import load_spec
from pipeline import Savings


@pytest.mark.slow
def test_report_page_in_a_browser(sms_savings: Savings, browser, tmp_path: Path):
    report = build_report(load_spec(SMS_TASK), sms_savings.store, traffic=1_000_000)
    kinds = {row.kind: row for row in report.rows}
    assert set(kinds) == {"teacher", "student", "cascade", "cached"}
    assert all(row.n == 24 for row in report.rows)  # the held-out items, same for every configuration
    assert kinds["cached"].usd_per_1k == 0 and kinds["cached"].p50_ms < kinds["teacher"].p50_ms
    assert kinds["student"].usd_per_1k < kinds["teacher"].usd_per_1k
    assert kinds["cascade"].escalation_rate is not None
    assert all(row.quality_lo <= row.quality <= row.quality_hi for row in report.rows)
    page_path = tmp_path / "report.html"
    page_path.write_text(render_html(report))
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.goto(page_path.as_uri())
    assert page.locator("#rows tbody tr").count() == 4
    assert page.locator("#headline").inner_text() == report.headline
    assert page.evaluate("document.getElementById('pareto').naturalWidth") > 300  # the embedded PNG decoded
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    page.close()


def test_pareto_front():
    def row(kind: str, quality: float, cost: float) -> ReportRow:
        return ReportRow(kind, "r", "m", 10, quality, quality, quality, 1, 1, cost, cost * 1000)

    rows = [row("teacher", 0.95, 1.0), row("student", 0.93, 0.01), row("cascade", 0.94, 0.5),
            row("bad", 0.90, 0.6)]
    mark_pareto(rows)
    assert [r.pareto for r in rows] == [True, True, True, False]


def test_distilled_local_students_count_as_students(tmp_path: Path):
    (tmp_path / "llmbus.yaml").write_text(
        "models:\n  local:trivia-student:\n    gguf: /models/s.gguf\n    input_template: 'Input: {input}'\n")
    assert row_kind("local:trivia-student", 0.0) == "student"
    assert row_kind("local:gemma-3-270m", 0.0) == "teacher"
    assert row_kind("openai:unknown", 0.0) == "teacher"  # unresolvable references are not students
    assert row_kind("local:trivia-student", 0.95) == "cached"


def test_page_shows_draft_acceptance_only_when_a_model_drafted():
    plain = ReportRow("teacher", "r1", "local:gemma", 10, 0.9, 0.8, 1.0, 100, 200, 0.01, 10.0)
    report = Report(task="t", metric="accuracy", traffic=1000, rows=[plain])
    assert "drafts accepted" not in render_html(report)
    report.rows.append(ReportRow("teacher", "r2", "local:gemma-ngram", 10, 0.9, 0.8, 1.0, 80, 150, 0.008, 8.0,
                                 draft_acceptance=0.715))
    page = render_html(report)
    assert "drafts accepted" in page and "72%" in page


def test_a_given_run_without_answers_is_one_clear_error(tiny_task: Path, store):
    from llmbus.errors import LlmbusError
    from quality_helpers import add_run

    empty = add_run(store, [], task="tiny", labels=["ham", "spam"])
    with pytest.raises(LlmbusError, match=f"run {empty} has no answers"):
        build_report(load_spec(tiny_task), store, run_ids=[empty])


def test_a_one_class_run_is_flagged_on_the_page(tiny_task: Path, store):
    from quality_helpers import add_run, classify_rows

    one_class = add_run(store, classify_rows(["ham"] * 30, ["ham"] * 30), task="tiny", labels=["ham", "spam"])
    report = build_report(load_spec(tiny_task), store, run_ids=[one_class])
    assert report.rows[0].quality == 1.0  # accuracy looks perfect: only the warning tells the sample is one class
    assert any("never expected: spam" in w for w in report.warnings)
    page = render_html(report)
    assert 'class="warning"' in page and "never expected: spam" in page
