"""The web UIs' one sign-in helper: a token from `Authorization: Bearer` or the app's cookie."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

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
