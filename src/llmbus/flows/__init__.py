"""Stop 4: flows of atomic steps with durable state, tools, agents, guardrails, retrieval, ICL, review."""
