"""Safe writes (issue 11): atomic files with per-writer temp names, one report writer at a time per sweep, a
samples.jsonl whose last line a kill cut short, and overrides that hold `${...}` interpolations."""

from conftest import TINY, run_py


def test_preflight_keeps_interpolations_in_overrides(tmp_path):
    """`${hydra:job.num}` on the command line is each job's to resolve; preflight used to resolve it before any job
    existed and stop with 'HydraConfig was not set'."""
    proc = run_py("-m", TINY, "wandb.group=g${hydra:job.num}", "beta=0.1,0.2", "preflight_only=true",
                  f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Preflight: all 2 jobs check out" in proc.stdout and "HydraConfig" not in proc.stdout
