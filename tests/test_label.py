"""Labeling: the queue, skip/undo and schema checks in the store, and the web UI in a real browser (Debian
chromium driven by Playwright): sign in with a token, label by keyboard, undo, export, agreement."""

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from llmbus.providers.llamacpp import free_port
from llmbus.quality import label
from llmbus.store import Store
from llmbus.web.label_web import create_app
from quality_helpers import add_run


def _project(store: Store, tiny_task: Path, schema: label.LabelSchema, n: int = 5) -> str:
    rows = [{"item_id": f"m{i}", "parsed": "spam" if i % 2 else "ham", "expected": "ham"} for i in range(8)]
    run_id = add_run(store, rows, task="tiny", labels=["ham", "spam"], task_path=str(tiny_task))
    label.create_project(store, "p", run_id, schema, "# Rules\nPass when the label is **right**.\n<script>x</script>")
    label.enqueue(store, "p", [(f"m{i}", float(n - i)) for i in range(n)], "initial")
    return run_id


def test_queue_skip_undo_and_schema(store: Store, tiny_task: Path):
    _project(store, tiny_task, label.LabelSchema(kind="labels", labels=("pass", "fail"), correction=True))
    first = label.next_item(store, "p", "ann")
    assert first is not None and first["item_id"] == "m0" and first["fields"]["text"].startswith("win a free")
    assert first["answer"] == "ham" and first["strategy"] == "initial"
    label.save_label(store, "p", "ann", "m0", "pass", correction="")
    label.save_label(store, "p", "ann", "m1", None, skipped=True)
    assert label.next_item(store, "p", "ann")["item_id"] == "m2"
    assert label.undo(store, "p", "ann") == "m1"  # the skip is undone: m1 is next again
    assert label.next_item(store, "p", "ann")["item_id"] == "m1"
    assert label.next_item(store, "p", "other")["item_id"] == "m0"  # each annotator has their own queue
    with pytest.raises(label.LabelError, match="not one of pass, fail"):
        label.save_label(store, "p", "ann", "m1", "maybe")
    with pytest.raises(label.LabelError, match="not in the queue"):
        label.save_label(store, "p", "ann", "m7", "pass")
    label.save_label(store, "p", "ann", "m1", "fail", correction="spam")
    exported = [json.loads(line) for line in label.export_jsonl(store, "p")]
    assert [(r["item_id"], r["label"], r["correction"]) for r in exported] == [("m0", "pass", None),
                                                                                 ("m1", "fail", "spam")]
    assert all(r["call_id"] for r in exported)  # linked to the labeled calls
    assert label.progress(store, "p", "ann") == (2, 5)
    assert label.enqueue(store, "p", [("m0", 9.0), ("m6", 1.0)], "uncertainty") == 1  # m0 was queued already
    with pytest.raises(label.LabelError, match="not answered by run"):
        label.enqueue(store, "p", [("nope", 1.0)], "random")


def test_score_and_text_schemas():
    assert label.parse_schema("score", None, False).values == ("1", "2", "3", "4", "5")
    text = label.parse_schema("text", None, False)
    assert text.correction and text.values == ()
    with pytest.raises(label.LabelError, match="at least two labels"):
        label.parse_schema("labels", "pass", False)


class _Server:
    """uvicorn on a free 127.0.0.1 port in a thread, stopped on exit."""

    def __init__(self, app: object):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "label server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _sign_in(browser: object, base: str, token: str) -> object:
    page = browser.new_context().new_page()  # type: ignore[attr-defined]
    page.goto(base + "/")
    assert page.url.endswith("/login")
    page.fill("#token", token)
    with page.expect_navigation():
        page.click("#signin")
    return page


def _press(page: object, key: str) -> None:
    with page.expect_navigation():  # type: ignore[attr-defined]
        page.keyboard.press(key)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_label_in_a_real_browser(store: Store, tiny_task: Path, browser: object):
    _project(store, tiny_task, label.LabelSchema(kind="labels", labels=("pass", "fail")))
    alice, bob = label.add_annotator(store, "p", "alice"), label.add_annotator(store, "p", "bob")
    with _Server(create_app(store, "p")) as base:
        bad = httpx.post(base + "/login", data={"token": "wrong"})
        assert bad.status_code == 401 and "Unknown token" in bad.text
        page = _sign_in(browser, base, alice)
        assert page.inner_text("#who") == "alice" and page.inner_text("#progress") == "0/5"
        assert page.inner_html(".instructions").count("<strong>right</strong>") == 1
        assert "<script>x" not in page.content()  # raw HTML in the instructions is not rendered
        assert page.get_attribute("#item", "data-item-id") == "m0" and page.inner_text("#answer") == "ham"
        for key in ("1", "2", "1"):  # pass m0, fail m1, pass m2
            _press(page, key)
        assert page.inner_text("#progress") == "3/5"
        _press(page, "u")  # undo m2
        assert "undid m2" in page.inner_text("#note") and page.get_attribute("#item", "data-item-id") == "m2"
        _press(page, "2")  # m2 is fail after all
        _press(page, "s")  # skip m3
        assert page.get_attribute("#item", "data-item-id") == "m4" and page.inner_text("#progress") == "4/5"
        exported = page.request.get(base + "/export")
        assert exported.ok and exported.headers["content-type"].startswith("application/x-ndjson")
        rows = [json.loads(line) for line in exported.text().splitlines()]
        assert [(r["item_id"], r["label"], r["annotator"]) for r in rows] == [
            ("m0", "pass", "alice"), ("m1", "fail", "alice"), ("m2", "fail", "alice")]
        second = _sign_in(browser, base, bob)
        for key in ("1", "2", "1"):  # bob: pass, fail, pass
            _press(second, key)
        second.goto(base + "/agreement")
        # alice pass/fail/fail vs bob pass/fail/pass: po = 2/3, pe = 1/3·2/3 + 2/3·1/3 = 4/9 → kappa 0.4
        assert "0.400" in second.inner_text("tr.cohen") and second.inner_text("#multi") == "3"
        assert second.inner_text("#fleiss") == "0.333"  # Scott's pi: pooled pass 1/2 → pe 1/2 → (2/3−1/2)/(1/2)
    assert label.agreement(store, "p").cohen["alice|bob"] == pytest.approx(0.4)


def test_label_cli(store: Store, tiny_task: Path, tmp_path: Path):
    import os
    import subprocess
    import sys

    rows = [{"item_id": f"m{i}", "parsed": "ham", "expected": "ham", "confidence": 0.5 + i / 20} for i in range(8)]
    run_id = add_run(store, rows, task="tiny", labels=["ham", "spam"], task_path=str(tiny_task))
    env = {**os.environ, "COLUMNS": "200", "LLMBUS_DB": store.url.removeprefix("sqlite:///")}

    def llmbus(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llmbus.cli", "label", *args], capture_output=True, text=True,
                              env=env, timeout=120)

    (tmp_path / "rules.md").write_text("Pass when **right**.")
    made = llmbus("create", "p", "--run", run_id, "--labels", "pass,fail", "--instructions",
                  str(tmp_path / "rules.md"), "--queue", "2")
    assert made.returncode == 0 and "2 items queued" in made.stdout, made.stderr
    picked = llmbus("select", "--project", "p", "--strategy", "uncertainty", "--n", "3", "--json")
    assert [r["item_id"] for r in json.loads(picked.stdout)] == ["m2", "m3", "m4"]  # lowest confidence first
    token = llmbus("annotator", "ann", "--project", "p").stdout.strip()
    assert label.annotator_for(store, token) == ("p", "ann")
    label.save_label(store, "p", "ann", "m2", "fail")
    exported = llmbus("export", "--project", "p", "--out", str(tmp_path / "out.jsonl"))
    assert exported.returncode == 0
    assert [json.loads(x)["label"] for x in (tmp_path / "out.jsonl").read_text().splitlines()] == ["fail"]
    bad = llmbus("select", "--project", "p", "--strategy", "smart")
    assert bad.returncode == 2 and "use one of uncertainty" in bad.stderr
    assert llmbus("create", "q", "--run", run_id, "--labels", "pass").returncode == 2
    assert "annotators see text and the answer" in made.stdout  # the default: no gold, no confidence
    shown = llmbus("create", "r", "--run", run_id, "--labels", "pass,fail", "--show-fields", "text,label,confidence")
    assert shown.returncode == 0 and "annotators see text, label, confidence and the answer" in shown.stdout
    assert label.get_project(store, "r")["show_fields"] == ("text", "label", "confidence")
    wrong = llmbus("show-fields", "--project", "r", "text,gold")
    assert wrong.returncode == 2 and "--show-fields gold: not a field of run" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    back = llmbus("show-fields", "--project", "r")
    assert back.returncode == 0 and label.get_project(store, "r")["show_fields"] == ("text",)


def test_score_and_correction_pages(store: Store, tiny_task: Path):
    from fastapi.testclient import TestClient

    _project(store, tiny_task, label.LabelSchema(kind="score", correction=True))
    token = label.add_annotator(store, "p", "carol")
    client = TestClient(create_app(store, "p"))
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    client.post("/login", data={"token": token})
    page = client.get("/").text
    assert all(f'data-key="{k}"' in page for k in range(1, 6)) and 'id="correction"' in page
    saved = client.post("/label", data={"item_id": "m0", "value": "4", "correction": "it is spam"},
                        follow_redirects=False)
    assert saved.status_code == 303
    wrong = client.post("/label", data={"item_id": "m1", "value": "9"})
    assert wrong.status_code == 400 and "not one of 1, 2, 3, 4, 5" in wrong.text
    (row,) = label.label_rows(store, "p")
    assert (row["label"], row["correction"], row["annotator"]) == ("4", "it is spam", "carol")


def _blind_project(store: Store, tiny_task: Path, show_fields: tuple[str, ...] | None = None) -> str:
    """Items m1, m2 are gold "ham" (tiny data) answered "spam" with confidence 0.8765: the page may show the
    answer "spam", so the word "ham" or "0.88" on it can only come from the gold field or the confidence."""
    rows = [{"item_id": f"m{i}", "parsed": "spam", "expected": "ham", "confidence": 0.8765} for i in (1, 2)]
    run_id = add_run(store, rows, task="tiny", labels=["ham", "spam"], task_path=str(tiny_task))
    label.create_project(store, "p", run_id, label.LabelSchema(kind="labels", labels=("pass", "fail")),
                         "Pass when the answer is right.", show_fields)
    label.enqueue(store, "p", [("m1", 2.0), ("m2", 1.0)], "initial")
    return run_id


def _gold_or_confidence(text: str) -> list[str]:
    import re

    return re.findall(r"\bham\b|0\.88|0\.8765|<b>label</b>|\blabel: ", text)


@pytest.mark.slow
def test_annotators_see_no_gold_or_confidence_unless_listed(store: Store, tiny_task: Path, browser: object,
                                                            tmp_path: Path):
    _blind_project(store, tiny_task)
    assert label.get_project(store, "p")["show_fields"] == ("text",)  # default: the task's input field
    alice = label.add_annotator(store, "p", "alice")
    label.add_annotator(store, "p", "bob")
    label.save_label(store, "p", "bob", "m2", "fail")  # another annotator's label: not alice's to see
    with _Server(create_app(store, "p")) as base:
        page = _sign_in(browser, base, alice)
        assert page.get_attribute("#item", "data-item-id") == "m1" and page.inner_text("#answer") == "spam"
        assert "see you at lunch 1" in page.inner_text("#item")  # the input is there
        assert _gold_or_confidence(page.content()) == [] and page.query_selector("#confidence") is None
        page.screenshot(path=str(tmp_path / "blind.png"), full_page=True)
        _press(page, "1")  # alice: pass m1
        exported = [json.loads(line) for line in page.request.get(base + "/export").text().splitlines()]
        assert exported == [{**exported[0], "item_id": "m1", "annotator": "alice", "label": "pass",
                             "answer": "spam", "fields": {"text": "see you at lunch 1"}}]
        assert "confidence" not in exported[0] and "expected" not in exported[0]
        _press(page, "u")
        # The owner lists the gold field and the confidence: the same page now shows them.
        label.set_show_fields(store, "p", ("text", "label", "confidence"))
        page.reload()
        assert page.inner_text("#confidence") == "model confidence 0.88"
        assert "ham" in page.inner_text("#item") and "<b>label</b>" in page.inner_html("#item")
        page.screenshot(path=str(tmp_path / "shown.png"), full_page=True)
        _press(page, "2")
        (row,) = [json.loads(line) for line in page.request.get(base + "/export").text().splitlines()]
        assert row["fields"] == {"text": "see you at lunch 1", "label": "ham"} and row["confidence"] == 0.8765
    # The owner's export keeps everything, for every annotator.
    owner = [json.loads(line) for line in label.export_jsonl(store, "p")]
    assert {(r["annotator"], r["fields"]["label"], r["confidence"]) for r in owner} == {("bob", "ham", 0.8765),
                                                                                      ("alice", "ham", 0.8765)}


def test_show_fields_are_checked_and_stored(store: Store, tiny_task: Path):
    from fastapi.testclient import TestClient

    with pytest.raises(label.LabelError, match=r"--show-fields gold: not a field of run .*; "
                                               r"use some of confidence, id, label, text"):
        _blind_project(store, tiny_task, ("text", "gold"))
    _blind_project(store, tiny_task, label.parse_show_fields("label, confidence"))
    assert label.get_project(store, "p")["show_fields"] == ("label", "confidence")
    client = TestClient(create_app(store, "p"))
    client.post("/login", data={"token": label.add_annotator(store, "p", "ann")})
    page = client.get("/").text
    assert "<b>label</b> ham" in page and "<b>model confidence</b> 0.88" in page
    assert "see you at lunch" not in page  # only what is listed: here not even the input
    label.set_show_fields(store, "p", None)
    page = client.get("/").text
    assert _gold_or_confidence(page) == [] and "see you at lunch 1" in page


def test_label_projects_of_an_older_database_open_with_the_default(tmp_path: Path, tiny_task: Path):
    import sqlalchemy as sa

    path = str(tmp_path / "old.db")
    store = Store(path)
    _blind_project(store, tiny_task)
    with store.engine.begin() as conn:  # what a database from before migration 007 looks like
        conn.execute(sa.text("ALTER TABLE label_projects DROP COLUMN show_fields_json"))
        conn.execute(sa.text("DELETE FROM migrations WHERE name = '007_label_show_fields'"))
    store.close()
    reopened = Store(path)
    assert label.get_project(reopened, "p")["show_fields"] == ("text",)
    label.set_show_fields(reopened, "p", ("text", "label"))
    assert label.get_project(reopened, "p")["show_fields"] == ("text", "label")
    reopened.close()
