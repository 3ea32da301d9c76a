"""Stop 2: prompt-driven development — compare runs of one task across spec versions and models, browse them."""
