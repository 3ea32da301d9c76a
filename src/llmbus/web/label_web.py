"""The labeling web UI: FastAPI with server-rendered Jinja2 pages, no JavaScript build.

Annotators sign in with their token (a cookie keeps it), see the project's markdown instructions and the next
queued item with the run's answer, and label it with a click or a key: 1–9 for labels (or scores), S to skip,
U to undo the last label, Ctrl+Enter to submit a correction. The page shows only the project's `show_fields`
(default: the input field) besides the answer, so annotators label without the gold answer or the model's
confidence. Export gives the annotator's own labels as JSONL; /agreement shows Cohen's and Fleiss' kappa.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt

from llmbus.pages import environment
from llmbus.quality import label
from llmbus.store import Store
from llmbus.web.auth import add_sign_in_routes, request_token

TEMPLATES = Path(__file__).parent / "templates" / "label"
COOKIE = "llmbus_label_token"


def create_app(store: Store, project: str) -> FastAPI:
    """The labeling app for one project (the store and project are passed in, never global)."""
    meta = label.get_project(store, project)
    templates = Jinja2Templates(env=environment(TEMPLATES))
    # Instructions are the project owner's markdown; raw HTML in it is not rendered.
    instructions_html = MarkdownIt("commonmark", {"html": False}).render(meta["instructions"] or "")
    app = FastAPI(title=f"llmbus label · {project}", docs_url=None, redoc_url=None, openapi_url=None)

    def who(request: Request) -> str | None:
        found = label.annotator_for(store, request_token(request, COOKIE))
        return found[1] if found and found[0] == project else None

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"project": project, **context}, status_code=status)

    def home() -> RedirectResponse:
        return RedirectResponse("/", status_code=303)

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> HTMLResponse:
        return page(request, "login.html", error=None)

    def is_annotator(token: str) -> bool:
        found = label.annotator_for(store, token)
        return found is not None and found[0] == project

    add_sign_in_routes(app, COOKIE, is_annotator, lambda request: page(
        request, "login.html", status=401, error="Unknown token for this project."))

    @app.get("/", response_class=HTMLResponse, response_model=None)
    def queue(request: Request, note: str | None = None) -> Response:
        annotator = who(request)
        if annotator is None:
            return RedirectResponse("/login", status_code=303)
        done, total = label.progress(store, project, annotator)
        item = label.next_item(store, project, annotator)
        # Only what the project shows reaches the page: no gold answer or confidence unless listed.
        shown = label.annotator_view(item, label.get_project(store, project)["show_fields"]) if item else None
        return page(request, "item.html", annotator=annotator, item=shown, schema=meta["schema"], done=done,
                    total=total, note=note, instructions=instructions_html)

    @app.post("/label", response_model=None)
    def save(request: Request, item_id: str = Form(...), value: str | None = Form(None),
             correction: str | None = Form(None), skip: str | None = Form(None)) -> Response:
        annotator = who(request)
        if annotator is None:
            return RedirectResponse("/login", status_code=303)
        try:
            label.save_label(store, project, annotator, item_id, value, correction, skipped=skip is not None)
        except label.LabelError as exc:
            return page(request, "error.html", status=400, message=str(exc))
        return home()

    @app.post("/undo", response_model=None)
    def undo(request: Request) -> Response:
        annotator = who(request)
        if annotator is None:
            return RedirectResponse("/login", status_code=303)
        undone = label.undo(store, project, annotator)
        return RedirectResponse(f"/?note=undid+{undone}" if undone else "/?note=nothing+to+undo", status_code=303)

    @app.get("/export", response_model=None)
    def export(request: Request) -> Response:
        annotator = who(request)
        if annotator is None:
            return RedirectResponse("/login", status_code=303)
        # An annotator's own labels with only the fields they were shown (the owner exports all: the CLI).
        return StreamingResponse(label.export_jsonl(store, project, annotator), media_type="application/x-ndjson",
                                 headers={"Content-Disposition": f'attachment; filename="{project}.jsonl"'})

    @app.get("/agreement", response_class=HTMLResponse, response_model=None)
    def agreement(request: Request) -> Response:
        if who(request) is None:
            return RedirectResponse("/login", status_code=303)
        return page(request, "agreement.html", stats=label.agreement(store, project))

    return app


def serve(store: Store, project: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the labeling UI until interrupted."""
    import uvicorn

    uvicorn.run(create_app(store, project), host=host, port=port, log_level="warning")
