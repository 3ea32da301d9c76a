"""A run's answers against its spec's `assert:` checks (task/checks.py): per item, per check, pass or fail with
the reason, and each check's pass rate with its 95% Wilson interval; JUnit XML for CI systems.

The deterministic checks are recomputed from the call log whenever they are asked for (like the metrics).
A `judge:` check is a judge run over the run's answers, through the judge machinery (quality/judge.py): a judge
spec file, or a rubric in words (a pass/fail judge built around it, no examples). `checks(judge=True)` (what
`llmbus eval` does) makes the judge run once; afterwards, and everywhere else (compare, the gate, the run
browser), the latest judge run of that judge and model on the run is read back; until one exists the check is
reported as not judged. A judge passes an answer when its score reaches the threshold (pass/fail judges score
1 or 0; a 1–5 scale is taken as (score − 1) / 4).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from llmbus.errors import LlmbusError
from llmbus.quality.estimate import wilson
from llmbus.quality.judge import SCORE_LABELS, load_judge, load_verdicts, run_items, run_judge
from llmbus.settings import DEFAULT_MODEL
from llmbus.store import Store
from llmbus.store.schema import judge_runs, runs
from llmbus.task.checks import Check, check_answer, custom_score, resolve_function
from llmbus.task.spec import TaskSpec


@dataclass
class CheckResult:
    """One check over a run's items: passed or not per item (with why not), or why it was not evaluated."""

    name: str
    kind: str
    negate: bool
    item_ids: list[str] = field(default_factory=list)
    passed: list[bool] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    judge_run_id: str | None = None
    skipped: str | None = None  # a judge check nobody has run yet

    def rate(self) -> dict[str, Any]:
        """The pass rate with its 95% Wilson interval (None values when skipped or empty)."""
        n = len(self.passed)
        if self.skipped or not n:
            return {"kind": self.kind, "value": None, "lo": None, "hi": None, "passed": 0, "n": n,
                    "judge_run_id": self.judge_run_id, "skipped": self.skipped}
        passed = int(sum(self.passed))
        lo, hi = wilson(passed / n, n)
        return {"kind": self.kind, "value": passed / n, "lo": lo, "hi": hi, "passed": passed, "n": n,
                "judge_run_id": self.judge_run_id, "skipped": None}


def run_spec(run: dict[str, Any]) -> TaskSpec:
    """The spec a run was made with (as stored with it), its file path as source when known."""
    spec = TaskSpec.model_validate_json(run["spec_json"])
    if run.get("task_path"):
        spec = spec.model_copy(update={"source": Path(run["task_path"])})
    return spec


def run_checks(store: Store, run: dict[str, Any], judge: bool = False,
               on_stage: Callable[[str], None] | None = None) -> list[CheckResult]:
    """Every check of the run's spec over its answers; `judge=True` makes the judge runs still missing."""
    if not (json.loads(run.get("spec_json") or "{}") or {}).get("assert"):
        return []  # runs before assertions, traffic runs, call-shaped test runs: nothing to check
    spec = run_spec(run)
    calls = list(store.iter_calls(run["id"]))
    fields = run_items(store, run)
    results = []
    for check in spec.checks:
        if check.kind == "judge":
            results.append(_judge_check(store, run, spec, check, calls, judge, on_stage))
        else:
            results.append(_plain_check(spec, check, calls, fields))
    return results


def custom_scorer(store: Store, run: dict[str, Any], metric: str) -> Callable[[dict[str, Any]], float]:
    """A team's own metric as a function of one (answered) call: its function of (expected, answer, item)."""
    spec = run_spec(run)
    try:
        fn = resolve_function(metric, spec.source.parent if spec.source else None)
    except ValueError as exc:
        raise LlmbusError(f"run {run['id']}: metric {metric}: {exc}") from None
    fields = run_items(store, run)

    def score(call: dict[str, Any]) -> float:
        return custom_score(fn, metric, call["expected"], call["parsed"], fields.get(call["item_id"], {}))

    return score


def _plain_check(spec: TaskSpec, check: Check, calls: list[dict[str, Any]],
                 fields: dict[str, dict[str, Any]]) -> CheckResult:
    folder = spec.source.parent if spec.source else None
    try:
        function = resolve_function(str(check.value), folder) if check.kind == "python" else None
    except ValueError as exc:
        raise LlmbusError(f"{spec.source or spec.name}: assert {check.name}: {exc}") from None
    result = CheckResult(str(check.name), check.kind, check.negate)
    for call in calls:
        failed = call["error_kind"] is not None
        text = call["raw_output"] if call["raw_output"] or not failed else None
        item = fields.get(call["item_id"], {})
        try:
            ok, why = check_answer(check, text, None if failed else call["parsed"], call["expected"], item, function)
        except Exception as exc:  # a python check that raised: a failure of that item, with the reason
            ok, why = False, f"{check.value} raised {exc.__class__.__name__}: {exc}"
        result.item_ids.append(call["item_id"])
        result.passed.append(bool(ok))
        result.messages.append(why)
    return result


def judge_spec(spec: TaskSpec, check: Check) -> TaskSpec:
    """The judge a `judge:` check names: a judge spec file (relative to the task spec), or a pass/fail judge
    built around a rubric in words (no examples: it reads the item's input and the fenced answer)."""
    value = str(check.value)
    if value.endswith((".yaml", ".yml")):
        return load_judge(str(spec.resolve(value)))
    # the rubric is the user's text, not a template: raw, so braces in it stay braces
    prompt = ("Grade the answer against the rubric. Reply with one word: pass or fail.\n"
              f"Rubric: {{% raw %}}{value.strip()}{{% endraw %}}\n"
              f"Input: {{{{ item[{json.dumps(spec.data.input)}] }}}}\n"
              "Answer: {{ item.answer }}\nGrade:")
    return TaskSpec.model_validate({
        "name": f"{spec.name}.{check.name}", "kind": "classify", "prompt": prompt,
        "output": {"labels": ["pass", "fail"]}, "data": {"path": "-", "input": spec.data.input, "expected": "verdict"},
        "fewshot": {"k": 0}, "params": {"max_tokens": 2}, "source": spec.source})


def _judge_check(store: Store, run: dict[str, Any], spec: TaskSpec, check: Check, calls: list[dict[str, Any]],
                 judge: bool, on_stage: Callable[[str], None] | None) -> CheckResult:
    result = CheckResult(str(check.name), check.kind, check.negate)
    judge_def = judge_spec(spec, check)
    model = check.model or DEFAULT_MODEL
    judge_run_id = latest_judge_run(store, run["id"], judge_def, model)
    if judge_run_id is None and not judge:
        result.skipped = f"not judged yet (llmbus eval {run['id']} runs judge {judge_def.name} on {model})"
        return result
    if judge_run_id is None:
        if on_stage:
            on_stage(f"assert {check.name}: judging {len(calls)} answers with {judge_def.name} on {model}")
        judge_run_id = run_judge(judge_def, store, run["id"], model=model).judge_run_id
    result.judge_run_id = judge_run_id
    verdicts = {row["item_id"]: row for row in load_verdicts(store, judge_run_id)}
    scale = sorted(judge_def.output.labels or []) == SCORE_LABELS
    for call in calls:
        row = verdicts.get(call["item_id"])
        score = None if row is None else row["score"]
        if score is not None and scale:
            score = (score - 1) / 4
        ok = score is not None and score >= check.threshold
        if check.negate:
            ok = score is not None and not ok
        why = "" if ok else ("the judge gave no verdict" if score is None else f"judge verdict {row['verdict']}"
                             if row else "not judged")
        result.item_ids.append(call["item_id"])
        result.passed.append(ok)
        result.messages.append(why)
    return result


def latest_judge_run(store: Store, target_run_id: str, judge_def: TaskSpec, model: str) -> str | None:
    """The newest finished judge run of this judge (same spec version) and model over the run, if any."""
    query = (sa.select(runs.c.id).join(judge_runs, judge_runs.c.run_id == runs.c.id)
             .where(judge_runs.c.target_run_id == target_run_id, runs.c.task == judge_def.name,
                    runs.c.spec_version == judge_def.version, runs.c.model == model, runs.c.status == "done")
             .order_by(runs.c.created_at.desc()))
    with store.engine.connect() as conn:
        found = conn.scalars(query).first()
    return None if found is None else str(found)


def passed_by_item(result: CheckResult, ids: np.ndarray, hash_of: Callable[[str], int]) -> np.ndarray:
    """The check's pass (1.0) / fail (0.0) in the order of `ids` (item hashes); nan where it has no result."""
    index = {hash_of(item_id): ok for item_id, ok in zip(result.item_ids, result.passed, strict=True)}
    return np.array([float(index[i]) if i in index else np.nan for i in ids.tolist()])


def junit_xml(reports: list[tuple[dict[str, Any], list[CheckResult]]]) -> str:
    """JUnit XML: a test suite per run, a test case per item × check (a failure with its reason; a skipped case
    for a check not judged yet)."""
    suites = ET.Element("testsuites", name="llmbus eval")
    for run, results in reports:
        cases = [(r, i) for r in results for i in range(max(len(r.item_ids), 1 if r.skipped else 0))]
        failures = sum(not r.passed[i] for r, i in cases if not r.skipped)
        suite = ET.SubElement(suites, "testsuite", name=f"{run['task']} · run {run['id']}", tests=str(len(cases)),
                              failures=str(failures), errors="0",
                              skipped=str(sum(1 for r, _ in cases if r.skipped)))
        for result, i in cases:
            name = result.item_ids[i] if result.item_ids else "(all items)"
            case = ET.SubElement(suite, "testcase", classname=f"{run['task']}.{result.name}", name=name)
            if result.skipped:
                ET.SubElement(case, "skipped", message=result.skipped)
            elif not result.passed[i]:
                failure = ET.SubElement(case, "failure", message=result.messages[i] or "failed", type=result.kind)
                failure.text = f"{result.name} ({'not-' if result.negate else ''}{result.kind}) failed on item {name}"
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True)
