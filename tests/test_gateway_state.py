"""The gateway's shared state in the store: key windows, budget holds (and their expiry), settling."""

from __future__ import annotations

import threading
import time

from llmbus.store import Store
from llmbus.store.gateway_state import Hold, KeyLedger, Refusal


def test_a_hold_whose_process_died_lapses_at_its_expiry(store: Store):
    ledger = KeyLedger(store.engine)
    ledger.open(["team"])
    orphan = ledger.hold("team", 0.05, 0.05, ttl_s=0.3)  # its gateway dies: never settled
    assert isinstance(orphan, Hold)
    refused = ledger.hold("team", 0.05, 0.01, ttl_s=60)
    assert isinstance(refused, Refusal) and refused.kind == "budget" and refused.held_usd == 0.05
    time.sleep(0.4)
    fresh = ledger.hold("team", 0.05, 0.01, ttl_s=60)
    assert isinstance(fresh, Hold)  # the orphan's hold has lapsed
    ledger.settle(fresh, "team", 0.004)
    assert ledger.open(["team"]) == {"team": 0.004}


def test_the_per_minute_window_is_exact_under_concurrent_admissions(store: Store):
    ledger = KeyLedger(store.engine)
    ledger.open(["busy"])
    outcomes: list[Refusal | None] = []
    lock = threading.Lock()

    def admit_many() -> None:
        for _ in range(15):
            outcome = ledger.admit("busy", 40, None)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=admit_many) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refusals = [o for o in outcomes if o is not None]
    assert len(outcomes) - len(refusals) == 40 and len(refusals) == 50
    assert all(r.kind == "rate_limit" and 59 < r.retry_after_s <= 60 for r in refusals)


def test_the_async_call_retries_like_the_sync_one_and_names_the_failure(stub):
    import asyncio

    import pytest

    from llmbus.errors import ProviderError
    from llmbus.providers import Request
    from llmbus.providers.config import ModelConfig
    from llmbus.providers.openai import OpenAIProvider

    provider = OpenAIProvider(ModelConfig(name="openai:stub", provider="openai", base_url=stub.base_url,
                                          model="stub-model", max_retries=3, timeout_s=2.0))

    async def both() -> tuple[str, str]:
        retried = await provider.acomplete(Request(prompt="win a spam prize FAIL500", max_tokens=2))
        with pytest.raises(ProviderError) as failed:
            await provider.acomplete(Request(prompt="hello ALWAYS500", max_tokens=2))
        await provider.aclose()
        return retried.text, failed.value.kind

    text, kind = asyncio.run(both())
    assert text.strip() == "spam" and stub.state.attempts["win a spam prize FAIL500"] >= 3
    assert kind == "http_500"
    provider.close()
