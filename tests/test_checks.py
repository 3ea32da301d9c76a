"""A team's own metric (`metric: module:function`) and `assert:` checks: each kind through eval (pass rates with
Wilson intervals equal to a count over the call log), the gate (`assert:NAME`), compare, JUnit XML (parsed),
judge assertions through the judge machinery, and bad references as one error line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import spam_or_ham, write_items, write_spec
from llmbus.errors import SpecError
from llmbus.experiments.compare import compare_runs
from llmbus.quality.estimate import wilson
from llmbus.quality.evaluate import evaluate
from llmbus.quality.gate import check_gate, parse_gate
from llmbus.run.engine import run_task
from llmbus.run.options import RunOptions
from llmbus.store import Store
from llmbus.task.spec import load_spec
from llmbus.testing import ScriptedProvider

SCRIPTED = "scripted:spam-filter"  # runs whose answers only need to be canned: no HTTP is under test there
SMS_JUDGE = Path(__file__).resolve().parents[1] / "examples" / "sms_spam" / "judge.yaml"
SCORING = '''
def tone(expected, answer, item):
    """1 when right; half a point for a wrong answer on a lunch message."""
    return 1.0 if answer == expected else (0.5 if "lunch" in item["text"] else 0.0)


def right(expected, answer, item):
    return answer == expected


def short(expected, answer, item):
    return {"pass": len(str(answer)) <= 3, "score": 0.0, "reason": f"{answer!r} is longer than 3"}


def broken(expected, answer, item):
    return 7
'''
CHECKS = [{"icontains": "A"}, {"name": "no_spam", "not-contains": "spam"}, {"regex": "^(ham|spam)$"},
          {"equals": "{{ item.label }}"}, "is-json", {"type": "python", "value": "scoring:short", "name": "short"}]


def _llmbus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmbus.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    """A classify spec with a custom metric and one check of each deterministic kind; item 4 spams a lunch SMS
    (the stub, and `spam_or_ham`, answer spam for it), so some checks fail on it."""
    (tmp_path / "scoring.py").write_text(SCORING)
    write_items(tmp_path / "items.jsonl", 30, {i: "spam" for i in (4, 7, 10)})
    return write_spec(tmp_path / "task.yaml", "items.jsonl", metric="scoring:tone", **{"assert": CHECKS})


def rates(store: Store, run_id: str) -> dict[str, tuple[int, int]]:
    """(passed, n) of each deterministic check, counted by hand over the call log."""
    rows = list(store.iter_calls(run_id))
    texts = [r["raw_output"] for r in rows]
    counts = {"icontains": sum("a" in t.lower() for t in texts), "no_spam": sum("spam" not in t for t in texts),
              "regex": sum(t in ("ham", "spam") for t in texts),
              "equals": sum(r["raw_output"] == r["expected"] for r in rows), "is_json": 0,
              "short": sum(len(str(r["parsed"])) <= 3 for r in rows)}
    return {name: (passed, len(rows)) for name, passed in counts.items()}


def test_each_check_kind_and_the_custom_metric_through_eval(spec_path: Path, store: Store):
    spec = load_spec(spec_path)
    assert [c.name for c in spec.checks] == ["icontains", "no_spam", "regex", "equals", "is_json", "short"]
    run_id = run_task(spec, SCRIPTED, store, RunOptions(concurrency=2), provider=ScriptedProvider(spam_or_ham))
    rows = list(store.iter_calls(run_id))
    report = evaluate(store, run_id, rounds=200)
    for name, (passed, n) in rates(store, run_id).items():
        rate = report.assertions[name]
        assert (rate["passed"], rate["n"]) == (passed, n), name
        assert (rate["lo"], rate["hi"]) == pytest.approx(wilson(passed / n, n)), name
    assert 0 < report.assertions["no_spam"]["value"] < 1 and report.assertions["is_json"]["value"] == 0
    # the custom metric: the mean of the function over the items, each seeing its own row's fields
    by_id = {json.loads(line)["id"]: json.loads(line) for line in (spec_path.parent / "items.jsonl").open()}
    expected = [1.0 if r["parsed"] == r["expected"] else 0.5 if "lunch" in by_id[r["item_id"]]["text"] else 0.0
                for r in rows]
    assert report.metric == "scoring:tone" and report.values["scoring:tone"].value == pytest.approx(
        sum(expected) / len(expected))
    assert 0.5 in expected  # the item's fields mattered
    assert report.values["scoring:tone"].lo <= report.values["scoring:tone"].value <= report.values["scoring:tone"].hi
    assert "accuracy" in report.values  # the kind's own metrics still come along
    assert [r["score"] for r in rows] == pytest.approx(expected)  # scored the same way at run time
    # the gate reads assertions and the custom metric
    passed = check_gate(report, parse_gate("assert:regex>=1, assert:no_spam.hi<=1, scoring:tone.lo>0"))
    assert passed.passed
    failed = check_gate(report, parse_gate("assert:no_spam>=0.99"))
    assert not failed.passed and failed.checks[0]["value"] == report.assertions["no_spam"]["value"]


def test_eval_cli_gate_and_junit_xml(spec_path: Path, stub_model: str, tmp_path: Path):
    done = _llmbus("run", str(spec_path), "-m", stub_model, "--json")
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    junit = tmp_path / "checks.xml"
    ok = _llmbus("eval", run_id, "--gate", "assert:regex>=0.99", "--junit", str(junit))
    assert ok.returncode == 0, ok.stderr
    assert "assertions (pass rate, 95% Wilson CI)" in ok.stdout and "gate assert:regex>=0.99: 1.0000 pass" in ok.stdout
    bad = _llmbus("eval", run_id, "--gate", "assert:no_spam>=0.99", "--json")
    assert bad.returncode == 1 and json.loads(bad.stdout)["gate"][0]["checks"][0]["passed"] is False
    unknown = _llmbus("eval", run_id, "--gate", "assert:nope>=0.5")
    assert unknown.returncode == 2 and "has no assertion 'nope'; it has assert:icontains" in unknown.stderr

    suites = ET.parse(junit).getroot()
    (suite,) = suites.findall("testsuite")
    cases = suite.findall("testcase")
    store = Store(os.environ["LLMBUS_DB"])
    counts = rates(store, run_id)
    n = next(iter(counts.values()))[1]
    assert int(suite.get("tests")) == len(cases) == n * len(CHECKS)
    failures = [c for c in cases if c.find("failure") is not None]
    assert int(suite.get("failures")) == len(failures) == sum(n - passed for passed, _ in counts.values())
    spam = [c for c in failures if c.get("classname") == "tiny.no_spam"]
    assert len(spam) == n - counts["no_spam"][0] and all(c.find("failure").get("message") for c in spam)
    assert {c.get("name") for c in cases} == {r["item_id"] for r in store.iter_calls(run_id)}


def test_compare_shows_each_runs_pass_rates_on_the_shared_items(spec_path: Path, store: Store):
    spec = load_spec(spec_path)
    first = run_task(spec, SCRIPTED, store, RunOptions(limit=12), provider=ScriptedProvider(spam_or_ham))
    second = run_task(spec, SCRIPTED, store, RunOptions(use_cache=False), provider=ScriptedProvider(spam_or_ham))
    matrix = compare_runs(store, [first, second], rounds=100)
    assert matrix.metric == "scoring:tone" and matrix.n_shared == 12
    for row in matrix.rows:
        assert set(row.assertions) == {c.name for c in spec.checks}
        shared = [c for c in store.iter_calls(row.run_id)
                  if c["item_id"] in {x["item_id"] for x in store.iter_calls(first)}]
        passed = sum("spam" not in c["raw_output"] for c in shared)
        assert row.assertions["no_spam"]["passed"] == passed and row.assertions["no_spam"]["n"] == 12
    done = _llmbus("compare", first, second, "--db", str(spec_path.parent / "calls.db"), "--json")
    assert done.returncode == 0, done.stderr
    assert [r["assertions"]["no_spam"] for r in json.loads(done.stdout)["rows"]] == [
        r.assertions["no_spam"] for r in matrix.rows]


def test_a_judge_assertion_runs_once_through_the_judge_machinery(tmp_path: Path, stub_model: str, store: Store):
    write_items(tmp_path / "items.jsonl", 24)
    judge = yaml.safe_load(SMS_JUDGE.read_text())  # a judge spec file, with its few-shot examples
    judge["data"]["path"] = str(SMS_JUDGE.parent / "judge_examples.jsonl")
    judge["prompt"] = judge["prompt"].rstrip().removesuffix("Verdict:") + "Grade:"  # the stub grades pass/fail
    (tmp_path / "judges").mkdir()
    (tmp_path / "judges" / "sms.yaml").write_text(yaml.safe_dump(judge))
    rubric = {"judge": "The label is not spam", "model": stub_model, "name": "not_spam"}
    from_file = {"judge": "judges/sms.yaml", "model": stub_model, "name": "sms_judge"}
    spec = load_spec(write_spec(tmp_path / "task.yaml", "items.jsonl", **{"assert": [rubric, from_file]}))
    run_id = run_task(spec, stub_model, store)
    waiting = evaluate(store, run_id, rounds=50)  # compare, the gate and the run browser never spend on judges
    assert waiting.assertions["not_spam"]["value"] is None
    assert any("not judged yet" in w for w in waiting.warnings)
    judged = evaluate(store, run_id, rounds=50, judge=True)
    rows = list(store.iter_calls(run_id))
    hams = sum(r["raw_output"] == "ham" for r in rows)  # the stub's grader fails answers that say spam
    assert judged.assertions["not_spam"]["passed"] == hams and judged.assertions["not_spam"]["n"] == len(rows)
    assert judged.assertions["sms_judge"]["passed"] == hams  # the judge spec file, few-shot examples and all
    assert store.get_run(judged.assertions["sms_judge"]["judge_run_id"])["task"] == judge["name"]
    judge_run = judged.assertions["not_spam"]["judge_run_id"]
    assert store.get_run(judge_run)["task"] == "tiny.not_spam"
    again = evaluate(store, run_id, rounds=50, judge=True)  # read back, not judged again
    assert again.assertions["not_spam"]["judge_run_id"] == judge_run
    assert len([r for r in store.list_runs() if r["task"] == "tiny.not_spam"]) == 1


def test_bad_references_are_one_error_line_naming_the_file_and_field(tmp_path: Path, stub_model: str):
    write_items(tmp_path / "items.jsonl", 6)
    (tmp_path / "scoring.py").write_text(SCORING)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"metric": "scoring:nope"}, r"task\.yaml:\d+: metric: module 'scoring' .* has no function 'nope'"),
        ({"metric": "missing_mod:f"}, r"task\.yaml:\d+: metric: cannot import 'missing_mod'"),
        ({"metric": "bleu"}, r"metric 'bleu' does not fit kind classify"),
        ({"assert": [{"python": "scoring:gone"}]}, r"task\.yaml:\d+: assert\.0 \(python\): module 'scoring'"),
        ({"assert": [{"regex": "(unclosed"}]}, r"task\.yaml:\d+: assert\.0: regex '\(unclosed'"),
        ({"assert": [{"judge": "judges/missing.yaml"}]}, r"assert\.0 \(judge\): judge spec .*missing\.yaml not found"),
        ({"assert": [{"contains": "a", "regex": "b"}]}, r"assert\.0: give one assertion kind per entry"),
        ({"assert": [{"shout": "a"}]}, r"assert\.0: unknown assertion kind 'shout'"),
        ({"assert": [{"name": "x", "contains": "a"}, {"name": "x", "regex": "b"}]}, r"assert: assertion name 'x'"),
    ]
    for overrides, pattern in cases:
        path = write_spec(tmp_path / "task.yaml", "items.jsonl", **overrides)
        with pytest.raises(SpecError, match=pattern):
            load_spec(path)
    done = _llmbus("run", str(write_spec(tmp_path / "task.yaml", "items.jsonl", metric="scoring:nope")), "-m",
                   stub_model)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_metric_outside_0_1_is_refused_and_checks_do_not_change_the_spec_version(tmp_path: Path, stub_model: str,
                                                                                   store: Store):
    (tmp_path / "scoring.py").write_text(SCORING)
    write_items(tmp_path / "items.jsonl", 8)
    plain = load_spec(write_spec(tmp_path / "plain.yaml", "items.jsonl"))
    scored = load_spec(write_spec(tmp_path / "task.yaml", "items.jsonl", metric="scoring:right",
                                  **{"assert": CHECKS}))
    assert scored.version == plain.version  # they score answers; the model is asked the same
    run_id = run_task(scored, stub_model, store)
    report = evaluate(store, run_id, rounds=50)
    assert report.values["scoring:right"].value == report.values["accuracy"].value
    spec = yaml.safe_load((tmp_path / "task.yaml").read_text())
    spec["metric"] = "scoring:broken"
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(spec))
    done = _llmbus("run", str(tmp_path / "broken.yaml"), "-m", stub_model, "--no-cache")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert re.search(r"metric scoring:broken returned 7 for expected '(ham|spam)', answer '(ham|spam)': return a "
                     r"bool or a number in \[0, 1\]", done.stderr.replace("\n", "")), done.stderr


def test_the_run_browser_shows_pass_rates_on_the_run_and_compare_pages(spec_path: Path, store: Store):
    from fastapi.testclient import TestClient

    from llmbus.web.runs_web import create_app

    spec = load_spec(spec_path)
    first = run_task(spec, SCRIPTED, store, RunOptions(limit=10), provider=ScriptedProvider(spam_or_ham))
    second = run_task(spec, SCRIPTED, store, RunOptions(limit=10, use_cache=False),
                      provider=ScriptedProvider(spam_or_ham))
    rate = evaluate(store, first, rounds=20).assertions["no_spam"]
    client = TestClient(create_app(store, rounds=20))
    page = client.get(f"/runs/{first}").text
    assert 'id="assertions"' in page and 'data-name="no_spam"' in page
    assert f"{rate['passed']}/{rate['n']}" in page and f"{rate['lo']:.3f}–{rate['hi']:.3f}" in page
    matrix = client.get(f"/compare?run={first}&run={second}").text
    assert "assert:no_spam" in matrix and f"{rate['value']:.3f} ({rate['lo']:.3f}–{rate['hi']:.3f})" in matrix


def test_optimize_reports_each_candidates_pass_rates(spec_path: Path, store: Store):
    from llmbus.experiments.optimize import measure_run

    run_id = run_task(load_spec(spec_path), SCRIPTED, store, RunOptions(limit=10),
                      provider=ScriptedProvider(spam_or_ham))
    measure = measure_run(store, run_id)
    report = evaluate(store, run_id, rounds=20)
    assert measure.assertions == {name: rate["value"] for name, rate in report.assertions.items()}
    assert measure.quality.value == report.values["scoring:tone"].value  # the custom metric is the objective
