"""URLs made safe to print: database and endpoint URLs can carry a password or an API key."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

# Query parameters whose values are credentials (`?api-key=…`, `?password=…` for libpq, `?sig=…` for SAS URLs).
SECRET_QUERY_WORDS = ("key", "token", "secret", "password", "passwd", "pwd", "sig", "auth", "credential")


def masked_url(url: str) -> str:
    """`url` with its password and secret-looking query values replaced by `***` (otherwise unchanged)."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    netloc = f"{userinfo.partition(':')[0]}:***@{host}" if at and ":" in userinfo else parts.netloc
    query = "&".join(_masked_pair(pair) for pair in parts.query.split("&")) if parts.query else ""
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # rebuilding would normalize forms such as sqlite:////abs/path
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _masked_pair(pair: str) -> str:
    name, eq, value = pair.partition("=")
    secret = any(word in name.lower() for word in SECRET_QUERY_WORDS)
    return f"{name}=***" if eq and value and secret else pair
