from pathlib import Path

import pytest

from conftest import SMS_TASK
from llmbus.advise import advise
from llmbus.run import run_task
from llmbus.spec import load_spec
from llmbus.store import Store


def test_tier_baselines_and_llm_rows_on_a_small_task(tiny_task: Path, stub, stub_model: str, store: Store):
    spec = load_spec(tiny_task)
    run_task(spec, stub_model, store, limit=10)
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
