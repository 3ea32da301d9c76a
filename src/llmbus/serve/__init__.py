"""Serving: the OpenAI-compatible gateway (routes, keys and budgets, streaming), its HTTP app, the report."""
