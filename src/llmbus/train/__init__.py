"""Encoder training (MiniLM students and heads): below both trained judges (stop 3) and students (stop 5)."""
