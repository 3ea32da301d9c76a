"""URLs printed in messages never carry a password or an API key."""

import pytest

from llmbus.redact import masked_url


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+psycopg://bob:p%40ss@db.example:5432/calls?sslmode=require",
     "postgresql+psycopg://bob:***@db.example:5432/calls?sslmode=require"),
    ("postgresql://bob:pw@h/db?password=pw2&application_name=llmbus",
     "postgresql://bob:***@h/db?password=***&application_name=llmbus"),
    ("https://x.example/openai/v1?api-key=sk-123&api-version=2024-06-01",
     "https://x.example/openai/v1?api-key=***&api-version=2024-06-01"),
    ("http://user:tok@[::1]:8080/v1", "http://user:***@[::1]:8080/v1"),
    # Nothing secret: returned exactly as given.
    ("sqlite:////tmp/calls.db", "sqlite:////tmp/calls.db"),
    ("postgresql://bob@h/db", "postgresql://bob@h/db"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
])
def test_masked_url(url: str, shown: str):
    assert masked_url(url) == shown
