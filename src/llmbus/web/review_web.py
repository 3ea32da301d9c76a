"""The review queue's web UI (FastAPI, server-rendered Jinja2 pages, token login).

Opening an item claims it for the reviewer (a lease, so two people never work the same item); a decision
is recorded once, a conflicting one gets a clear message, an edit that breaks the answer contract is
shown again with the reason and the reviewer's text kept. After a decision the flow run resumes in the
background, so the answer is delivered without anyone running `llmbus flow resume`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import BackgroundTasks, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from llmbus.errors import InvalidEdit, LlmbusError, ReviewConflict
from llmbus.flows.log import FlowLog
from llmbus.flows.review import ReviewQueue
from llmbus.pages import environment
from llmbus.store import Store
from llmbus.web.auth import add_sign_in_routes, request_token

COOKIE = "llmbus_review"
TEMPLATES = Path(__file__).parent / "templates" / "review"


def parse_reviewers(values: list[str]) -> dict[str, str]:
    """NAME:TOKEN strings → {token: name}."""
    tokens = {}
    for value in values:
        name, _, token = value.partition(":")
        if not name or len(token) < 8:
            raise LlmbusError(f"--reviewer {value!r}: give NAME:TOKEN with a token of at least 8 characters")
        tokens[token] = name
    return tokens


def create_app(store: Store, tokens: dict[str, str], lease_s: float = 600.0, resume_flows: bool = True) -> FastAPI:
    """The review app over one store; `tokens` maps each reviewer's token to their name."""
    app = FastAPI(title="llmbus review", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(env=environment(TEMPLATES))
    queue = ReviewQueue(store, lease_s=lease_s)
    log = FlowLog(store)

    def reviewer(request: Request) -> str | None:
        return tokens.get(request_token(request, COOKIE))

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"reviewer": reviewer(request), **context},
                                          status_code=status)

    def login_first() -> RedirectResponse:
        return RedirectResponse("/login", status_code=303)

    def resume_run(run_id: str) -> None:
        from llmbus.flows.engine import resume

        try:
            resume(store, run_id)
        except LlmbusError as exc:  # the run keeps its state; the queue page shows it
            log.update_run(run_id, error=str(exc))

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> HTMLResponse:
        return page(request, "login.html")

    add_sign_in_routes(app, COOKIE, lambda given: given in tokens,
                       lambda request: page(request, "login.html", 401, error="unknown token"))

    @app.get("/", response_class=HTMLResponse, response_model=None)
    def index(request: Request, notice: str = "") -> Response:
        if reviewer(request) is None:
            return login_first()
        decided = [i for i in queue.items(None) if i["status"] != "pending"][-10:]
        runs = {i["flow_run_id"]: log.get_run(i["flow_run_id"]) for i in decided}
        return page(request, "queue.html", pending=queue.items(), decided=decided[::-1], runs=runs, notice=notice)

    @app.get("/items/{item_id}", response_class=HTMLResponse, response_model=None)
    def open_item(request: Request, item_id: int) -> Response:
        name = reviewer(request)
        if name is None:
            return login_first()
        try:
            item = queue.claim(item_id, name)
        except ReviewConflict as exc:
            return page(request, "item.html", 409, item=queue.get(item_id), error=str(exc), readonly=True)
        except LlmbusError as exc:
            return page(request, "item.html", 404, item=None, error=str(exc), readonly=True)
        return page(request, "item.html", item=item, answer=item["payload"].get("draft") or "", readonly=False)

    @app.post("/items/{item_id}", response_model=None)
    def decide(request: Request, item_id: int, background: BackgroundTasks, action: str = Form(...),
               answer: str = Form(""), comment: str = Form("")) -> Response:
        name = reviewer(request)
        if name is None:
            return login_first()
        try:
            decision = queue.decide(item_id, name, action, answer=answer, comment=comment)
        except InvalidEdit as exc:  # shown again with the reviewer's text: nothing typed is lost
            return page(request, "item.html", 422, item=queue.get(item_id), answer=answer, comment=comment,
                        error=str(exc), readonly=False)
        except ReviewConflict as exc:
            return page(request, "item.html", 409, item=queue.get(item_id), error=str(exc), readonly=True)
        except LlmbusError as exc:
            return page(request, "item.html", 400, item=queue.get(item_id), answer=answer, comment=comment,
                        error=str(exc), readonly=False)
        run_id = queue.get(item_id)["flow_run_id"]
        if resume_flows:
            background.add_task(resume_run, run_id)
        notice = f"item {item_id} {decision.action}; flow run {run_id} resumes"
        return RedirectResponse(f"/?notice={notice}", status_code=303)

    @app.get("/runs/{run_id}", response_class=HTMLResponse, response_model=None)
    def show_run(request: Request, run_id: str) -> Response:
        if reviewer(request) is None:
            return login_first()
        try:
            run = log.get_run(run_id)
        except LlmbusError as exc:
            return page(request, "run.html", 404, run=None, steps=[], error=str(exc))
        return page(request, "run.html", run=run, steps=log.steps(run["id"]))

    return app
