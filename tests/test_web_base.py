"""One web base: the label pages, the review pages, the run browser and the savings report extend one base
template (one copy of the CSS), and the UIs sign in through web/auth.py (a Bearer header in any case, or the app's
cookie)."""

from pathlib import Path

from fastapi.testclient import TestClient

from llmbus.pages import SHARED
from llmbus.quality import label
from llmbus.serve.report import Report, ReportRow, render_html
from llmbus.store import Store
from llmbus.web import label_web, review_web, runs_web
from test_label import _project
from test_review import queued_item

SHARED_CSS = "llmbus shared page style"


def _pages(store: Store, tiny_task: Path) -> dict[str, str]:
    """The label queue, the review queue, the run browser and the report as served/rendered, signed in with a
    bearer header."""
    _project(store, tiny_task, label.LabelSchema(kind="labels", labels=("pass", "fail")))
    annotator = label.add_annotator(store, "p", "alice")
    labeled = TestClient(label_web.create_app(store, "p")).get("/", headers={"Authorization": f"BEARER {annotator}"},
                                                                follow_redirects=False)
    item = queued_item(store)
    reviewed = TestClient(review_web.create_app(store, {"sekrit-token": "rita"}, resume_flows=False)).get(
        "/", headers={"authorization": "bearer sekrit-token"}, follow_redirects=False)
    assert labeled.status_code == 200 and 'id="who">alice<' in labeled.text  # old label UI read the cookie only
    assert reviewed.status_code == 200 and 'id="reviewer">rita<' in reviewed.text  # old review: "Bearer " only
    assert f'/items/{item["id"]}' in reviewed.text
    browsed = TestClient(runs_web.create_app(store, token="ui-token-1")).get(
        "/", headers={"Authorization": "Bearer ui-token-1"}, follow_redirects=False)
    assert browsed.status_code == 200 and 'class="run-link"' in browsed.text
    row = ReportRow("teacher", "r1", "local:gemma", 10, 0.9, 0.8, 1.0, 100, 200, 0.01, 10.0)
    report = render_html(Report(task="t", metric="accuracy", traffic=1000, rows=[row], headline="keep the teacher"))
    return {"label": labeled.text, "review": reviewed.text, "runs": browsed.text, "report": report}


def test_every_page_extends_the_one_base(store: Store, tiny_task: Path):
    base = (SHARED / "base.html").read_text()
    assert SHARED_CSS in base
    pages = _pages(store, tiny_task)
    for name, html in pages.items():
        assert html.count("<style>") == 1 and SHARED_CSS in html, name  # one stylesheet: the base's plus blocks
        assert html.count("<header>") == 1 and html.startswith("<!doctype html>"), name
    templates = [*(Path(label_web.TEMPLATES).parent.rglob("*.html")), Path(render_html.__code__.co_filename).parent
                 / "templates" / "report.html"]
    assert all("<style>" not in t.read_text() and "<!doctype" not in t.read_text() for t in templates)


def test_login_cookie_is_httponly_strict_and_logout_clears_it(store: Store, tiny_task: Path):
    _project(store, tiny_task, label.LabelSchema(kind="labels", labels=("pass", "fail")))
    token = label.add_annotator(store, "p", "alice")
    client = TestClient(label_web.create_app(store, "p"))
    signed = client.post("/login", data={"token": token}, follow_redirects=False)
    cookie = signed.headers["set-cookie"].lower()
    assert f"{label_web.COOKIE}={token}".lower() in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/", follow_redirects=False).status_code == 200
    out = client.post("/logout", follow_redirects=False)
    assert "max-age=0" in out.headers["set-cookie"].lower()
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    review = TestClient(review_web.create_app(store, {"sekrit-token": "rita"}, resume_flows=False))
    signed = review.post("/login", data={"token": "sekrit-token"}, follow_redirects=False)
    assert "httponly" in signed.headers["set-cookie"].lower() and review.get("/").status_code == 200
    assert review.get("/", headers={"Authorization": "Basic sekrit-token"}).status_code == 200  # cookie still counts
    assert TestClient(review.app).get("/", headers={"Authorization": "Basic sekrit-token"},
                                      follow_redirects=False).status_code == 303
    out = review.post("/logout", follow_redirects=False)  # the review UI had no sign-out before
    assert out.status_code == 303 and "max-age=0" in out.headers["set-cookie"].lower()
    assert review.get("/", follow_redirects=False).headers["location"] == "/login"


def test_the_three_pages_read_alike_in_chromium(store: Store, tiny_task: Path, browser, tmp_path: Path):
    styles = {}
    for name, html in _pages(store, tiny_task).items():
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        page.set_content(html)
        page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
        styles[name] = page.evaluate("""() => [getComputedStyle(document.body).fontFamily,
            getComputedStyle(document.querySelector('header')).display]""")
        assert page.inner_text("header h1")
        page.close()
    assert styles["label"] == styles["review"] == styles["runs"] == styles["report"] == ["system-ui, sans-serif",
                                                                                         "flex"]
