"""Molmo2 itself: `molmo2` (geometry and token budgets), `store` (where the weights come from), `engine` (load once, answer windows x questions), `host` (the Ray actor around the engine)."""
