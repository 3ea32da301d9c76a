"""The `litellm:` plugin (src/llmbus_litellm, registered by an entry point like any third party's): LiteLLM's SDK
on its OpenAI-compatible route to the 127.0.0.1 stub — chat turns, label probabilities from logprobs, usage
priced by llmbus's prices, failures as llmbus's error kinds, a whole run through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from conftest import write_items, write_spec
from llmbus.errors import MissingExtra, ModelError, ProviderError
from llmbus.providers import Request, open_provider, price_of, resolve_model, usage_of
from llmbus.providers.prices import table_cost
from llmbus_litellm import LiteLLMConfig
from openai_stub import StubServer


@pytest.fixture
def models(stub: StubServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """`litellm:stub` (priced in llmbus.yaml), `litellm:mini` (a model the price table lists) and `openai:stub`,
    all on the stub."""
    monkeypatch.setenv("STUB_KEY", "sk-stub")
    through = {"api_base": stub.base_url, "api_key_env": "STUB_KEY", "max_retries": 0, "timeout_s": 5}
    config = {"models": {
        "litellm:stub": {"model": "openai/stub-model", **through, "usd_per_1m_input": 1.0, "usd_per_1m_output": 2.0},
        "litellm:mini": {"model": "openai/gpt-4o-mini", **through},
        "openai:stub": {"base_url": stub.base_url, "model": "stub-model", "max_retries": 0}}}
    Path(os.environ["LLMBUS_CONFIG"]).write_text(yaml.safe_dump(config))
    return {"litellm": "litellm:stub", "openai": "openai:stub", "table": "litellm:mini"}


SHOTS = "SMS: free prize, call now\nLabel: spam\nSMS: lunch at one?\nLabel: ham\n"


def test_labels_get_the_probabilities_the_openai_provider_gets(models: dict[str, str], stub: StubServer):
    request = Request(SHOTS + "SMS: win a free spam prize UNSURE\nLabel:", labels=("ham", "spam"))
    with closing(open_provider(models["litellm"])) as litellm, closing(open_provider(models["openai"])) as direct:
        through_litellm, plain = litellm.complete(request), direct.complete(request)
    assert through_litellm.text == plain.text == "spam"
    assert through_litellm.label_probs == pytest.approx(plain.label_probs)
    assert 0.2 < through_litellm.label_probs["spam"] < 0.9  # UNSURE: the stub's logprobs, not a flat 1.0
    sent = stub.state.bodies[0]
    assert sent["model"] == "stub-model" and sent["logprobs"] is True and sent["top_logprobs"] == 20


def test_chat_turns_arrive_as_sent(models: dict[str, str], stub: StubServer):
    turns = ({"role": "system", "content": "Answer spam or ham."}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "ham"}, {"role": "user", "content": "win a spam prize"})
    with closing(open_provider(models["litellm"])) as provider:
        answer = provider.complete(Request(messages=turns, max_tokens=3, temperature=None))
    assert answer.text == "spam" and answer.finish_reason == "stop"
    assert stub.state.bodies[-1]["messages"] == list(turns) and stub.state.bodies[-1]["max_tokens"] == 3
    assert "temperature" not in stub.state.bodies[-1]  # a field not given is not sent


def test_usage_is_priced_by_llmbus_prices(models: dict[str, str]):
    request = Request("see you at lunch CACHED REASONING", max_tokens=20)
    with closing(open_provider(models["litellm"])) as configured, closing(open_provider(models["table"])) as listed:
        own, table = configured.complete(request), listed.complete(request)
    assert own.tokens_in > 0 and own.tokens_cached == own.tokens_in // 2 and own.tokens_reasoning == 7
    price = price_of(resolve_model(models["litellm"]))
    assert "llmbus.yaml:" in price.source and own.cost_usd == pytest.approx(price.cost(usage_of(own)))
    assert own.cost_usd == pytest.approx(((own.tokens_in * 1.0) + own.tokens_out * 2.0) / 1e6)
    listed_price = price_of(resolve_model(models["table"]))
    assert listed_price.table == ("openai", "gpt-4o-mini")  # LiteLLM's provider prefix is not the model's name
    assert table.cost_usd > 0
    assert table.cost_usd == pytest.approx(table_cost(("openai", "gpt-4o-mini"), usage_of(table)))


def test_a_failing_backend_is_a_provider_error_of_llmbus_kinds(models: dict[str, str]):
    with closing(open_provider(models["litellm"])) as provider, pytest.raises(ProviderError) as error:
        provider.complete(Request("see you ALWAYS500"))
    assert error.value.kind == "http_500" and str(error.value).startswith("litellm:stub: ")
    unset = LiteLLMConfig(name="litellm:x", model="openai/x", api_key_env="LLMBUS_TEST_UNSET_KEY")
    with closing(open_provider(unset)) as provider, pytest.raises(ModelError, match=r"LLMBUS_TEST_UNSET_KEY is not"):
        provider.check()


def test_an_unnamed_reference_is_litellms_model_name():
    config = resolve_model("litellm:anthropic/claude-3-5-haiku-20241022")
    assert isinstance(config, LiteLLMConfig) and config.litellm_model == "anthropic/claude-3-5-haiku-20241022"
    assert price_of(config).table is not None and price_of(config).table[0] == "anthropic"


def test_without_the_package_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "litellm", None)  # as if it were not installed
    with pytest.raises(MissingExtra, match=r"pip install 'llmbus\[litellm\]'"):
        open_provider("litellm:openai/gpt-4o-mini")


def test_a_task_runs_on_a_litellm_model_through_the_cli(models: dict[str, str], tmp_path: Path):
    write_items(tmp_path / "items.jsonl", 20)
    task = write_spec(tmp_path / "task.yaml", "items.jsonl")
    done = subprocess.run([sys.executable, "-m", "llmbus.cli", "run", str(task), "-m", models["litellm"], "--json"],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    answered = json.loads(done.stdout)
    assert answered["errors"] == 0 and answered["items"] > 10 and answered["value"] == 1.0
    assert answered["cost_usd"] > 0
