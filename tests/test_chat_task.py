"""A task written as chat turns (`messages:`): rendering, the spec's rules, and the request every stop sends."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import write_items, write_spec
from llmbus.errors import SpecError
from llmbus.providers.openai_wire import to_payload
from llmbus.run.adapter import build_request, item_request, render_job
from llmbus.task.chat import transcript
from llmbus.task.data import Item
from llmbus.task.render import render
from llmbus.task.spec import load_spec
from test_loop import llmbus

SYSTEM = "You are a spam filter. Answer with one word: spam or ham."
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def chat_spec(path: Path, data: str = "items.jsonl", shots_as: str = "turns", **overrides: object) -> Path:
    """The tiny SMS task as chat turns: a system prompt, then the SMS as the user's turn."""
    return write_spec(path, data, prompt=None, messages=[
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "{% for ex in examples %}SMS: {{ ex.text }} -> {{ ex.label }}\n{% endfor %}"
                                    "SMS: {{ item.text }}"}],
        fewshot={"k": 2, "strategy": "fixed", "pool_fraction": 0.1, "as": shots_as}, **overrides)


def _without_none(path: Path) -> Path:
    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({k: v for k, v in spec.items() if v is not None}, sort_keys=False))
    return path


@pytest.fixture
def chat_task(tmp_path: Path) -> Path:
    write_items(tmp_path / "items.jsonl", 40)
    return _without_none(chat_spec(tmp_path / "chat.yaml"))


def test_turns_render_with_the_shots_as_turns_or_as_a_block(chat_task: Path):
    spec = load_spec(chat_task)
    examples = [{"id": "m1", "text": "see you", "label": "ham"}, {"id": "m3", "text": "win cash", "label": "spam"}]
    as_turns = render(spec, {"text": "free prize"}, examples)
    assert [t["role"] for t in as_turns.messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert as_turns.messages[1]["content"] == "SMS: see you" and as_turns.messages[2]["content"] == "ham"
    assert as_turns.messages[-1]["content"] == "SMS: free prize"  # the block loop renders nothing with turns
    assert as_turns.text == transcript(as_turns.messages) and as_turns.text.startswith(f"System: {SYSTEM}\nUser:")
    block = render(spec.model_copy(update={"fewshot": spec.fewshot.model_copy(update={"as_": "block"})}),
                   {"text": "free prize"}, examples)
    assert [t["role"] for t in block.messages] == ["system", "user"]
    assert block.messages[1]["content"] == "SMS: see you -> ham\nSMS: win cash -> spam\nSMS: free prize"


def test_a_chat_request_carries_the_turns_tools_and_response_format(chat_task: Path):
    spec = load_spec(chat_task).model_copy(update={"tools": TOOLS, "response_format": {"type": "json_object"}})
    job = render_job(spec, Item(id="m0", fields={"id": "m0", "text": "hello", "label": "ham"}, expected="ham"), [])
    request = item_request(spec, job)
    body = to_payload("gpt-x", "chat", request)
    assert body["messages"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "SMS: hello"}]
    assert body["tools"] == TOOLS and body["response_format"] == {"type": "json_object"}
    assert body["logprobs"] is True and body["top_logprobs"] == 20  # label scoring from the first answer token
    assert request.input == "hello"  # students read the raw input, not the turns
    completions = to_payload("gpt-x", "completions", request)
    assert completions["prompt"] == job.prompt == transcript(body["messages"])


def test_a_prompt_spec_keeps_its_request_and_cache_key(tmp_path: Path):
    """A plain prompt is one user turn: the same body and the same cache key as before requests held turns."""
    write_items(tmp_path / "items.jsonl", 10)
    spec = load_spec(write_spec(tmp_path / "t.yaml", "items.jsonl"))
    request = build_request(spec, "SMS: hi\nLabel:", "hi")
    assert to_payload("m", "chat", request)["messages"] == [{"role": "user", "content": "SMS: hi\nLabel:"}]
    # the key as it was computed when a Request had only these fields
    old = {"model": "m", "prompt": "SMS: hi\nLabel:", "max_tokens": 2, "temperature": 0.0, "stop": [],
           "labels": ["ham", "spam"], "json_schema": None, "input": "hi", "want_confidence": False}
    assert request.cache_key("m") == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    assert request.options() == {}


@pytest.mark.parametrize(("messages", "error"), [
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "system (and developer) turns come first"),
    ([{"role": "system", "content": "a"}], "the last turn is the user's"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "the last turn is the user's"),
    ([{"role": "robot", "content": "a"}], ".0.role: Input should be"),
])
def test_turns_that_no_chat_template_takes_are_one_error_line(tmp_path: Path, messages: list, error: str):
    path = _without_none(write_spec(tmp_path / "bad.yaml", "items.jsonl", prompt=None, messages=messages))
    with pytest.raises(SpecError, match=rf"bad.yaml:[0-9]+: messages.*{re.escape(error)}"):
        load_spec(path)


def test_prompt_and_messages_are_either_or(tmp_path: Path):
    both = write_spec(tmp_path / "both.yaml", "items.jsonl", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(SpecError, match=r"give either prompt .* or messages"):
        load_spec(both)
    turns = write_spec(tmp_path / "turns.yaml", "items.jsonl", fewshot={"k": 2, "as": "turns"})
    with pytest.raises(SpecError, match=r"fewshot\.as: turns needs a messages: spec"):
        load_spec(turns)
    bad_tool = _without_none(chat_spec(tmp_path / "tool.yaml", tools=[{"name": "x"}]))
    with pytest.raises(SpecError, match=r"tools\[0\] is not an OpenAI function schema"):
        load_spec(bad_tool)
    broken = _without_none(write_spec(tmp_path / "broken.yaml", "items.jsonl", prompt=None, messages=[
        {"role": "user", "content": "{% for x in %}"}]))
    with pytest.raises(SpecError, match=r"broken.yaml: messages\[0\].content template line 1"):
        load_spec(broken)


def test_the_spec_version_counts_turns_tools_and_response_format(chat_task: Path):
    spec = load_spec(chat_task)
    assert spec.version != spec.model_copy(update={"tools": TOOLS}).version
    assert spec.version != spec.model_copy(update={"response_format": {"type": "json_object"}}).version
    assert spec.version != spec.model_copy(update={"fewshot": spec.fewshot.model_copy(update={"as_": "block"})}).version


def test_dry_run_prints_the_turns_as_sent(chat_task: Path):
    shown = llmbus("run", str(chat_task), "--dry-run")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"[system]\n{SYSTEM}\n[user]\nSMS: ")
    as_json = json.loads(llmbus("run", str(chat_task), "--dry-run", "--json").stdout)
    assert [t["role"] for t in as_json["messages"]] == ["system", "user", "assistant", "user", "assistant", "user"]



def test_show_prints_a_chat_call_as_turns(chat_task: Path, tmp_path: Path):
    from openai_stub import StubServer
    from test_serve import write_configs

    db = str(tmp_path / "calls.db")
    with StubServer() as backend:
        write_configs(tmp_path, backend.base_url)
        run = json.loads(llmbus("run", str(chat_task), "--model", "openai:primary", "--limit", "3", "--db", db,
                                "--json").stdout)
    from llmbus.store import Store

    call = next(c for c in Store(db).iter_calls(run["run_id"]) if c["parsed"] == "ham")
    shown = llmbus("show", run["run_id"], "--item", call["item_id"], "--db", db)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"[system]\n{SYSTEM}\n[user]\nSMS: ") and "[assistant]\nham\n[parsed] \"ham\"" \
        in shown.stdout
    missing = llmbus("show", run["run_id"], "--item", "nope", "--db", db)
    assert missing.returncode == 2 and "has no item 'nope'" in missing.stderr


def test_a_flow_step_sends_turns_and_gets_tool_calls_back(stub, stub_model, store):
    from llmbus.flows.engine import FlowSettings, flow, start

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]

    @flow("chat_flow")
    def chat_flow(ctx, value):  # type: ignore[no-untyped-def]
        turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": value["text"]}]
        call = ctx.llm("tool", messages=turns, tools=tools)
        label = ctx.llm("label", messages=turns, labels=("ham", "spam"))
        return {"calls": call.tool_calls, "label": label.text}

    outcome = start(store, chat_flow, {"text": "win a spam prize"}, FlowSettings(model=stub_model))
    assert outcome.status == "done", outcome.error
    assert outcome.output["label"] == "spam"
    assert outcome.output["calls"][0]["function"]["name"] == "get_weather"
    sent = next(b for b in stub.state.bodies if "tools" in b)
    assert sent["messages"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "win a spam prize"}]
    logged = [c for run in store.list_runs() for c in store.iter_calls(run["id"])]
    assert {c["tool_calls"][0]["function"]["name"] for c in logged if c["tool_calls"]} == {"get_weather"}
    assert all(c["messages"][0]["content"] == SYSTEM for c in logged)
