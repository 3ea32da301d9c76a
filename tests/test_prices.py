"""Prices: the offline table (genai-prices) for listed models, llmbus.yaml over it, unknown shown as ?, token
kinds priced at their own rates, and a gateway budget that could not count its calls refused at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from genai_prices import Usage as TableUsage
from genai_prices import calc_price

from conftest import write_items, write_spec
from llmbus.providers.config import ModelConfig, load_model_configs
from llmbus.providers.prices import Usage, price_of
from llmbus.run.engine import run_task
from llmbus.run.options import RunOptions
from llmbus.run.summary import spend, summarize
from llmbus.store import Store
from llmbus.task.spec import load_spec
from openai_stub import StubServer


def llmbus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmbus.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "250"}, timeout=120)


def write_config(models: dict[str, dict]) -> Path:
    path = Path(os.environ["LLMBUS_CONFIG"])
    path.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    return path


def marked_task(tmp_path: Path, n: int = 8) -> Path:
    """A tiny classify task whose prompts make the stub report cached and reasoning tokens."""
    write_items(tmp_path / "items.jsonl", n, markers=dict.fromkeys(range(n), "CACHED REASONING"))
    return write_spec(tmp_path / "task.yaml", "items.jsonl")


def table_price(provider: str, model: str, tokens_in: int, cached: int, out: int, reasoning: int) -> float:
    """genai-prices' own calculation for one call's usage."""
    usage = TableUsage(input_tokens=tokens_in, cache_read_tokens=cached, output_tokens=out,
                       output_reasoning_tokens=reasoning)
    return float(calc_price(usage, model_ref=model, provider_id=provider).total_price)


def test_a_listed_model_is_priced_by_the_table_for_every_token_kind(tmp_path: Path, store: Store):
    with StubServer() as stub:
        write_config({"openai:gpt-4o-mini": {"base_url": stub.base_url}})  # a listed name, no price given
        run_id = run_task(load_spec(marked_task(tmp_path)), "openai:gpt-4o-mini", store, RunOptions(concurrency=2))
    calls = list(store.iter_calls(run_id))
    assert calls and all(c["tokens_cached"] > 0 and c["tokens_reasoning"] == 7 for c in calls)
    for c in calls:
        assert c["tokens_cached"] == c["tokens_in"] // 2 and c["tokens_out"] == 8
        assert c["cost_usd"] == pytest.approx(table_price("openai", "gpt-4o-mini", c["tokens_in"], c["tokens_cached"],
                                                          c["tokens_out"], c["tokens_reasoning"]), rel=1e-12)
    # by hand from the table's rates ($0.15 in, $0.075 cached, $0.60 out per 1M; no separate reasoning rate)
    c = calls[0]
    by_hand = ((c["tokens_in"] - c["tokens_cached"]) * 0.15 + c["tokens_cached"] * 0.075 + 8 * 0.60) / 1e6
    assert c["cost_usd"] == pytest.approx(by_hand)
    summary = summarize(store, store.get_run(run_id))
    assert summary.price_known and summary.price_source.endswith("(genai-prices 0.2.5: openai/gpt-4o-mini)")
    assert summary.tokens_cached == sum(c["tokens_cached"] for c in calls)
    assert summary.tokens_reasoning == 7 * len(calls)
    assert json.loads(store.get_run(run_id)["price_json"])["table"] == ["openai", "gpt-4o-mini"]


def test_reasoning_tokens_get_their_own_rate_where_the_table_has_one():
    config = ModelConfig(name="openai:deep", provider="openai", base_url="https://api.perplexity.ai",
                         model="sonar-deep-research")
    price = price_of(config)
    assert price.table == ("perplexity", "sonar-deep-research") and price.reasoning == 3.0 and price.output == 8.0
    usage = Usage(tokens_in=1200, tokens_cached=0, tokens_out=500, tokens_reasoning=300)
    assert price.cost(usage) == pytest.approx(table_price("perplexity", "sonar-deep-research", 1200, 0, 500, 300))
    assert price.cost(usage) == pytest.approx((1200 * 2.0 + 200 * 8.0 + 300 * 3.0) / 1e6)


def test_a_config_price_overrides_the_table(tmp_path: Path, store: Store):
    with StubServer() as stub:
        config = write_config({"openai:gpt-4o-mini": {"base_url": stub.base_url, "usd_per_1m_input": 1.0,
                                                      "usd_per_1m_output": 4.0, "usd_per_1m_cached_input": 0.25}})
        run_id = run_task(load_spec(marked_task(tmp_path)), "openai:gpt-4o-mini", store)
    price = price_of(load_model_configs()["openai:gpt-4o-mini"])
    assert price.source == f"{config}:4" and price.table is None and price.reasoning is None
    for c in store.iter_calls(run_id):  # reasoning falls back to the configured output price
        cached = c["tokens_cached"]
        assert c["cost_usd"] == pytest.approx(((c["tokens_in"] - cached) * 1.0 + cached * 0.25 + 8 * 4.0) / 1e6)
    assert "llmbus.yaml:4" in summarize(store, store.get_run(run_id)).price_source


def test_an_unpriced_model_is_unknown_never_zero(tmp_path: Path):
    with StubServer() as stub:
        write_config({"openai:mystery": {"base_url": stub.base_url, "model": "stub-model"}})
        task = marked_task(tmp_path, 6)
        first = llmbus("run", str(task), "--model", "openai:mystery")
        second = json.loads(llmbus("run", str(task), "--model", "openai:mystery", "--no-cache", "--json").stdout)
    assert first.returncode == 0, first.stderr
    assert f"spent ? on {second['items']} calls (no price for openai:mystery)" in first.stdout
    assert second["price_known"] is False and second["cost_per_1k"] != second["cost_per_1k"]  # NaN, not 0
    listed = llmbus("runs", "--traffic", "1000000")
    row = next(line for line in listed.stdout.splitlines() if second["run_id"] in line)
    assert [cell.strip() for cell in row.split("│")].count("?") == 3  # cost $, $/1k and $/month
    warnings = [line for line in listed.stderr.splitlines() if "openai:mystery" in line]
    assert warnings == ["warning: no price for openai:mystery: its cost shows as ? (set usd_per_1m_input and "
                        "usd_per_1m_output under models.openai:mystery in llmbus.yaml)"]  # once for both runs
    compared = llmbus("compare", "--task", "tiny")
    assert compared.returncode == 0, compared.stderr
    assert [line for line in compared.stderr.splitlines() if "openai:mystery" in line] == warnings
    assert all(" ? " in line for line in compared.stdout.splitlines() if line.lstrip().startswith(second["run_id"]))


def test_spend_prices_runs_as_stored(tmp_path: Path, store: Store):
    with StubServer() as stub:
        write_config({"openai:gpt-4o-mini": {"base_url": stub.base_url},
                      "openai:mystery": {"base_url": stub.base_url, "model": "stub-model"}})
        task = load_spec(marked_task(tmp_path, 4))
        priced = run_task(task, "openai:gpt-4o-mini", store)
        unknown = run_task(task, "openai:mystery", store)
    calls = list(store.iter_calls(priced))
    paid = sum(c["cost_usd"] for c in calls)
    assert paid > 0 and spend(store, [priced]).line() == f"spent ${paid:.6f} on {len(calls)} calls"
    both = spend(store, [priced, unknown])
    assert both.unknown == ["openai:mystery"] and both.line() == (
        f"spent ? on {2 * len(calls)} calls (${paid:.6f} priced, no price for openai:mystery)")


def test_local_models_are_priced_from_cpu_seconds_and_say_so(tmp_path: Path):
    default = price_of(ModelConfig(name="local:x", provider="local", gguf="x.gguf"))
    assert default.known and default.source == "default usd_per_hour 0.05"
    assert default.cost(Usage(cpu_seconds=36.0)) == pytest.approx(36.0 * 0.05 / 3600)
    path = write_config({"local:gemma-3-270m": {"usd_per_hour": 0.2}})
    configured = price_of(load_model_configs()["local:gemma-3-270m"])
    assert configured.source == f"{path}:3 usd_per_hour" and configured.usd_per_hour == 0.2


def test_a_cascade_is_priced_by_its_parts_and_unknown_with_one_unknown_part():
    configs = {"encoder:s": ModelConfig(name="encoder:s", provider="encoder", path="s"),
               "openai:mystery": ModelConfig(name="openai:mystery", provider="openai", base_url="http://h:1/v1",
                                             model="stub-model"),
               "openai:gpt-4o-mini": ModelConfig(name="openai:gpt-4o-mini", provider="openai",
                                                 base_url="http://h:1/v1")}
    cascade = ModelConfig(name="cascade:c", provider="cascade", student="encoder:s", teacher="openai:gpt-4o-mini")
    assert price_of(cascade, configs.__getitem__).known
    unknown = cascade.model_copy(update={"teacher": "openai:mystery"})
    assert not price_of(unknown, configs.__getitem__).known


def test_a_key_budget_over_an_unpriced_model_refuses_to_start(tmp_path: Path):
    write_config({"openai:mystery": {"base_url": "http://127.0.0.1:9/v1", "model": "stub-model"}})
    serve = {"models": {"chat": {"model": "openai:mystery"}},
             "keys": [{"key": "sk-a", "name": "team-a", "budget_usd": 5}]}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(serve))
    refused = llmbus("serve", "--config", str(path))
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1 and "Traceback" not in refused.stderr
    assert "keys[0] (team-a): budget_usd: openai:mystery has no price" in lines[0]
    assert "budget_unpriced: allow" in lines[0]
    from llmbus.serve.gateway import Gateway, load_serve_config

    path.write_text(yaml.safe_dump({**serve, "budget_unpriced": "allow"}))
    gateway = Gateway(load_serve_config(path), Store(str(tmp_path / "gw.db")))  # starts: the team allowed it
    try:
        run = gateway.store.get_run(gateway.run_ids["chat"])
        assert json.loads(run["price_json"])["basis"] == "unknown"
    finally:
        gateway.close()


def test_table_cost_is_the_tables_decimal_rounded_once():
    total = calc_price(TableUsage(input_tokens=1000, output_tokens=100), model_ref="gpt-4o-mini", provider_id="openai")
    assert total.total_price == Decimal("0.00021")
    price = price_of(ModelConfig(name="openai:gpt-4o-mini", provider="openai", base_url="http://127.0.0.1:1/v1"))
    assert price.cost(Usage(tokens_in=1000, tokens_out=100)) == 0.00021
