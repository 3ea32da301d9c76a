"""Runs: answer a task's items with a model, every call logged (engine), and their summaries."""
