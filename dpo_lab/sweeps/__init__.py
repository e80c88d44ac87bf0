"""The sweep machinery around the jobs: the Hydra callback (sweep.py), preflight of every job (preflight.py), and
the report with its tables (report.py) and figures (plots.py)."""
