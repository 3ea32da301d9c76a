"""A classify task written as chat turns with a system prompt rides every stop — run, eval, optimize, distill,
serve, accept — on the 127.0.0.1 stub (which answers spam exactly when the SMS says "spam") and on a real
instruct model, SmolLM2-135M-Instruct, served by llama-server through its own chat template."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
import yaml

from conftest import write_items
from llmbus.store import Store
from openai_stub import StubServer
from test_chat_compat import smollm2_gguf
from test_chat_task import SYSTEM, _without_none, chat_spec
from test_loop import llmbus
from test_serve import running_gateway, write_configs

pytestmark = pytest.mark.slow


def _ok(result, *needles: str) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == 0, result.stderr + result.stdout
    for needle in needles:
        assert needle in result.stdout, result.stdout
    return str(result.stdout)


def test_a_chat_task_rides_every_stop_on_the_stub(tmp_path: Path):
    write_items(tmp_path / "items.jsonl", 160)
    task = _without_none(chat_spec(tmp_path / "chat.yaml"))
    db = str(tmp_path / "calls.db")
    with StubServer() as backend:
        config = write_configs(tmp_path, backend.base_url, task=task)
        run = json.loads(_ok(llmbus("run", str(task), "--model", "openai:primary", "--limit", "120", "--db", db,
                                    "--json")))
        sent = backend.state.bodies[-1]
        assert sent["messages"][0] == {"role": "system", "content": SYSTEM}
        assert [t["role"] for t in sent["messages"]] == ["system", "user", "assistant", "user", "assistant", "user"]
        assert run["items"] == 120 and run["errors"] == 0 and run["value"] == 1.0
        calls = list(Store(db).iter_calls(run["run_id"]))
        assert calls[0]["messages"] == sent["messages"] or calls[0]["messages"][0]["content"] == SYSTEM
        assert calls[0]["prompt"].startswith(f"System: {SYSTEM}\nUser: ")
        _ok(llmbus("eval", run["run_id"], "--db", db), "accuracy")

        optimized = json.loads(_ok(llmbus("optimize", str(task), "--model", "openai:primary", "--budget", "300",
                                          "--confirm", "30", "--db", db, "--json", "-o",
                                          str(tmp_path / "chat.opt.yaml"))))
        tried = {c["candidate"] for c in optimized["candidates"]}
        assert "input spec" in tried and any("shots as block" in name for name in tried), tried
        assert "messages" in yaml.safe_load((tmp_path / "chat.opt.yaml").read_text())

        _ok(llmbus("distill", str(task), "--teacher", run["run_id"], "--epochs", "1", "--out",
                   str(tmp_path / "distilled"), "--db", db), "student")

        with running_gateway(config, Path(db)) as (url, gateway):
            client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
            texts = [f"fresh message {i}{' spam' if i % 3 == 0 else ''}" for i in range(30)]
            answers = [client.chat.completions.create(model="sms", messages=[{"role": "user", "content": t}])
                       .choices[0].message.content for t in texts]
            served = list(gateway.store.iter_calls(gateway.run_ids["sms"]))
        assert answers == ["spam" if "spam" in t else "ham" for t in texts]
        assert backend.state.bodies[-1]["messages"][0]["content"] == SYSTEM  # the task's turns, not a transcript
        assert served[0]["messages"][0] == {"role": "system", "content": SYSTEM}
        assert served[0]["meta"]["input"] in texts

        accepted = json.loads(llmbus("accept", "encoder:tiny-student", "--against", "sms", "--max-drop", "0.3",
                                     "--db", db, "--json").stdout)
        assert accepted["n"] == 30 and accepted["model"] == "encoder:tiny-student"


def test_a_chat_task_on_an_instruct_model_scores_labels_after_its_chat_template(tmp_path: Path):
    """SmolLM2-Instruct as `local:` (its GGUF carries a chat template): labels are scored as the assistant's
    answer after the template, and a served chat route passes the body through llama-server's chat endpoint."""
    write_items(tmp_path / "items.jsonl", 60)
    task = _without_none(chat_spec(tmp_path / "chat.yaml"))
    model = f"local:{smollm2_gguf()}"
    db = str(tmp_path / "calls.db")
    run = json.loads(_ok(llmbus("run", str(task), "--model", model, "--limit", "24", "--concurrency", "2",
                                "--db", db, "--json")))
    assert run["items"] == 24 and run["errors"] == 0
    calls = list(Store(db).iter_calls(run["run_id"]))
    assert all(c["parsed"] in ("ham", "spam") and abs(sum(c["label_probs"].values()) - 1) < 1e-6 for c in calls)
    assert all(c["messages"][0]["content"] == SYSTEM for c in calls)
    _ok(llmbus("eval", run["run_id"], "--db", db), "accuracy")

    (tmp_path / "serve.yaml").write_text(yaml.safe_dump({"models": {
        "smol": {"model": model}, "sms": {"model": model, "task": str(task)}}}))
    with running_gateway(tmp_path / "serve.yaml", Path(db)) as (url, gateway):
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        chat = client.chat.completions.with_raw_response.create(model="smol", max_tokens=8, temperature=0, messages=[
            {"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Colour of grass?"}])
        body = chat.http_response.json()
        label = client.chat.completions.create(model="sms", messages=[{"role": "user", "content": "win cash now"}])
        rows = list(gateway.store.iter_calls(gateway.run_ids["smol"]))
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
    assert "timings" in body  # llama-server's own response, relayed as it came
    assert rows[0]["messages"][0] == {"role": "system", "content": "Answer in one word."}
    assert label.choices[0].message.content in ("ham", "spam")
