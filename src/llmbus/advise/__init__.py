"""Stop 1: does this task need an LLM? Size tier, cheap baselines, and LLM runs side by side."""
