from pathlib import Path
from typing import Any

import pytest

from conftest import SMS_TASK, spam_or_ham
from llmbus.advise.advise import advise
from llmbus.run.engine import run_task
from llmbus.run.options import RunOptions
from llmbus.store import Store
from llmbus.task.spec import load_spec
from llmbus.testing import ScriptedProvider


def test_tier_baselines_and_llm_rows_on_a_small_task(tiny_task: Path, store: Store):
    spec = load_spec(tiny_task)
    run_task(spec, "scripted:test", store, RunOptions(limit=10), provider=ScriptedProvider(spam_or_ham))
    advice = advise(spec, store)
    assert advice.tier == "small" and advice.tier_params == "≈300M"
    systems = {row.system: row for row in advice.rows}
    assert {"tfidf+logreg", "minilm+logreg"} <= set(systems)
    llm = next(row for row in advice.rows if row.kind == "llm")
    assert llm.n_items == 10 and llm.baseline_on_same_items is not None
    assert all(0 <= row.value <= 1 for row in advice.rows)
    assert advice.verdict


@pytest.mark.slow
def test_sms_baselines_are_strong():
    advice = advise(load_spec(SMS_TASK))
    values = {row.system: row.value for row in advice.rows}
    assert values["tfidf+logreg"] > 0.95 and values["minilm+logreg"] > 0.93
    assert all(row.usd_per_1k < 0.01 for row in advice.rows)


@pytest.mark.slow
def test_ner_and_math_get_their_own_baselines_and_tiers():
    root = Path(__file__).resolve().parents[1] / "examples"
    ner = advise(load_spec(root / "twitter_ner" / "task.yaml"))
    assert ner.tier_params == "≈300M" and {r.system for r in ner.rows} == {"word-features+logreg",
                                                                           "minilm-tokens+logreg"}
    assert all(0 < r.value < 1 for r in ner.rows)
    math = advise(load_spec(root / "gsm8k" / "task.yaml"))
    assert math.tier_params == "≈3B" and all(r.value < 0.2 for r in math.rows)


class _Stages:
    """A progress callback that records every (stage, done, total) call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None, int | None]] = []

    def __call__(self, stage: str, done: int | None, total: int | None) -> None:
        self.calls.append((stage, done, total))

    def of(self, stage: str) -> list[tuple[int | None, int | None]]:
        return [(done, total) for name, done, total in self.calls if name == stage]


def test_embedding_reports_its_batches_and_keeps_its_vectors():
    import numpy as np

    from llmbus.embed import embed

    texts = [f"message number {i} about lunch" for i in range(20)]
    stages = _Stages()
    vectors = embed(texts, batch_size=2, progress=stages)  # chunks of 4 batches: 8 texts
    assert stages.of("embedding 20 texts") == [(0, 20), (8, 20), (16, 20), (20, 20)]
    assert np.allclose(vectors, embed(texts), atol=1e-5)
    embed(texts[:2], batch_size=2, progress=stages)  # one batch: nothing to report
    assert len(stages.calls) == 4


def test_advise_reports_each_stage(tmp_path: Path):
    from conftest import write_items, write_spec
    from llmbus.task.data import load_items, split_items

    write_items(tmp_path / "many.jsonl", 200)
    spec = load_spec(write_spec(tmp_path / "many.yaml", "many.jsonl",
                                fewshot={"k": 0, "strategy": "fixed", "pool_fraction": 0.5}))
    split = split_items(spec, load_items(spec))
    pool, evaluation = len(split.pool), len(split.eval)
    assert pool > 64 and evaluation > 64  # more than one embedding batch each
    stages = _Stages()
    advise(spec, progress=stages)
    for name in ("tfidf+logreg", "minilm+logreg"):
        assert stages.of(f"training {name} on {pool} pool items") == [(0, 1), (1, 1)]
        assert stages.of(f"scoring {name} on {evaluation} eval items") == [(0, 1), (1, 1)]
    assert stages.of(f"embedding {pool} texts") == [(0, pool), (pool, pool)]  # the pool, while training
    assert stages.of(f"embedding {evaluation} texts") == [(0, evaluation), (evaluation, evaluation)]
    order = [name for name, _, _ in stages.calls]
    assert order.index(f"embedding {pool} texts") > order.index(f"training minilm+logreg on {pool} pool items")


def _llmbus(*args: str, env: dict[str, str]) -> Any:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "llmbus.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.slow
def test_advise_shows_progress_on_a_terminal_and_json_stays_plain(tiny_task: Path):
    import json
    import os

    # FORCE_COLOR makes rich draw as on a terminal: the progress line would show, and so would colored JSON.
    env = {**os.environ, "FORCE_COLOR": "1", "LLMBUS_THREADS": "1"}
    shown = _llmbus("advise", str(tiny_task), env=env)
    assert shown.returncode == 0, shown.stderr
    assert "training minilm+logreg on" in shown.stderr and "scoring tfidf+logreg on" in shown.stderr
    assert "training minilm+logreg on" not in shown.stdout
    quiet = _llmbus("advise", str(tiny_task), "--json", env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert json.loads(quiet.stdout)["task"] == "tiny" and "pool items" not in quiet.stderr + quiet.stdout
