"""The run browser (`llmbus ui`): FastAPI with server-rendered Jinja2 pages over the call log, no JavaScript build.

Pages: every task's runs; a run's items a page at a time with filters (wrong, errors, low confidence, an answer
or expected label); one item in full with its labeling projects; two runs side by side on their shared items,
disagreements first; the compare matrix. Everything shown is escaped (prompts and answers hold HTML). With a
token (required beyond localhost) every page needs it, as a Bearer header or the sign-in cookie.
"""

from __future__ import annotations

import json
import math
import secrets
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from llmbus.errors import LlmbusError
from llmbus.experiments import browse
from llmbus.experiments.compare import compare_runs
from llmbus.pages import environment
from llmbus.quality.assertions import run_checks
from llmbus.store import Store
from llmbus.web.auth import add_sign_in_routes, request_token

TEMPLATES = Path(__file__).parent / "templates" / "runs"
COOKIE = "llmbus_ui_token"
MAX_PER_PAGE = 500


def create_app(store: Store, token: str | None = None, label_url: str = "http://127.0.0.1:8000",
               rounds: int = 1000) -> FastAPI:
    """The run browser over one store; with `token`, every page but /login needs it."""
    app = FastAPI(title="llmbus runs", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(env=environment(TEMPLATES))
    templates.env.filters.update(show=shown, num=number, p=p_value)

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"signed_in": token is not None, **context},
                                          status_code=status)

    @app.middleware("http")
    async def signed_in_only(request: Request, call_next: Any) -> Response:
        if token is None or request.url.path == "/login":
            return await call_next(request)
        if not secrets.compare_digest(request_token(request, COOKIE).encode(), token.encode()):
            return RedirectResponse("/login", status_code=303)
        return await call_next(request)

    @app.exception_handler(LlmbusError)
    def refused(request: Request, exc: LlmbusError) -> HTMLResponse:
        return page(request, "error.html", 400, message=str(exc))

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> HTMLResponse:
        return page(request, "login.html", error=None)

    add_sign_in_routes(app, COOKIE, lambda given: token is not None and secrets.compare_digest(
        given.encode(), token.encode()), lambda request: page(request, "login.html", 401, error="Unknown token."))

    @app.get("/", response_class=HTMLResponse)
    def run_list(request: Request, task: str | None = None) -> HTMLResponse:
        rows = browse.run_rows(store)
        tasks: dict[str, int] = {}
        for row in rows:
            tasks[row.task] = tasks.get(row.task, 0) + 1
        shown = [r for r in rows if task is None or r.task == task]
        return page(request, "runs.html", rows=shown, tasks=tasks, task=task)

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str, wrong: bool = False, errors: bool = False,
                 below: str = "", answer: str | None = None, expected: str | None = None,
                 page_no: int = Query(1, alias="page", ge=1), per_page: int = browse.PER_PAGE) -> HTMLResponse:
        run = store.get_run(run_id)
        flt = browse.CallFilter(wrong=wrong, errors=errors, below=_confidence(below), answer=answer or None,
                                expected=expected or None)
        calls = browse.call_page(store, run["id"], flt, page_no, _bounded(per_page))
        others = [r for r in store.list_runs(run["task"]) if r["id"] != run["id"]][::-1]  # newest first
        checks = {result.name: result.rate() for result in run_checks(store, run)}  # judged ones as judged so far
        return page(request, "run.html", run=run, summary=browse.run_rows(store, run["id"])[0], calls=calls,
                    checks=checks,
                    flt=flt, links=_links(flt.query_string(), per_page), labels=browse.answer_labels(run),
                    others=others, projects=browse.label_projects_of(store, run["id"]), label_url=label_url)

    @app.get("/runs/{run_id}/item", response_class=HTMLResponse)
    def item_page(request: Request, run_id: str, item: str) -> HTMLResponse:
        run = store.get_run(run_id)
        return page(request, "item.html", run=run, call=browse.get_call(store, run["id"], item),
                    projects=browse.item_labels(store, run["id"], item), label_url=label_url)

    @app.get("/side", response_class=HTMLResponse)
    def side(request: Request, run: Annotated[list[str] | None, Query()] = None, only: bool = False,
             page_no: int = Query(1, alias="page", ge=1), per_page: int = browse.PER_PAGE) -> HTMLResponse:
        chosen = list(dict.fromkeys(run or []))
        if len(chosen) != 2:
            raise LlmbusError(f"side by side needs exactly two runs; {len(chosen)} chosen")
        a, b = store.get_run(chosen[0]), store.get_run(chosen[1])
        if a["task"] != b["task"]:
            raise LlmbusError(f"runs {a['id']} ({a['task']}) and {b['id']} ({b['task']}) are of different tasks: "
                              "side by side needs the same items")
        pairs, differing = browse.side_by_side(store, a["id"], b["id"], page_no, _bounded(per_page),
                                               only_disagreements=only)
        links = _links(urlencode({"run": [a["id"], b["id"]], **({"only": "1"} if only else {})}, doseq=True),
                       per_page)
        return page(request, "side.html", a=a, b=b, pairs=pairs, differing=differing, only=only, links=links)

    @app.get("/compare", response_class=HTMLResponse)
    def compare_page(request: Request, run: Annotated[list[str] | None, Query()] = None, task: str | None = None,
                     baseline: str | None = None) -> HTMLResponse:
        matrix = compare_runs(store, run or (), task=task or None, baseline=baseline or None, rounds=rounds)
        checks = list(dict.fromkeys(name for row in matrix.rows for name in row.assertions))
        return page(request, "compare.html", matrix=matrix, checks=checks)

    return app


def _confidence(text: str) -> float | None:
    """The filter form's "confidence below" box: empty means no filter."""
    if not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise LlmbusError(f"confidence below {text!r}: give a number between 0 and 1") from None


def _links(query: str, per_page: int) -> str:
    """What page links keep of the current view: its query, and the page size when it is not the default."""
    size = "" if per_page == browse.PER_PAGE else f"per_page={_bounded(per_page)}"
    return "&".join(part for part in (query, size) if part)


def _bounded(per_page: int) -> int:
    return min(max(1, per_page), MAX_PER_PAGE)


def shown(value: Any) -> str:
    """A logged value as text for a page cell: strings as they are, anything else as JSON, None as nothing."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def p_value(p: float | None) -> str:
    """A p-value for a cell: three decimals, '<0.001' below that."""
    return "<0.001" if p is not None and p < 0.001 else number(p)


def number(value: float | None, spec: str = ".3f") -> str:
    """A number for a page cell ('–' when missing or not finite)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)
