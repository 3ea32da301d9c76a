"""The web UIs' one sign-in helper: a token from `Authorization: Bearer` or the app's cookie."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Form
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from llmbus.serve.gateway_keys import bearer_token


def request_token(request: Request, cookie: str) -> str:
    """The bearer token of the request's Authorization header (any case of `Bearer`), else the cookie's."""
    header = request.headers.get("authorization", "").strip()
    if header.lower().startswith("bearer "):  # another scheme (Basic) falls back to the cookie, as before
        return bearer_token(header)
    return request.cookies.get(cookie, "")


def sign_in(response: Response, cookie: str, token: str) -> None:
    """Keep the token in an httponly, same-site-strict cookie (script on the page never reads it)."""
    response.set_cookie(cookie, token, httponly=True, samesite="strict")


def sign_out(response: Response, cookie: str) -> None:
    """Clear the sign-in cookie."""
    response.delete_cookie(cookie, httponly=True, samesite="strict")


def add_sign_in_routes(app: FastAPI, cookie: str, accepts: Callable[[str], bool],
                       refused: Callable[[Request], Response], home: str = "/") -> None:
    """POST /login (the form's token, kept in the cookie when `accepts` it; else the `refused` page) and
    POST /logout: the same two routes on every UI."""

    @app.post("/login", response_model=None)
    def login(request: Request, token: str = Form("")) -> Response:
        if not accepts(token.strip()):
            return refused(request)
        response = RedirectResponse(home, status_code=303)
        sign_in(response, cookie, token.strip())
        return response

    @app.post("/logout")
    def logout() -> RedirectResponse:
        response = RedirectResponse("/login", status_code=303)
        sign_out(response, cookie)
        return response
