"""The run browser (`llmbus ui`) over runs made through the real run path: filters and pages counted against the
call log, escaping, token sign-in, one page of a big run in flat memory, and a click-through in headless Chromium."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from llmbus.experiments import browse
from llmbus.providers.llamacpp import free_port
from llmbus.quality import label
from llmbus.store import Store
from llmbus.web.runs_web import COOKIE, create_app
from quality_helpers import add_run, classify_rows
from test_compare import HTML, Runs, is_spam, make_runs, nonsense, number

LABEL_URL = "http://127.0.0.1:8123"


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Runs]:
    made = make_runs(tmp_path)
    yield made
    made.store.close()


def calls_of(store: Store, run_id: str) -> list[dict[str, Any]]:
    return list(store.iter_calls(run_id))


def shown_items(html: str) -> list[str]:
    """Item ids of the call rows on a run page, in order."""
    return re.findall(r'<tr class="call[^"]*" data-item="([^"]*)"', html)


def test_filters_count_what_the_call_log_holds(runs: Runs):
    client = TestClient(create_app(runs.store, rounds=50))
    v1 = calls_of(runs.store, runs.v1)
    cases = {
        "wrong=1": [c for c in v1 if c["error_kind"] or c["score"] < 1],
        "errors=1": [c for c in v1 if c["error_kind"]],
        "below=0.5": [c for c in v1 if c["confidence"] is not None and c["confidence"] < 0.5],
        "answer=spam": [c for c in v1 if c["parsed"] == "spam"],
        "expected=spam&wrong=1": [c for c in v1 if c["expected"] == "spam" and (c["error_kind"] or c["score"] < 1)],
    }
    assert all(cases.values()) and len(cases["below=0.5"]) < len(v1)  # every filter keeps some items, not all
    assert {c["item_id"] for c in cases["errors=1"]} == {c["item_id"] for c in v1 if nonsense(number(c["item_id"]))}
    for query, expected in cases.items():
        page = client.get(f"/runs/{runs.v1}?{query}")
        assert page.status_code == 200
        assert f"{len(expected)} item{'' if len(expected) == 1 else 's'} match" in page.text, query
        assert shown_items(page.text) == [c["item_id"] for c in expected], query
    assert len(shown_items(client.get(f"/runs/{runs.v1}?below=&answer=&per_page=100").text)) == len(v1)
    assert client.get("/?task=tiny").text.count('<tr class="run"') == 3
    assert client.get("/?task=nothing").text.count('<tr class="run"') == 0
    refused = client.get(f"/runs/{runs.v1}?below=low")
    assert refused.status_code == 400 and "give a number between 0 and 1" in refused.text


def test_pages_cover_every_item_once_in_order(runs: Runs):
    client = TestClient(create_app(runs.store, rounds=50))
    every = [c["item_id"] for c in calls_of(runs.store, runs.v2)]
    pages = math.ceil(len(every) / 10)
    seen = []
    for page_no in range(1, pages + 1):
        html = client.get(f"/runs/{runs.v2}?per_page=10&page={page_no}").text
        seen += shown_items(html)
        assert f"page {page_no} of {pages}" in html
        assert ('id="next"' in html) == (page_no < pages) and ('id="prev"' in html) == (page_no > 1)
    assert seen == every
    wrong = client.get(f"/runs/{runs.v2}?wrong=1&per_page=5&page=2").text
    assert f'href="/runs/{runs.v2}?wrong=1&amp;per_page=5&amp;page=3"' in wrong  # page links keep the view


def test_one_page_of_a_big_run_reads_only_that_page(store: Store):
    n = 20_000
    run_id = add_run(store, [{**row, "prompt": "p" * 300} for row in
                             classify_rows(["ham" if i % 4 else "spam" for i in range(n)], ["ham"] * n)],
                     labels=["ham", "spam"])
    other = add_run(store, classify_rows(["ham"] * n, ["ham"] * n), labels=["ham", "spam"])
    tracemalloc.start()
    page = browse.call_page(store, run_id, browse.CallFilter(answer="spam"), page=7, per_page=50)
    pairs, differing = browse.side_by_side(store, run_id, other, page=3, per_page=50)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert page.total == n // 4 and len(page.rows) == 50 and page.rows[0]["item_id"] == f"i{6 * 50 * 4}"
    assert differing == n // 4 and pairs.total == n and all(p["differ"] for p in pairs.rows)
    assert pairs.rows[0]["item_id"] == f"i{2 * 50 * 4}"  # disagreements first, in answering order
    # 20k decoded calls of ~400 bytes would take > 8 MB; a page of 50 takes a few hundred kB.
    assert peak < 2_000_000, peak


def test_browse_queries_on_postgres(postgres_url: str):
    store = Store(postgres_url)
    rows = [{**row, "confidence": 0.2 if i % 5 == 0 else 0.9} for i, row in
            enumerate(classify_rows(["spam" if i % 3 == 0 else "ham" for i in range(30)], ["ham"] * 30))]
    rows[4] = {**rows[4], "parsed": None, "error_kind": "label_not_in_set"}
    first = add_run(store, rows, labels=["ham", "spam"], metric="macro_f1", task="pg")
    second = add_run(store, classify_rows(["ham"] * 30, ["ham"] * 30), labels=["ham", "spam"], task="pg")
    [row] = browse.run_rows(store, first)
    assert (row.items, row.errors, row.exact, row.value) == (30, 1, False, None)  # add_run logs no item scores
    assert browse.call_page(store, first, browse.CallFilter(errors=True)).total == 1
    assert browse.call_page(store, first, browse.CallFilter(below=0.5)).total == 6
    spam = browse.call_page(store, first, browse.CallFilter(answer="spam"), page=2, per_page=3)
    assert spam.total == 10 and [r["item_id"] for r in spam.rows] == ["i9", "i12", "i15"]
    pairs, differing = browse.side_by_side(store, first, second, per_page=12)
    assert differing == 11 and pairs.total == 30 and [p["differ"] for p in pairs.rows] == [True] * 11 + [False]
    store.close()


def test_side_by_side_puts_disagreements_first(runs: Runs):
    client = TestClient(create_app(runs.store, rounds=50))
    a = {c["item_id"]: c for c in calls_of(runs.store, runs.v1)}
    b = {c["item_id"]: c for c in calls_of(runs.store, runs.v2)}
    differ = [i for i in a if a[i]["parsed"] != b[i]["parsed"]]
    assert differ and len(differ) < len(a)
    html = client.get(f"/side?run={runs.v1}&run={runs.v2}&per_page=100").text
    assert f'<span id="differing">{len(differ)}</span> of {len(a)} shared' in html
    rows = html.split('<tr class="pair')[1:]
    flags = [row.startswith(" differ") for row in rows]
    assert flags == [True] * len(differ) + [False] * (len(a) - len(differ))
    only = client.get(f"/side?run={runs.v1}&run={runs.v2}&only=1").text
    assert only.count('<tr class="pair differ"') == len(differ) and '<tr class="pair"' not in only
    refused = client.get(f"/side?run={runs.v1}")
    assert refused.status_code == 400 and "exactly two runs" in refused.text


def test_everything_is_escaped(runs: Runs):
    client = TestClient(create_app(runs.store, rounds=50))
    item = next(c for c in calls_of(runs.store, runs.v1) if HTML in c["prompt"].splitlines()[-2])
    for url in (f"/runs/{runs.v1}", f"/runs/{runs.v1}/item?item={item['item_id']}",
                f"/side?run={runs.v1}&run={runs.v2}"):
        html = client.get(url).text
        assert "<script>window.pwned" not in html and "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in html, url


def test_labeling_projects_are_linked_from_an_item(runs: Runs):
    client = TestClient(create_app(runs.store, label_url=LABEL_URL, rounds=50))
    first, second = calls_of(runs.store, runs.v1)[:2]
    label.create_project(runs.store, "check", runs.v1, label.LabelSchema(kind="labels", labels=("pass", "fail")))
    label.enqueue(runs.store, "check", [(first["item_id"], 1.0)], "initial")
    label.save_label(runs.store, "check", "alice", first["item_id"], "fail")
    html = client.get(f"/runs/{runs.v1}/item?item={first['item_id']}").text
    assert f'href="{LABEL_URL}/" class="label-link" data-project="check"' in html
    assert "this item is in its queue" in html and '<span class="given">alice: fail</span>' in html
    assert "cannot open one chosen item" in html  # the labeling UI addresses its queue, and the page says so
    other = client.get(f"/runs/{runs.v1}/item?item={second['item_id']}").text
    assert "this item is not in its queue" in other
    assert "No labeling project" in client.get(f"/runs/{runs.v2}/item?item={first['item_id']}").text


def test_a_token_guards_every_page(runs: Runs):
    client = TestClient(create_app(runs.store, token="sekrit-token-1", rounds=50))
    for path in ("/", f"/runs/{runs.v1}", "/compare?task=tiny"):
        assert client.get(path, follow_redirects=False).headers["location"] == "/login"
    assert client.get("/", headers={"Authorization": "bearer sekrit-token-1"}).status_code == 200
    assert client.post("/login", data={"token": "wrong"}).status_code == 401
    signed = client.post("/login", data={"token": "sekrit-token-1"}, follow_redirects=False)
    assert f"{COOKIE}=sekrit-token-1" in signed.headers["set-cookie"] and "httponly" in signed.headers[
        "set-cookie"].lower()
    assert runs.v1 in client.get("/").text
    client.post("/logout")
    assert client.get("/", follow_redirects=False).status_code == 303


def test_the_ui_command_serves_the_store_on_localhost(runs: Runs):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "llmbus.cli", "ui", "--port", str(port), "--db",
                               str(runs.tmp / "runs.db")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, page = time.time() + 60, None
        while time.time() < deadline and page is None:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
            except httpx.TransportError:
                time.sleep(0.2)
        assert page is not None and page.status_code == 200 and runs.v2 in page.text  # no token on localhost
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def ui_server(runs: Runs) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(runs.store, label_url=LABEL_URL, rounds=200),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.mark.slow
def test_click_through_runs_wrong_side_by_side_compare(runs: Runs, ui_server: str, browser: Any, tmp_path: Path):
    from playwright.sync_api import expect

    v2_calls = calls_of(runs.store, runs.v2)
    v2_wrong = [c["item_id"] for c in v2_calls if is_spam(number(c["item_id"]))]  # v2 answers ham to everything
    page = browser.new_page()
    page.goto(ui_server + "/")
    expect(page.locator("#runs tr.run")).to_have_count(3)
    page.click(f'#runs tr[data-run="{runs.v2}"] a.run-link')
    expect(page.locator("#run-id")).to_have_text(runs.v2)
    expect(page.locator("#matching")).to_contain_text(f"{len(v2_calls)} items match")

    page.check("#f-wrong")
    page.click("#apply")
    expect(page.locator("#matching")).to_contain_text(f"{len(v2_wrong)} items match")
    expect(page.locator("#calls tr.call")).to_have_count(len(v2_wrong))
    assert page.locator("#calls tr.call").evaluate_all("rows => rows.map(r => r.dataset.item)") == v2_wrong
    assert page.locator("#calls tr.call:not(.wrong)").count() == 0

    # Markup in a prompt is shown as text, never run.
    page.locator("#calls details").first.click()
    assert page.evaluate("() => window.pwned") is None
    expect(page.locator("#calls pre b")).to_have_count(0)

    page.select_option("#side-other", runs.v1)
    page.click("#side-go")
    v1 = {c["item_id"]: c for c in calls_of(runs.store, runs.v1)}
    differ = [c["item_id"] for c in v2_calls if c["parsed"] != v1[c["item_id"]]["parsed"]]
    expect(page.locator("#differing")).to_have_text(str(len(differ)))
    classes = page.locator("#pairs tr.pair").evaluate_all("rows => rows.map(r => r.classList.contains('differ'))")
    assert classes == ([True] * len(differ) + [False] * (len(v2_calls) - len(differ)))[:browse.PER_PAGE]

    page.click("#compare-two")  # baseline: v2, the run the side-by-side started from
    expect(page.locator("#n-shared")).to_have_text(str(len(v2_calls)))
    expect(page.locator("#matrix tr.mrow")).to_have_count(2)
    items = [number(c["item_id"]) for c in v2_calls]
    wins = sum(is_spam(i) and not nonsense(i) for i in items)  # v1 right, v2 wrong
    losses = sum(not is_spam(i) and nonsense(i) for i in items)  # v1 failed, v2 right
    expect(page.locator(f'#matrix tr.mrow[data-run="{runs.v1}"] .wtl')).to_have_text(
        f"{wins} / {len(items) - wins - losses} / {losses}")
    expect(page.locator(f'#matrix tr.mrow[data-run="{runs.v2}"]')).to_contain_text("(baseline)")
    page.goto(ui_server + "/")
    page.click(".compare-task")
    expect(page.locator("#matrix tr.mrow")).to_have_count(3)
    expect(page.locator(".warning").first).to_contain_text("share only 20 items")
    shot = tmp_path / "compare.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
