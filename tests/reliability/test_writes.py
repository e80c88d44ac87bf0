"""Safe writes (issue 11): atomic files with per-writer temp names, one report writer at a time per sweep, a
samples.jsonl whose last line a kill cut short, and overrides that hold `${...}` interpolations."""

import multiprocessing
import os
from pathlib import Path

import pytest

from conftest import TINY, run_py
from dpo_lab import files


def leftovers(*dirs):
    """Temp files of atomic_write (`.<name>.tmp<random>`), and the fixed `<name>.tmp` of the old write_json."""
    return [str(p) for d in dirs for p in Path(d).rglob("*") if ".tmp" in p.name]


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "result.json"
    files.write_json(str(path), {"status": "running"})
    with pytest.raises(RuntimeError):
        with files.atomic_write(str(path)) as f:
            f.write('{"status": "comp')  # a writer that dies midway
            raise RuntimeError("killed")
    assert files.read_json(str(path)) == {"status": "running"}
    assert leftovers(tmp_path) == []
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~files._UMASK)  # not mkstemp's private 0600


def test_atomic_write_temp_keeps_the_extension(tmp_path):
    """savefig picks the format by the name it is given: the temp name must end as the target does."""
    seen = []
    with files.atomic_write(str(tmp_path / "eval.png"), mode=None) as tmp:
        seen.append(tmp)
        Path(tmp).write_bytes(b"\x89PNG")
    assert seen[0].endswith(".png") and os.path.dirname(seen[0]) == str(tmp_path)
    assert (tmp_path / "eval.png").read_bytes() == b"\x89PNG" and leftovers(tmp_path) == []


def _hammer(path, n, worker):
    for i in range(n):
        files.write_json(path, {"worker": worker, "i": i, "pad": "x" * 4000})


def test_processes_writing_one_file_at_once(tmp_path):
    """A fixed `<path>.tmp` lets one writer rename another's half-written temp file (or find it gone); each writer's
    own temp name cannot."""
    path = str(tmp_path / "summary.json")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(path, 150, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert files.read_json(path)["i"] == 149 and leftovers(tmp_path) == []


def test_preflight_keeps_interpolations_in_overrides(tmp_path):
    """`${hydra:job.num}` on the command line is each job's to resolve; preflight used to resolve it before any job
    existed and stop with 'HydraConfig was not set'."""
    proc = run_py("-m", TINY, "wandb.group=g${hydra:job.num}", "beta=0.1,0.2", "preflight_only=true",
                  f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Preflight: all 2 jobs check out" in proc.stdout and "HydraConfig" not in proc.stdout
