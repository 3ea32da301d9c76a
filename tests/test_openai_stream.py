"""A streamed answer is paid for even when the backend never reports usage or a finish reason: it is costed
from counted tokens, not logged as a $0 connection error; a stream that breaks is still an error."""

from __future__ import annotations

import pytest

from llmbus.errors import ProviderError
from llmbus.providers.base import Request
from llmbus.providers.config import resolve_model
from llmbus.providers.openai import OpenAIProvider
from llmbus.providers.openai_wire import CHARS_PER_TOKEN


def _stream(provider: OpenAIProvider, prompt: str) -> tuple[list[str], object]:
    pieces: list[str] = []
    generator = provider.stream(Request(prompt=prompt, max_tokens=8))
    try:
        while True:
            pieces.append(next(generator))
    except StopIteration as stop:
        return pieces, stop.value


def test_a_stream_without_usage_or_finish_reason_is_costed_from_counted_tokens(stub, stub_model: str):
    provider = OpenAIProvider(resolve_model(stub_model))  # $1 per 1M input tokens, $2 per 1M output
    try:
        prompt = "Say something NO-FINISH"
        pieces, completion = _stream(provider, prompt)
        assert "".join(pieces) == completion.text == "ham" and len(pieces) == 2
        assert completion.tokens_out == 2 and completion.tokens_in == -(-len(prompt) // CHARS_PER_TOKEN)
        assert completion.cost_usd == pytest.approx((completion.tokens_in * 1.0 + 2 * 2.0) / 1e6)
        assert completion.extra == {"usage": "counted", "finish_reason": None}
        _, reported = _stream(provider, "Say something")  # a backend that reports usage keeps its figures
        assert "usage" not in reported.extra and reported.tokens_out == 1
        with pytest.raises(ProviderError, match="stream broke"):
            _stream(provider, "Say something DIE-MIDSTREAM")
    finally:
        provider.close()
