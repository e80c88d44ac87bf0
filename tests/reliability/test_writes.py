"""Safe writes (issue 11): atomic files with per-writer temp names, one report writer at a time per sweep, a
samples.jsonl whose last line a kill cut short, and overrides that hold `${...}` interpolations."""

import csv
import json
import logging
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, TINY, run_py

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


def _sample_rows(step, indices=(0, 1, 2)):
    return [
        {
            "step": step,
            "index": i,
            "prompt": f"p{i}",
            "policy": "ans",
            "reference": "ref",
            "ground_truth": "gt",
            "length": 3 + i,
            "win": float(i % 2),
        }
        for i in indices
    ]


def _write_cut(path, rows, cut):
    """`rows` as JSON Lines, then the first `cut` bytes of one more row and no newline (a kill during an append)."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:-1])
    Path(path).write_text(text + json.dumps(rows[-1], ensure_ascii=False)[:cut], encoding="utf-8")


def test_read_jsonl_skips_a_cut_last_line(tmp_path, caplog):
    path = tmp_path / files.SAMPLES
    rows = _sample_rows(0) + _sample_rows(2)
    rows[-1]["policy"] = "答案"  # a cut can split a multi-byte character
    cut = len(json.dumps(rows[-1], ensure_ascii=False).encode().split("答".encode())[0]) + 1
    path.write_bytes(
        b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows[:-1])
        + json.dumps(rows[-1], ensure_ascii=False).encode()[:cut]
    )
    with caplog.at_level(logging.WARNING, logger="dpo_lab.files"):
        assert files.read_jsonl(str(path)) == rows[:-1]
    assert "line 6" in caplog.text and "cut short" in caplog.text
    _write_cut(path, rows, 20)
    assert files.read_jsonl(str(path)) == rows[:-1]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")  # whole: nothing skipped
    assert files.read_jsonl(str(path)) == rows


def test_read_jsonl_refuses_a_bad_middle_line(tmp_path):
    path = tmp_path / files.SAMPLES
    lines = [json.dumps(r) for r in _sample_rows(0)]
    lines[1] = lines[1][:25]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path.name}, line 2: not a JSON row .*damaged"):
        files.read_jsonl(str(path))


def _fake_sweep(root, statuses):
    """A sweep dir whose jobs swept beta, with result.json as their jobs would leave it (no training)."""
    sweep = root / "sweep"
    sweep.mkdir()
    files.write_json(
        str(sweep / "sweep.json"), {"name": "t", "results_dir": str(root / "results"), "swept_keys": ["beta"]}
    )
    for num, status in enumerate(statuses):
        job = sweep / str(num)
        job.mkdir()
        files.write_json(str(job / files.JOB), {"name": f"beta=0.{num + 1}", "overrides": [f"beta=0.{num + 1}"]})
        _set_result(job, status, num)
    return sweep


def _set_result(job, status, num):
    history = [{"step": s, "eval/logratios/margins": 0.1 * s + num, "eval/rewards/accuracies": 0.5} for s in (2, 4)]
    files.write_json(
        str(job / files.RESULT),
        {
            "status": status,
            "eval/loss": 0.69 - num / 100,
            "eval_history": history,
            "eval/logratios/margins": 0.4 + num,
            "steps": 4,
        },
    )


def test_report_reads_a_cut_samples_file(tmp_path):
    from dpo_lab.sweeps.report import collect, write_report

    sweep = _fake_sweep(tmp_path, ["completed", "completed"])
    _write_cut(sweep / "0" / files.SAMPLES, _sample_rows(0) + _sample_rows(2), 30)
    rows = collect(str(sweep))
    assert [h["step"] for h in rows[0]["sample_history"]] == [0, 2]
    out = write_report(str(sweep))
    assert (Path(out) / "samples.png").read_bytes()[:4] == b"\x89PNG" and (Path(out) / "eval.png").is_file()
    assert len(list(csv.DictReader(open(sweep / "summary.csv")))) == 2
    assert leftovers(sweep, out) == []


def test_a_report_waits_for_the_writer_before_it_and_reads_after(tmp_path):
    """A writer that read the job dirs before another job ended must not replace a newer report with its snapshot:
    the second writer reads the job dirs only once the lock is its own."""
    from filelock import FileLock

    from dpo_lab.sweeps.report import REPORT_LOCK

    sweep = _fake_sweep(tmp_path, ["completed", "running"])
    code = (
        "import sys; from dpo_lab.sweeps.report import write_report; print('ready', flush=True); "
        "write_report(sys.argv[1])"
    )
    with FileLock(str(sweep / REPORT_LOCK)):  # as if another job's process were writing the report
        proc = subprocess.Popen([sys.executable, "-c", code, str(sweep)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        try:
            proc.wait(1.0)
        except subprocess.TimeoutExpired:
            pass
        assert proc.poll() is None and not (sweep / "summary.csv").exists()  # waiting for the lock
        _set_result(sweep / "1", "completed", 1)  # job 1 ends while it waits
    assert proc.wait(120) == 0
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert [r["status"] for r in rows] == ["completed", "completed"]


def test_sampler_start_drops_a_cut_tail(tmp_path):
    """Resuming at step 4 after a kill during step 4's append: the partial line and the step's other rows go, the
    rewritten file ends on a whole line (the next append does not glue onto it), and step 4 is sampled again."""
    from types import SimpleNamespace

    from dpo_lab.samples.sampling import Sampler

    class Stub(Sampler):
        def __init__(self, path):  # only what start() reads
            self.path, self.index, self.metric, self.main = str(path), [0, 1, 2], "win_rate", True
            self.history, self.values, self.reference, self.sampled = {}, {}, None, []
            self.trainer = SimpleNamespace(accelerator=SimpleNamespace(wait_for_everyone=lambda: None))

        def __call__(self, step):
            self.sampled.append(step)

    path = tmp_path / files.SAMPLES
    _write_cut(path, _sample_rows(0) + _sample_rows(2) + _sample_rows(4, [0, 1]), 40)
    sampler = Stub(path)
    sampler.start(4)
    assert sampler.sampled == [4] and sorted(sampler.history) == [0, 2] and sampler.reference == ["ref"] * 3
    assert path.read_text(encoding="utf-8").endswith("}\n")
    assert files.read_jsonl(str(path)) == _sample_rows(0) + _sample_rows(2) and leftovers(tmp_path) == []
    sampler._record(4, _sample_rows(4))
    sampler.run = None
    sampler._write(4, _sample_rows(4), 0.0)
    assert files.read_jsonl(str(path)) == _sample_rows(0) + _sample_rows(2) + _sample_rows(4)
    fresh = Stub(tmp_path / "fresh" / files.SAMPLES)  # a fresh run: no file yet
    (tmp_path / "fresh").mkdir()
    fresh.start(0)
    assert fresh.sampled == [0] and fresh.history == {} and (tmp_path / "fresh" / files.SAMPLES).read_text() == ""


@pytest.mark.e2e
def test_preflight_keeps_interpolations_in_overrides(tmp_path):
    """`${hydra:job.num}` on the command line is each job's to resolve; preflight used to resolve it before any job
    existed and stop with 'HydraConfig was not set'."""
    proc = run_py(
        "-m",
        TINY,
        "wandb.group=g${hydra:job.num}",
        "beta=0.1,0.2",
        "preflight_only=true",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Preflight: all 2 jobs check out" in proc.stdout and "HydraConfig" not in proc.stdout


@pytest.mark.slow
def test_joblib_sweep_report_holds_every_job(tmp_path):
    """Four jobs, two at a time (joblib): each worker writes the report as its job ends, at the same time as the
    other; the summary ends with every job as its result.json says, and no temp file is left anywhere."""
    sweep, results = tmp_path / "sweep", tmp_path / "results"
    proc = run_py(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "loss=sigmoid,ipo",
        "beta=0.1,0.5",
        TINY,
        "wandb.mode=disabled",
        "wandb.group=g${hydra:job.num}",
        f"hydra.sweep.dir={sweep}",
        f"results_dir={results}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "wandb.group=g${hydra:job.num}" in json.loads((sweep / "sweep.json").read_text())["overrides"]
    for summary in (sweep / "summary.csv", next(results.glob("*/summary.csv"))):
        rows = list(csv.DictReader(open(summary)))
        assert sorted(r["job"] for r in rows) == ["0", "1", "2", "3"]
        for row in rows:
            result = json.loads((sweep / row["job"] / files.RESULT).read_text())
            assert row["status"] == result["status"] == "completed"
            for key in ("eval/logratios/margins", "eval/rewards/margins", "steps"):
                assert float(row[key]) == pytest.approx(result[key], rel=1e-6)
    assert leftovers(sweep, results) == []
