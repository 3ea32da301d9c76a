"""Stop 3: eval with intervals and gates, LLM and trained judges, human labels, calibration, active learning."""
