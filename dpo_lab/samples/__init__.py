"""Checkpoint samples: answers of fixed prompts at every save (sampling.py), the numbers on them (metrics.py),
who judges them (judges.py) and the terminal view (viewer.py)."""
