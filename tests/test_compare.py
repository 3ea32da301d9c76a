"""compare: runs of one task across spec versions and models, made through the real run path (the OpenAI stub),
checked against figures worked out by hand from the stub's rule; the paired test is evaluate's; refusals."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import binomtest

from conftest import write_items, write_spec
from llmbus.errors import LlmbusError
from llmbus.experiments.compare import compare_runs
from llmbus.quality.evaluate import compare
from llmbus.run.engine import run_task
from llmbus.run.options import RunOptions
from llmbus.store import Store
from llmbus.task.spec import load_spec
from openai_stub import StubServer
from test_cli import assert_one_line_error, llmbus

N_ITEMS = 60
HTML = "<b>bold</b><script>window.pwned = 1</script>"  # markup in an SMS: the UI must show it as text
MARKERS = ({i: "NONSENSE" for i in range(N_ITEMS) if i % 7 == 1} | {i: "UNSURE" for i in range(N_ITEMS) if i % 5 == 2}
           | {i: HTML for i in range(N_ITEMS) if i % 10 == 4})


@dataclass
class Runs:
    """Three runs of task `tiny`: v1 on the stub, v2 (a prompt that cuts the SMS short) on the stub, and v1 on a
    three-times dearer stub model over the first 20 items only."""

    store: Store
    v1: str
    v2: str
    v1_dear: str
    tmp: Path


def nonsense(i: int) -> bool:
    """The stub answers `maybe` (not a label: a failed call) on these items."""
    return MARKERS.get(i) == "NONSENSE"


def is_spam(i: int) -> bool:
    return i % 3 == 0  # write_items' rule


def number(item_id: str) -> int:
    return int(item_id.removeprefix("m"))


def item_ids(store: Store, run_id: str) -> list[str]:
    return [c["item_id"] for c in store.iter_calls(run_id)]


def make_runs(tmp_path: Path) -> Runs:
    """The three runs, answered through the real run path by the OpenAI stub."""
    with StubServer() as stub:
        config = {"models": {name: {"base_url": stub.base_url, "model": "stub-model", "timeout_s": 5,
                                    "max_retries": 1, "usd_per_1m_input": price, "usd_per_1m_output": 2.0}
                             for name, price in (("openai:stub", 1.0), ("openai:dear", 3.0))}}
        Path(os.environ["LLMBUS_CONFIG"]).write_text(yaml.safe_dump(config))
        write_items(tmp_path / "items.jsonl", N_ITEMS, MARKERS)
        v1 = load_spec(write_spec(tmp_path / "v1.yaml", "items.jsonl"))
        # The stub reads the prompt's last two lines: cut to 10 characters, no SMS says "spam" any more.
        v2 = load_spec(write_spec(tmp_path / "v2.yaml", "items.jsonl", prompt="SMS: {{ item.text[:10] }}\nLabel:"))
        store = Store(str(tmp_path / "runs.db"))
        first = run_task(v1, "openai:stub", store)
        second = run_task(v2, "openai:stub", store)
        dear = run_task(v1, "openai:dear", store, RunOptions(limit=20))
    return Runs(store, first, second, dear, tmp_path)


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Runs]:
    made = make_runs(tmp_path)
    yield made
    made.store.close()


def test_two_prompt_versions_match_the_hand_worked_figures(runs: Runs):
    matrix = compare_runs(runs.store, [runs.v1, runs.v2], rounds=300)
    items = [number(i) for i in item_ids(runs.store, runs.v1)]
    n = len(items)
    assert n == len(item_ids(runs.store, runs.v2)) and 45 <= n < N_ITEMS  # the pool holds the rest
    # v1: every answer right except the NONSENSE items, which fail; v2 answers "ham" to everything.
    v1_right = {i for i in items if not nonsense(i)}
    v2_right = {i for i in items if not is_spam(i)}
    wins, losses = len(v2_right - v1_right), len(v1_right - v2_right)
    assert wins > 0 and losses > 0  # the data exercises both directions
    base, other = matrix.rows
    assert matrix.n_shared == n and matrix.baseline == runs.v1 and base.baseline and not other.baseline
    assert base.metric.value == pytest.approx(len(v1_right) / n)
    assert other.metric.value == pytest.approx(len(v2_right) / n)
    assert base.errors == sum(nonsense(i) for i in items) and other.errors == 0
    assert (other.wins, other.ties, other.losses) == (wins, n - wins - losses, losses)
    c = other.vs_baseline
    assert c is not None and (c.mcnemar_b_only, c.mcnemar_a_only) == (wins, losses)
    assert c.p_mcnemar == pytest.approx(binomtest(wins, wins + losses, 0.5).pvalue)
    assert c.delta.value == pytest.approx((len(v2_right) - len(v1_right)) / n)
    assert c.delta.hi < 0 and "A is better" in c.verdict  # v2 loses ~a third of the items
    assert base.metric.lo <= base.metric.value <= base.metric.hi
    # The paired test is evaluate's own, on the same items.
    assert c == compare(runs.store, runs.v1, runs.v2, rounds=300)
    assert not matrix.warnings


def test_only_the_items_every_run_answered_count(runs: Runs):
    matrix = compare_runs(runs.store, [runs.v1, runs.v2, runs.v1_dear], rounds=200)
    shared = item_ids(runs.store, runs.v1_dear)
    assert matrix.n_shared == len(shared) == 20
    assert [r.items for r in matrix.rows] == [len(item_ids(runs.store, runs.v1))] * 2 + [20]
    # v1 on the dear model gives the same answers on the same items: a tie everywhere, at three times the input price.
    dear = matrix.rows[2]
    assert dear.vs_baseline == compare(runs.store, runs.v1, runs.v1_dear, rounds=200)  # A ∩ C is C's 20 items
    assert (dear.wins, dear.ties, dear.losses) == (0, 20, 0) and dear.vs_baseline.delta.value == 0
    calls = {r: {c["item_id"]: c for c in runs.store.iter_calls(r)} for r in (runs.v1, runs.v1_dear)}
    for row, run_id in ((matrix.rows[0], runs.v1), (dear, runs.v1_dear)):
        on_shared = [calls[run_id][i] for i in shared]
        assert row.cost_per_1k == pytest.approx(1000 * sum(c["cost_usd"] for c in on_shared) / 20)
        latencies = [c["latency_s"] for c in on_shared]
        assert row.latency_p50_s == pytest.approx(np.percentile(latencies, 50), rel=1e-5)
        assert row.latency_p95_s == pytest.approx(np.percentile(latencies, 95), rel=1e-5)
    assert 2.5 < dear.cost_per_1k / matrix.rows[0].cost_per_1k < 3.0  # input ×3, output price the same
    assert matrix.rows[1].metric.value == pytest.approx(
        sum(not is_spam(number(i)) for i in shared) / 20)  # v2 measured on the 20 shared items, not its own
    assert any("share only 20 items" in w for w in matrix.warnings)
    assert any("left out" in w and f"{runs.v1} " in w for w in matrix.warnings)


def test_task_mode_takes_every_run_oldest_first_and_a_chosen_baseline(runs: Runs):
    matrix = compare_runs(runs.store, task="tiny", rounds=100)
    assert [r.run_id for r in matrix.rows] == [runs.v1, runs.v2, runs.v1_dear] and matrix.baseline == runs.v1
    flipped = compare_runs(runs.store, [runs.v1, runs.v2], baseline=runs.v2[:5], rounds=300)
    assert flipped.baseline == runs.v2 and flipped.rows[1].baseline
    back = compare_runs(runs.store, [runs.v1, runs.v2], rounds=300).rows[1]
    mine = flipped.rows[0]
    assert mine.vs_baseline is not None and back.vs_baseline is not None
    assert mine.vs_baseline.delta.value == pytest.approx(-back.vs_baseline.delta.value)
    assert (mine.wins, mine.losses) == (back.losses, back.wins)
    outside = compare_runs(runs.store, [runs.v2], baseline=runs.v1, rounds=100)  # a baseline not listed joins first
    assert [r.run_id for r in outside.rows] == [runs.v1, runs.v2]


def test_refusals_are_one_clear_line(runs: Runs, tmp_path: Path):
    with StubServer() as stub:
        config = {"models": {"openai:stub": {"base_url": stub.base_url, "model": "stub-model"}}}
        Path(os.environ["LLMBUS_CONFIG"]).write_text(yaml.safe_dump(config))
        other_task = load_spec(write_spec(tmp_path / "other.yaml", "items.jsonl", name="other"))
        other = run_task(other_task, "openai:stub", runs.store, RunOptions(limit=5))
        v1 = load_spec(tmp_path / "v1.yaml")
        head = run_task(v1, "openai:stub", runs.store, RunOptions(limit=5))
        tail = run_task(v1, "openai:stub", runs.store, RunOptions(offset=5, limit=5))
    cases = [
        (dict(run_ids=[runs.v1, other]), "are of different tasks"),
        (dict(run_ids=[runs.v1]), "needs two or more runs of one task; you gave one"),
        (dict(run_ids=[runs.v1, runs.v1]), "you gave one"),
        (dict(task="other"), "task 'other' has one"),
        (dict(task="nothing"), "no runs of task 'nothing'"),
        (dict(run_ids=[head, tail]), "share no items"),
        (dict(run_ids=[runs.v1], task="tiny"), "not both"),
        (dict(), "give two or more run ids, or --task"),
        (dict(task="tiny", baseline=other), "not one of the runs compared"),
    ]
    for kwargs, message in cases:
        with pytest.raises(LlmbusError, match=message):
            compare_runs(runs.store, **kwargs, rounds=50)  # type: ignore[arg-type]


def test_cli_prints_the_matrix_and_json_and_refuses_in_one_line(runs: Runs):
    db = str(runs.tmp / "runs.db")
    shown = llmbus("compare", runs.v1, runs.v2, runs.v1_dear, "--rounds", "100", "--db", db)
    assert shown.returncode == 0, shown.stderr
    assert f"{runs.v1} (base)" in shown.stdout and "W/T/L" in shown.stdout and "on the 20 items" in shown.stdout
    assert "warning: the runs share only 20 items" in shown.stderr
    data = json.loads(llmbus("compare", "--task", "tiny", "--rounds", "100", "--json", "--db", db).stdout)
    assert data["n_shared"] == 20 and data["baseline"] == runs.v1 and len(data["rows"]) == 3
    assert data["rows"][1]["vs_baseline"]["n_paired"] == 20 and data["rows"][0]["vs_baseline"] is None
    assert_one_line_error(llmbus("compare", runs.v1, "--db", db), "compare needs two or more runs")
    assert_one_line_error(llmbus("compare", runs.v1, "zzzz", "--db", db), "run 'zzzz' not found")
