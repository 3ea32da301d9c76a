"""The review queue: claims with a lease, one decision per item, JSON edits validated, approved answers
join the example pool; and the web UI in a real browser (Debian chromium + Playwright), where a decision
resumes the waiting flow run."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from llmbus.errors import InvalidEdit, ReviewConflict
from llmbus.flows.engine import load_flow, start
from llmbus.flows.icl import ExamplePool
from llmbus.flows.log import FlowLog
from llmbus.flows.review import ReviewQueue
from llmbus.providers.llamacpp import free_port
from llmbus.store import Store
from llmbus.web.review_web import create_app, parse_reviewers

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}

FLOW_FILE = '''
from llmbus.flows.engine import flow

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}

def draft(question: str) -> str:
    return '{"answer": "maybe reinstall everything"}'

@flow("ask_a_human")
def ask(ctx, value):
    text = ctx.tool("draft", draft, question=value["question"])
    decision = ctx.review("review", {"question": value["question"], "draft": text,
                                     "reasons": ["tier 1: not in the sources: reinstall"],
                                     "sources": [{"doc": "net#1", "text": "Restart your router."}],
                                     "pool": "support", "pool_text": value["question"]}, SCHEMA)
    return {"answer": decision.answer, "action": decision.action, "by": decision.reviewer}
'''


def queued_item(store: Store, run_id: str = "r1") -> dict:
    with store.engine.begin() as conn:
        from llmbus.store import now
        from llmbus.store.schema import flow_runs

        conn.execute(flow_runs.insert().values(id=run_id, flow="f", flow_path="", input_json="{}",
                                               settings_json="{}", status="waiting_review", created_at=now(),
                                               updated_at=now()))
    return ReviewQueue(store).create(run_id, "review", {"question": "internet down?", "draft": '{"answer": "x"}',
                                                        "pool": "support"}, SCHEMA)


def test_claims_and_decisions_never_double_handle(store: Store):
    queue = ReviewQueue(store, lease_s=600)
    item = queued_item(store)
    queue.claim(item["id"], "alice")
    with pytest.raises(ReviewConflict, match="being reviewed by alice"):
        queue.claim(item["id"], "bob")
    with pytest.raises(ReviewConflict, match="being reviewed by alice"):
        queue.decide(item["id"], "bob", "approve")
    queue.decide(item["id"], "alice", "approve", comment="fine")
    with pytest.raises(ReviewConflict, match="already approved by alice"):
        queue.decide(item["id"], "alice", "reject")
    assert queue.get(item["id"])["status"] == "approved" and queue.items() == []


def test_expired_lease_frees_the_item(store: Store):
    queue = ReviewQueue(store, lease_s=0.2)
    item = queued_item(store)
    queue.claim(item["id"], "alice")
    time.sleep(0.3)
    assert queue.claim(item["id"], "bob")["claimed_by"] == "bob"


def test_invalid_json_edit_is_refused_and_nothing_is_written(store: Store):
    queue = ReviewQueue(store)
    item = queued_item(store)
    with pytest.raises(InvalidEdit, match="must be JSON"):
        queue.decide(item["id"], "alice", "edit", answer='{"answer": "unterminated')
    with pytest.raises(InvalidEdit, match="breaks the schema"):
        queue.decide(item["id"], "alice", "edit", answer='{"text": "no answer key"}')
    assert queue.get(item["id"])["status"] == "pending"


def test_edited_answers_join_the_example_pool_at_once(store: Store):
    queue = ReviewQueue(store)
    item = queued_item(store)
    assert ExamplePool(store, "support").size() == 0
    queue.decide(item["id"], "alice", "edit", answer='{"answer": "restart the router"}')
    [example] = ExamplePool(store, "support").nearest("my internet is down", k=3)
    assert example["answer"] == '{"answer": "restart the router"}' and example["origin"] == f"review:{item['id']}"


def test_reviewer_tokens_are_parsed_strictly():
    assert parse_reviewers(["alice:secret-token-1"]) == {"secret-token-1": "alice"}
    with pytest.raises(Exception, match="NAME:TOKEN"):
        parse_reviewers(["alice"])


@pytest.fixture
def review_server(store: Store) -> Iterator[str]:
    tokens = parse_reviewers(["alice:alice-token-123", "bob:bob-token-4567"])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store, tokens), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.mark.slow
def test_a_decision_in_the_browser_resumes_the_flow(tmp_path: Path, store: Store, review_server: str,
                                                     browser: Any):
    from playwright.sync_api import expect

    flow_file = tmp_path / "ask.py"
    flow_file.write_text(FLOW_FILE)
    outcome = start(store, load_flow(flow_file), {"question": "My internet is down"})
    assert outcome.status == "waiting_review"
    alice, bob = browser.new_page(), browser.new_context().new_page()
    alice.goto(review_server + "/")
    expect(alice.locator("#token")).to_be_visible()  # not signed in: the login page
    alice.fill("#token", "wrong-token-000")
    alice.click("text=Sign in")
    expect(alice.locator(".error")).to_have_text("unknown token")
    alice.fill("#token", "alice-token-123")
    alice.click("text=Sign in")
    expect(alice.locator("#reviewer")).to_have_text("alice")
    expect(alice.locator("#pending")).to_contain_text("My internet is down")
    alice.click("#pending a")
    expect(alice.locator("#draft")).to_have_text('{"answer": "maybe reinstall everything"}')
    expect(alice.locator(".source")).to_contain_text("Restart your router.")
    expect(alice.locator(".reason")).to_contain_text("not in the sources")

    # A second reviewer opening the same item is told who has it, and gets no form.
    bob.goto(review_server + "/login")
    bob.fill("#token", "bob-token-4567")
    bob.click("text=Sign in")
    bob.goto(alice.url)
    expect(bob.locator("#error")).to_contain_text("being reviewed by alice")
    expect(bob.locator("#answer")).to_have_count(0)

    # An edit into invalid JSON is refused with the reason; the typed text is still there.
    alice.fill("#answer", '{"answer": "Restart your router"')
    alice.fill("#comment", "grounded in the source")
    alice.click("text=Save edited answer")
    expect(alice.locator("#error")).to_contain_text("must be JSON")
    expect(alice.locator("#answer")).to_have_value('{"answer": "Restart your router"')
    assert FlowLog(store).get_run(outcome.run_id)["status"] == "waiting_review"

    alice.fill("#answer", '{"answer": "Restart your router"}')
    alice.click("text=Save edited answer")
    expect(alice.locator(".notice")).to_contain_text(f"flow run {outcome.run_id} resumes")

    deadline = time.time() + 30
    while FlowLog(store).get_run(outcome.run_id)["status"] != "done" and time.time() < deadline:
        time.sleep(0.1)
    run = FlowLog(store).get_run(outcome.run_id)
    assert run["status"] == "done"
    assert run["output"] == {"answer": '{"answer": "Restart your router"}', "action": "edited", "by": "alice"}
    alice.goto(f"{review_server}/runs/{outcome.run_id}")
    expect(alice.locator("#run-status")).to_have_text("done")
    expect(alice.locator("#run-output")).to_contain_text("Restart your router")

    # The late reviewer's decision is refused with a clear message; nothing changes.
    bob.reload()
    expect(bob.locator("#error")).to_contain_text("already edited by alice")
    [example] = ExamplePool(store, "support").nearest("internet down", k=1)
    assert example["origin"].startswith("review:")
