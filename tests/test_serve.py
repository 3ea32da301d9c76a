"""The gateway with the official `openai` client, against OpenAI-compatible stub backends on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
import yaml

from llmbus.gateway import Gateway, load_serve_config
from llmbus.llamacpp import free_port
from llmbus.providers import Request
from llmbus.providers.local import LocalProvider
from llmbus.serve import create_app
from llmbus.store import Store
from openai_stub import StubServer


@contextmanager
def running_gateway(config_path: Path, db: Path) -> Iterator[tuple[str, Gateway]]:
    """The gateway app under uvicorn in a thread; yields its base URL."""
    gateway = Gateway(load_serve_config(config_path), Store(str(db)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(gateway), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1", gateway
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def write_configs(tmp_path: Path, primary: str, fallback: str | None = None, keys: list[dict] | None = None,
                  task: Path | None = None, timeout_s: float | None = None) -> Path:
    models = {"openai:primary": {"base_url": primary, "model": "stub-model", "timeout_s": 2.0, "max_retries": 0,
                                 "usd_per_1m_input": 1.0, "usd_per_1m_output": 2.0}}
    route: dict = {"model": "openai:primary", **({"timeout_s": timeout_s} if timeout_s else {})}
    if fallback:
        models["openai:fallback"] = {"base_url": fallback, "model": "stub-model", "max_retries": 0}
        route["fallbacks"] = ["openai:fallback"]
    (tmp_path / "llmbus.yaml").write_text(yaml.safe_dump({"models": models}))
    serve: dict = {"models": {"chat": route}, "keys": keys or []}
    if task:
        serve["models"]["sms"] = {**route, "task": str(task)}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(serve))
    return path


def test_openai_client_chat_completions_streaming_models_and_log(tmp_path: Path, tiny_task: Path):
    with StubServer() as backend:
        config = write_configs(tmp_path, backend.base_url, task=tiny_task,
                               keys=[{"key": "sk-a", "name": "team-a"}])
        with running_gateway(config, tmp_path / "gw.db") as (url, gateway):
            client = openai.OpenAI(base_url=url, api_key="sk-a")
            assert {m.id for m in client.models.list().data} == {"chat", "sms"}
            chat = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi there"}])
            assert chat.choices[0].message.content == "ham"
            text = client.completions.create(model="chat", prompt="win a free spam prize", max_tokens=4)
            assert text.choices[0].text == "spam"
            # A served task renders its own prompt around the raw input and answers with a label.
            label = client.chat.completions.create(model="sms", messages=[{"role": "user",
                                                                          "content": "win a free spam prize now"}])
            assert label.choices[0].message.content == "spam"
            assert label.model_extra["llmbus"]["confidence"] == pytest.approx(0.8 / 0.95)
            stream = client.chat.completions.create(model="chat", stream=True,
                                                    messages=[{"role": "user", "content": "are we meeting"}])
            assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == "ham"
            streamed = client.completions.create(model="chat", prompt="see you soon", stream=True, max_tokens=3)
            assert "".join(chunk.choices[0].text for chunk in streamed) == "ham"
            # Exact cache: the same request again is answered without the backend.
            calls_before = sum(backend.state.attempts.values())
            again = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi there"}])
            assert again.model_extra["llmbus"]["route"] == "cache_exact"
            assert sum(backend.state.attempts.values()) == calls_before
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=url, api_key="wrong").chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "x"}])
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
            metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
            assert 'llmbus_gateway_requests_total{model="chat",route="cache_exact",status="ok"} 1.0' in metrics
            assert httpx.get(url.removesuffix("/v1") + "/health").json()["status"] == "ok"
            rows = [c for run_id in gateway.run_ids.values() for c in gateway.store.iter_calls(run_id)]
    assert len(rows) == 6
    assert Counter(r["meta"]["route"] for r in rows) == {"backend": 5, "cache_exact": 1}
    assert all(r["meta"]["key"] == "team-a" for r in rows)


def test_rate_limit_and_budget_per_key(tmp_path: Path):
    with StubServer() as backend:
        config = write_configs(tmp_path, backend.base_url, keys=[
            {"key": "sk-slow", "name": "slow", "requests_per_minute": 2},
            {"key": "sk-poor", "name": "poor", "budget_usd": 0.0000001}])
        with running_gateway(config, tmp_path / "gw.db") as (url, _):
            slow = openai.OpenAI(base_url=url, api_key="sk-slow", max_retries=0)
            for i in range(2):
                slow.completions.create(model="chat", prompt=f"hello {i}")
            with pytest.raises(openai.RateLimitError) as limited:
                slow.completions.create(model="chat", prompt="hello 3")
            assert int(limited.value.response.headers["retry-after"]) >= 1
            poor = openai.OpenAI(base_url=url, api_key="sk-poor", max_retries=0)
            poor.completions.create(model="chat", prompt="a long enough prompt to cost something")
            with pytest.raises(openai.RateLimitError, match="budget"):
                poor.completions.create(model="chat", prompt="one more")


def test_stream_keys_and_the_route_timeout_still_apply(tmp_path: Path):
    with StubServer(slow_s=1.5) as backend:
        config = write_configs(tmp_path, backend.base_url, keys=[{"key": "sk-a", "name": "team-a"}], timeout_s=0.5)
        with running_gateway(config, tmp_path / "gw.db") as (url, gateway):
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=url, api_key="wrong").completions.create(model="chat", prompt="x", stream=True)
            client = openai.OpenAI(base_url=url, api_key="sk-a", max_retries=0)
            received = []
            with pytest.raises(openai.APIError, match=r"no answer within 0\.5s"):
                for chunk in client.completions.create(model="chat", prompt="hi STALL-MIDSTREAM", stream=True):
                    received.append(chunk.choices[0].text)
            # Nobody can answer: a plain 502 before any event, streamed or not, and a failure row each.
            for stream in (True, False):
                with pytest.raises(openai.InternalServerError, match="all backends failed") as failed:
                    client.completions.create(model="chat", prompt="hi ALWAYS500", stream=stream)
                assert failed.value.status_code == 502
            rows = list(gateway.store.iter_calls(gateway.run_ids["chat"]))
    assert received == ["ha"]
    assert rows[0]["error_kind"] == "timeout" and rows[0]["meta"]["key"] == "team-a"
    assert [r["error_kind"] for r in rows[1:]] == ["all_failed", "all_failed"]


@pytest.mark.slow
def test_load_with_backend_killed_midway_falls_back_and_recovers(tmp_path: Path):
    """2,000 requests at 32 concurrent; the primary dies after ~1/3 and comes back at ~2/3."""
    primary = StubServer()
    port = primary.httpd.server_address[1]
    with primary, StubServer() as fallback:
        config = write_configs(tmp_path, primary.base_url, fallback.base_url)
        with running_gateway(config, tmp_path / "gw.db") as (url, gateway):
            done = Counter[str]()
            lock = threading.Lock()
            revived: list[StubServer] = []

            def one(i: int) -> str:
                response = httpx.post(f"{url}/completions", json={"model": "chat", "prompt": f"message {i}"},
                                      timeout=30)
                route = response.json()["llmbus"]["route"] if response.status_code == 200 else \
                    f"http_{response.status_code}"
                with lock:
                    done[route] += 1
                    total = sum(done.values())
                if total == 700:
                    primary.__exit__()
                if total == 1400:
                    revived.append(StubServer(port=port).__enter__())
                return route

            with ThreadPoolExecutor(32) as pool:
                routes = list(pool.map(one, range(2000)))
            for server in revived:
                server.__exit__()
            rows = sum(1 for run_id in gateway.run_ids.values() for _ in gateway.store.iter_calls(run_id))
    assert len(routes) == 2000 and not [r for r in routes if r.startswith("http_")]
    assert rows == 2000  # no lost log rows
    assert done["fallback"] > 0  # fell back while the primary was down
    assert done["backend"] > 1000  # and went back to it once it answered again


def test_streaming_through_an_openai_backend_chunk_by_chunk_with_usage(tmp_path: Path):
    with StubServer() as backend:
        config = write_configs(tmp_path, backend.base_url)
        with running_gateway(config, tmp_path / "gw.db") as (url, gateway):
            client = openai.OpenAI(base_url=url, api_key="none")
            stream = client.chat.completions.create(model="chat", stream=True, stream_options={"include_usage": True},
                                                    messages=[{"role": "user", "content": "win a spam prize"}])
            chunks = list(stream)
            rows = [c for c in gateway.store.iter_calls(gateway.run_ids["chat"])]
            metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
    assert 'llmbus_gateway_time_to_first_token_seconds_count{model="chat",route="backend"} 1.0' in metrics
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == ["sp", "am"]  # the stub streams two characters at a time: the gateway passes them on
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 1
    assert len(rows) == 1 and rows[0]["raw_output"] == "spam" and rows[0]["error_kind"] is None
    assert rows[0]["meta"]["route"] == "backend" and 0 <= rows[0]["meta"]["ttft_s"] <= rows[0]["latency_s"]
    assert rows[0]["tokens_out"] == 1 and rows[0]["cost_usd"] > 0  # usage from the backend's last chunk


def test_stream_falls_back_before_the_first_token_and_fails_cleanly_after_it(tmp_path: Path):
    primary = StubServer()
    with primary, StubServer() as backend, StubServer() as spare:
        config = write_configs(tmp_path, primary.base_url, backend.base_url)
        with running_gateway(config, tmp_path / "gw.db") as (url, gateway):
            primary.__exit__()  # the primary is gone before the request: the fallback streams the answer
            client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
            streamed = client.completions.create(model="chat", prompt="see you soon", stream=True)
            assert "".join(c.choices[0].text for c in streamed) == "ham"
            fallback_rows = list(gateway.store.iter_calls(gateway.run_ids["chat"]))
        # A backend that dies after its first chunk: the client gets an error event, no fallback is tried.
        config = write_configs(tmp_path, backend.base_url, spare.base_url)
        with running_gateway(config, tmp_path / "gw2.db") as (url, gateway):
            client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
            received = []
            with pytest.raises(openai.APIError, match="stream broke"):
                for chunk in client.completions.create(model="chat", prompt="hello DIE-MIDSTREAM", stream=True):
                    received.append(chunk.choices[0].text)
            died_rows = list(gateway.store.iter_calls(gateway.run_ids["chat"]))
            metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
        assert not spare.state.attempts
    assert [r["meta"]["route"] for r in fallback_rows] == ["fallback"]
    assert received == ["ha"]
    assert len(died_rows) == 1 and died_rows[0]["error_kind"] == "connection"
    assert died_rows[0]["raw_output"] == "ha" and died_rows[0]["meta"]["route"] == "backend"
    assert 'llmbus_gateway_requests_total{model="chat",route="none",status="error"} 1.0' in metrics
    assert "llmbus_gateway_in_flight 0.0" in metrics


def test_streaming_from_the_local_model_token_by_token(tmp_path: Path):
    """The embedded Gemma through the gateway: pieces arrive while the backend is still decoding."""
    (tmp_path / "llmbus.yaml").write_text(yaml.safe_dump({"models": {"local:gemma-3-270m": {"threads": 1,
                                                                                           "parallel": 2}}}))
    serve = tmp_path / "serve.yaml"
    serve.write_text(yaml.safe_dump({"models": {"gemma": {"model": "local:gemma-3-270m"}}}))
    prompt = "A shopping list:\n1. apples\n2. bread\n3."
    with running_gateway(serve, tmp_path / "gw.db") as (url, gateway):
        client = openai.OpenAI(base_url=url, api_key="none")
        run_id = gateway.run_ids["gemma"]
        pieces, rows_at_first_piece = [], None
        for chunk in client.completions.create(model="gemma", prompt=prompt, max_tokens=48, stream=True):
            if chunk.choices[0].text:
                if rows_at_first_piece is None:
                    rows_at_first_piece = len(list(gateway.store.iter_calls(run_id)))
                pieces.append(chunk.choices[0].text)
        rows = list(gateway.store.iter_calls(run_id))
        # The same request without streaming, straight to the backend (the gateway's cache would answer it).
        direct = gateway.providers["local:gemma-3-270m"].complete(Request(prompt, max_tokens=48, input=prompt))
        cached = [c.choices[0].text for c in client.completions.create(model="gemma", prompt=prompt, max_tokens=48,
                                                                        stream=True)]
        cached_row = list(gateway.store.iter_calls(run_id))[-1]
        # A client that hangs up mid-stream: llama-server stops decoding long before max_tokens, the row stays.
        local = gateway.providers["local:gemma-3-270m"]
        assert isinstance(local, LocalProvider)
        server = local.server
        decoded_before = predicted_tokens(server.base_url)
        stream = client.completions.create(model="gemma", prompt="Once upon a time", max_tokens=400, stream=True)
        for _, _chunk in zip(range(3), stream, strict=False):
            pass
        stream.close()
        deadline = time.time() + 60
        while time.time() < deadline and (len(list(gateway.store.iter_calls(run_id))) < 3 or any(
                slot["is_processing"] for slot in httpx.get(server.base_url + "/slots").json())):
            time.sleep(0.1)
        hung_up = list(gateway.store.iter_calls(run_id))[-1]
        decoded = predicted_tokens(server.base_url) - decoded_before
    assert len(pieces) > 1
    assert rows_at_first_piece == 0  # the first piece was out before the answer was finished and logged
    assert "".join(pieces) == direct.text  # greedy: streaming changes nothing but the timing
    assert len(rows) == 1 and rows[0]["raw_output"] == direct.text and rows[0]["meta"]["route"] == "backend"
    assert rows[0]["tokens_out"] == direct.tokens_out >= len(pieces)
    assert 0 < rows[0]["meta"]["ttft_s"] < rows[0]["latency_s"] and rows[0]["cost_usd"] > 0
    assert "".join(cached) == direct.text and cached_row["meta"]["route"] == "cache_exact"
    assert hung_up["error_kind"] == "client_closed" and hung_up["raw_output"]
    assert 3 <= decoded < 400


def predicted_tokens(base_url: str) -> float:
    """Tokens a llama-server has decoded so far (its Prometheus counter)."""
    for line in httpx.get(base_url + "/metrics").text.splitlines():
        if line.startswith("llamacpp:tokens_predicted_total "):
            return float(line.split()[1])
    raise AssertionError("llama-server /metrics has no tokens_predicted_total")
