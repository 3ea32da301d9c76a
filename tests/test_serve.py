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
import sqlalchemy as sa
import uvicorn
import yaml

from llmbus.errors import SpecError
from llmbus.providers import Request
from llmbus.providers.llamacpp import free_port
from llmbus.providers.local import LocalProvider
from llmbus.serve.app import create_app
from llmbus.serve.gateway import Gateway, load_serve_config
from llmbus.store import CallRecord, Store, now
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


def logged(gateway: Gateway) -> Store:
    """The gateway's store once the call-log rows queued so far are written (they are written in batches)."""
    gateway.calls.flush()
    return gateway.store


def write_configs(tmp_path: Path, primary: str, fallback: str | None = None, keys: list[dict] | None = None,
                  task: Path | None = None, timeout_s: float | None = None, prices: tuple[float, float] = (1.0, 2.0),
                  extra: dict | None = None) -> Path:
    """llmbus.yaml with the stub backends and serve.yaml serving them as `chat` (and the task as `sms`);
    `prices` are $ per 1M input and output tokens, `extra` adds top-level serve.yaml fields."""
    models = {"openai:primary": {"base_url": primary, "model": "stub-model", "timeout_s": 2.0, "max_retries": 0,
                                 "usd_per_1m_input": prices[0], "usd_per_1m_output": prices[1]}}
    route: dict = {"model": "openai:primary", **({"timeout_s": timeout_s} if timeout_s else {})}
    if fallback:
        models["openai:fallback"] = {"base_url": fallback, "model": "stub-model", "max_retries": 0}
        route["fallbacks"] = ["openai:fallback"]
    (tmp_path / "llmbus.yaml").write_text(yaml.safe_dump({"models": models}))
    serve: dict = {"models": {"chat": route}, "keys": keys or [], **(extra or {})}
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
            rows = [c for run_id in gateway.run_ids.values() for c in logged(gateway).iter_calls(run_id)]
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
            rows = list(logged(gateway).iter_calls(gateway.run_ids["chat"]))
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
            rows = sum(1 for run_id in gateway.run_ids.values() for _ in logged(gateway).iter_calls(run_id))
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
            rows = [c for c in logged(gateway).iter_calls(gateway.run_ids["chat"])]
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
            fallback_rows = list(logged(gateway).iter_calls(gateway.run_ids["chat"]))
        # A backend that dies after its first chunk: the client gets an error event, no fallback is tried.
        config = write_configs(tmp_path, backend.base_url, spare.base_url)
        with running_gateway(config, tmp_path / "gw2.db") as (url, gateway):
            client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
            received = []
            with pytest.raises(openai.APIError, match="stream broke"):
                for chunk in client.completions.create(model="chat", prompt="hello DIE-MIDSTREAM", stream=True):
                    received.append(chunk.choices[0].text)
            died_rows = list(logged(gateway).iter_calls(gateway.run_ids["chat"]))
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
                    rows_at_first_piece = len(list(logged(gateway).iter_calls(run_id)))
                pieces.append(chunk.choices[0].text)
        rows = list(logged(gateway).iter_calls(run_id))
        # The same request without streaming, straight to the backend (the gateway's cache would answer it).
        direct = gateway.providers["local:gemma-3-270m"].complete(Request(prompt, max_tokens=48, input=prompt))
        cached = [c.choices[0].text for c in client.completions.create(model="gemma", prompt=prompt, max_tokens=48,
                                                                        stream=True)]
        cached_row = list(logged(gateway).iter_calls(run_id))[-1]
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
        while time.time() < deadline and (len(list(logged(gateway).iter_calls(run_id))) < 3 or any(
                slot["is_processing"] for slot in httpx.get(server.base_url + "/slots").json())):
            time.sleep(0.1)
        hung_up = list(logged(gateway).iter_calls(run_id))[-1]
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


# One output token at $10,000 per 1M tokens (input free): every stub answer costs exactly this.
PER_CALL_USD = 0.01


def post(url: str, path: str, body: dict, key: str | None = None, **headers: str) -> httpx.Response:
    """One POST to the gateway (httpx: the openai client would refuse to send the malformed bodies)."""
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/{path}", json=body, headers={**auth, **headers}, timeout=30)


def refused_rows(store: Store) -> list[dict]:
    """The rows of every `gateway:refused` run in the store."""
    return [row for run in store.list_runs("gateway:refused") for row in store.iter_calls(run["id"])]


def test_budget_holds_each_estimate_so_50_concurrent_requests_cannot_overspend(tmp_path: Path):
    with StubServer(delay_s=0.3) as backend:  # slow enough that all 50 are in flight together
        config = write_configs(tmp_path, backend.base_url, prices=(0.0, 10_000.0), keys=[
            {"key": "sk-b", "name": "team-b", "budget_usd": 0.05}, {"key": "sk-c", "name": "team-c",
                                                                     "budget_usd": 0.05}])
        with running_gateway(config, tmp_path / "gw.db") as (url, gateway):
            def one(i: int) -> httpx.Response:
                return post(url, "completions", {"model": "chat", "prompt": f"message {i}", "max_tokens": 1,
                                                 "stream": i % 2 == 1}, "sk-b")

            with ThreadPoolExecutor(50) as pool:
                responses = list(pool.map(one, range(50)))
            late = one(50)
            # Holds settle to the real cost, streamed or not: estimates of 3 tokens for 1-token answers let 5 in.
            sequential = [post(url, "completions", {"model": "chat", "prompt": f"note {i}", "max_tokens": 3,
                                                    "stream": i % 2 == 1}, "sk-c").status_code for i in range(6)]
            rows = list(logged(gateway).iter_calls(gateway.run_ids["chat"]))
            refusals = refused_rows(logged(gateway))
            metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
    answered = [r for r in responses if r.status_code == 200]
    spent = sum(r["cost_usd"] for r in rows if r["meta"]["key"] == "team-b")
    assert spent == pytest.approx(PER_CALL_USD * len(answered))
    assert 0.05 - 1e-9 <= spent <= 0.05 + PER_CALL_USD + 1e-9  # used up, overshot by at most one request
    assert {r.status_code for r in responses if r.status_code != 200} == {429}
    assert all("budget of $0.05 for key team-b" in r.json()["error"]["message"] for r in responses
               if r.status_code == 429)
    assert late.status_code == 429 and late.json()["error"]["code"] == "budget_exceeded"
    assert sequential == [200] * 5 + [429]
    refused_b = 50 - len(answered) + 1
    assert Counter(r["error_kind"] for r in refusals) == {"budget_exceeded": refused_b + 1}
    assert f'llmbus_gateway_refused_total{{kind="budget_exceeded"}} {refused_b + 1}.0' in metrics


def test_key_spend_is_kept_per_key_name_and_survives_a_restart(tmp_path: Path):
    with StubServer() as backend:
        config = write_configs(tmp_path, backend.base_url, prices=(0.0, 10_000.0), keys=[
            {"key": "sk-dash", "name": "team-a"}, {"key": "sk-under", "name": "team_a", "budget_usd": 0.015}])
        db = tmp_path / "gw.db"
        with running_gateway(config, db) as (url, _):
            for i in range(3):
                assert post(url, "completions", {"model": "chat", "prompt": f"a {i}", "max_tokens": 1},
                            "sk-dash").status_code == 200
            assert post(url, "completions", {"model": "chat", "prompt": "b 0", "max_tokens": 1},
                        "sk-under").status_code == 200
        with running_gateway(config, db) as (url, _):
            # team_a has spent $0.01 of $0.015 (team-a's $0.03 is not its spend): one more request, then 429.
            codes = [post(url, "completions", {"model": "chat", "prompt": f"b {i}", "max_tokens": 1},
                          "sk-under").status_code for i in (1, 2)]
    assert codes == [200, 429]
    assert Store(str(db)).open_key_spend(["team-a", "team_a"]) == pytest.approx({"team-a": 0.03, "team_a": 0.02})


def test_migration_008_backfills_key_spend_from_the_gateway_call_log(tmp_path: Path):
    db = str(tmp_path / "old.db")
    store = Store(db)
    with store.engine.begin() as conn:  # as a database made before 008
        conn.execute(sa.text("DROP TABLE key_spend"))
        conn.execute(sa.text("DELETE FROM migrations WHERE name = '008_key_spend'"))
    for task in ("gateway:chat", "tiny"):
        run_id = store.create_run(task=task, task_path="", spec_version="-", spec_json="{}", model="m",
                                  metric="none", n_planned=0, concurrency=0)
        for i, (key, cost) in enumerate([("team_a", 0.25), ("team-a", 1.0), ("team_a", 0.5), (None, 9.0)]):
            store.record_call(CallRecord(run_id=run_id, task=task, spec_version="-", item_id=str(i), model="m",
                                         prompt="p", started_at=now(), finished_at=now(), cost_usd=cost,
                                         meta={"route": "backend", "key": key}))
    store.close()
    migrated = Store(db)
    assert migrated.open_key_spend(["team_a", "team-a", "new"]) == {"team_a": 0.75, "team-a": 1.0, "new": 0.0}


BAD_BODIES = [
    ("chat/completions", {"model": "chat", "messages": "hello"}, "messages", "Invalid type for 'messages': "
     "expected an array of message objects, but got a string instead."),
    ("chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "abc"},
     "max_tokens", "Invalid type for 'max_tokens': expected an integer, but got a string instead."),
    ("chat/completions", {"model": "chat", "messages": [{"role": "user", "content": 5}]}, "messages.0.content",
     "Invalid type for 'messages.0.content': expected a string or an array of content parts, but got an integer "
     "instead."),
    ("completions", {"model": "chat", "prompt": "hi", "stop": 5}, "stop",
     "Invalid type for 'stop': expected a string or an array of strings, but got an integer instead."),
    ("completions", {"model": "chat", "prompt": "hi", "stream": True, "stream_options": "yes"}, "stream_options",
     "Invalid type for 'stream_options': expected an object, but got a string instead."),
    ("completions", {"model": "chat", "prompt": [1, 2, 3]}, "prompt",
     "Invalid type for 'prompt': expected a string or an array of strings, but got an array of integers instead."),
    ("completions", {"model": "chat"}, "prompt", "Missing required parameter: 'prompt'."),
    ("completions", {"model": "chat", "prompt": "hi", "max_tokens": 0}, "max_tokens",
     "Invalid value for 'max_tokens': Input should be greater than or equal to 1."),
]


def test_bad_requests_are_400s_in_openai_shape_and_every_refusal_is_counted_and_logged(tmp_path: Path):
    with StubServer() as backend:
        config = write_configs(tmp_path, backend.base_url, keys=[
            {"key": "sk-a", "name": "team-a"}, {"key": "sk-slow", "name": "slow", "requests_per_minute": 1}])
        with running_gateway(config, tmp_path / "gw.db") as (url, gateway):
            bad = [post(url, path, body, "sk-a") for path, body, _, _ in BAD_BODIES]
            unparsable = httpx.post(f"{url}/completions", content=b"{not json", timeout=30,
                                    headers={"Authorization": "Bearer sk-a", "Content-Type": "application/json"})
            not_an_object = post(url, "completions", [1, 2], "sk-a")  # type: ignore[arg-type]
            with pytest.raises(openai.BadRequestError, match="array of integers"):
                openai.OpenAI(base_url=url, api_key="sk-a", max_retries=0).completions.create(model="chat",
                                                                                              prompt=[1, 2, 3])
            # The scheme is case-insensitive; a bad key is 401 before the body is looked at.
            schemes = [post(url, "completions", {"model": "chat", "prompt": "hi"}, Authorization=f"{s} sk-a")
                       .status_code for s in ("bearer", "BEARER", "Bearer")]
            unknown_key = post(url, "completions", {"model": "chat", "messages": "x"}, "sk-wrong")
            garbage_no_key = httpx.post(f"{url}/completions", content=b"[", timeout=30,
                                        headers={"Content-Type": "application/json"})
            unknown_model = post(url, "completions", {"model": "nope", "prompt": "what is this"}, "sk-a")
            limited = [post(url, "completions", {"model": "chat", "prompt": f"slow {i}"}, "sk-slow").status_code
                       for i in range(2)]
            refusals = refused_rows(logged(gateway))
            answered = list(logged(gateway).iter_calls(gateway.run_ids["chat"]))
            metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
    for response, (_, _, param, message) in zip(bad, BAD_BODIES, strict=True):
        assert response.status_code == 400, response.text
        assert response.json() == {"error": {"message": message, "type": "invalid_request_error", "param": param,
                                             "code": "invalid_request"}}
    assert unparsable.status_code == not_an_object.status_code == 400
    assert unparsable.json()["error"]["code"] == "invalid_request"
    assert schemes == [200, 200, 200]
    assert unknown_key.status_code == garbage_no_key.status_code == 401
    assert unknown_key.json()["error"] == {"message": "missing or unknown API key", "type": "authentication_error",
                                           "param": None, "code": "invalid_api_key"}
    assert unknown_model.status_code == 404 and unknown_model.json()["error"]["code"] == "model_not_found"
    assert limited == [200, 429]
    # the scheme checks (the last two from the cache) and the first "slow" request; a missing prompt is no call
    assert Counter(r["meta"]["route"] for r in answered) == {"backend": 2, "cache_exact": 2}
    assert backend.state.attempts[""] == 0
    kinds = {"invalid_request": len(BAD_BODIES) + 3, "invalid_api_key": 2, "model_not_found": 1,
             "rate_limit_exceeded": 1}
    assert Counter(r["error_kind"] for r in refusals) == kinds
    for kind, count in kinds.items():
        assert f'llmbus_gateway_refused_total{{kind="{kind}"}} {count}.0' in metrics
    assert all(r["meta"]["route"] == "refused" for r in refusals)
    missing_prompt = next(r for r in refusals if r["error"] == "Missing required parameter: 'prompt'.")
    assert missing_prompt["meta"] == {"route": "refused", "key": "team-a", "status": 400, "param": "prompt"}
    nope = next(r for r in refusals if r["error_kind"] == "model_not_found")
    assert nope["model"] == "nope" and nope["prompt"] == "what is this"
    assert {r["meta"]["key"] for r in refusals if r["error_kind"] == "invalid_api_key"} == {None}


def test_an_open_gateway_warns_and_metrics_can_need_their_own_key(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch):
    with StubServer() as backend:
        with running_gateway(write_configs(tmp_path, backend.base_url), tmp_path / "open.db"):
            pass
        warned = capsys.readouterr().err.splitlines()
        monkeypatch.setenv("TEST_METRICS_KEY", "m-secret")
        config = write_configs(tmp_path, backend.base_url, keys=[{"key": "sk-a", "name": "team-a"}],
                               extra={"metrics_key": "env:TEST_METRICS_KEY"})
        with running_gateway(config, tmp_path / "gw.db") as (url, _):
            scrape = url.removesuffix("/v1") + "/metrics"
            refused = [httpx.get(scrape, headers=h).status_code for h in ({}, {"Authorization": "Bearer sk-a"})]
            scraped = httpx.get(scrape, headers={"Authorization": "bearer m-secret"})
        assert not [line for line in capsys.readouterr().err.splitlines() if "open" in line]
        monkeypatch.delenv("TEST_METRICS_KEY")
        with pytest.raises(SpecError, match="metrics_key: environment variable TEST_METRICS_KEY is not set"):
            Gateway(load_serve_config(config), Store(str(tmp_path / "x.db")))
        # An unset key variable would have opened the gateway to everyone: it is an error instead.
        config = write_configs(tmp_path, backend.base_url, keys=[{"key": "env:TEST_TEAM_KEY", "name": "team-a"}])
        with pytest.raises(SpecError, match=r"keys\[0\] \(team-a\): environment variable TEST_TEAM_KEY is not set"):
            Gateway(load_serve_config(config), Store(str(tmp_path / "y.db")))
    assert [line for line in warned if "warning" in line] == [
        "llmbus gateway: warning: serve.yaml has no `keys:`, so the gateway is open to anyone who can reach it"]
    assert refused == [401, 401]
    assert scraped.status_code == 200
    assert 'llmbus_gateway_refused_total{kind="invalid_api_key"} 2.0' in scraped.text


def test_log_prompt_chars_caps_the_prompts_the_call_log_keeps(tmp_path: Path):
    big = "lorem ipsum dolor " * 300_000  # 5.4 MB
    with StubServer() as backend:
        config = write_configs(tmp_path, backend.base_url, extra={"log_prompt_chars": 2000})
        db = tmp_path / "gw.db"
        with running_gateway(config, db) as (url, gateway):
            codes = [post(url, "completions", {"model": "chat", "prompt": big, "max_tokens": 1}).status_code
                     for _ in range(3)]
            refused = post(url, "completions", {"model": "nope", "prompt": big}).status_code
            rows = list(logged(gateway).iter_calls(gateway.run_ids["chat"])) + refused_rows(logged(gateway))
            with gateway.store.engine.connect() as conn:
                stored = conn.scalar(sa.text("SELECT sum(length(prompt)) FROM calls"))
        size = sum(path.stat().st_size for path in tmp_path.glob("gw.db*"))
    assert codes == [200, 200, 200] and refused == 404
    assert [r["meta"]["route"] for r in rows] == ["backend", "cache_exact", "cache_exact", "refused"]
    assert all(r["prompt"] == big[:2000] and r["meta"]["prompt_chars"] == len(big) for r in rows)
    assert stored == 4 * 2000
    assert size < 1_000_000  # four uncapped rows would be over 21 MB
