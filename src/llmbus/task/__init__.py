"""The task: its spec, dataset, few-shot examples, output parsing and metrics (stop 1's vocabulary)."""
