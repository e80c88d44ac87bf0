"""Faults injected into real runs (issue 11): each ends in its status with the step, value or hint, stays in its
job, and keeps what was saved. A relaunch resumes from the last complete checkpoint to the same final metrics."""

import csv
import glob
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import ROOT, TINY, leet_summary, run_py

EVAL_KEYS = ("eval/loss", "eval/rewards/margins", "eval/rewards/accuracies", "eval/logps/chosen")


def start(*args, cwd, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def wait_for(path_glob: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not glob.glob(path_glob):
        assert proc.poll() is None, f"ended before {path_glob} appeared:\n{proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, f"no {path_glob} after {timeout} s"
        time.sleep(0.1)


def result(job_dir: Path) -> dict:
    return json.loads((job_dir / "result.json").read_text())


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def all_finite(checkpoint: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    return all(bool(torch.isfinite(t).all()) for t in load_file(checkpoint / "model.safetensors").values())


@pytest.mark.slow
def test_divergence_stops_at_its_step_keeps_the_last_good_checkpoint_and_the_sweep_goes_on(tmp_path):
    """lr=1e30 makes the gradients NaN at step 3 (checked at the optimizer step, before any save or sample)."""
    sweep = tmp_path / "sweep"
    proc = run_py(
        "-m",
        TINY,
        "lr=1e-4,1e30",
        "max_steps=6",
        "samples.count=2",
        "samples.max_new_tokens=4",
        "samples.judge=none",
        "samples.best_metric=repetition",
        f"hydra.sweep.dir={sweep}",
        f"results_dir={tmp_path / 'results'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stdout[-3000:]  # a job did not complete
    assert "Traceback" not in proc.stdout
    ok, bad = result(sweep / "0"), result(sweep / "1")
    assert ok["status"] == "completed" and ok["steps"] == 6
    assert bad["status"] == "diverged" and bad["diverged_step"] == 3 and bad["diverged_metric"] == "grad_norm"
    assert bad["diverged_value"] != bad["diverged_value"]  # NaN
    assert "became nan at step 3" in bad["error"] and "Lower lr" in bad["error"]
    kept = sorted(p.name for p in (sweep / "1" / "checkpoints").iterdir())
    assert kept == ["checkpoint-2"] and all_finite(sweep / "1" / "checkpoints" / "checkpoint-2")
    assert bad["last_checkpoint"].endswith("checkpoint-2")
    assert not (sweep / "1" / "final").exists()
    assert max(r["step"] for r in map(json.loads, (sweep / "1" / "samples.jsonl").read_text().splitlines())) <= 2
    rows = {r["job"]: r for r in csv.DictReader(open(sweep / "summary.csv"))}
    assert rows["1"]["status"] == "diverged" and rows["0"]["status"] == "completed"
    assert "| diverged |" in proc.stdout.replace("  ", " ")
    summary = leet_summary(bad["wandb_dir"])["summary"]
    assert summary["status"] == "diverged" and summary["diverged_step"] == 3


@pytest.mark.slow
def test_sigterm_stops_the_sweep_and_its_job_cleanly_and_a_relaunch_resumes(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        TINY,
        "seed=1,2",
        "max_steps=60",
        "trainer.save_steps=10",
        "trainer.eval_steps=60",
        "trainer.logging_steps=50",
        "wandb.mode=disabled",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = start(*args, cwd=tmp_path)
    wait_for(str(sweep / "0" / "checkpoints" / "checkpoint-*" / "trainer_state.json"), proc)
    pid = result(sweep / "0")["pid"]
    proc.send_signal(signal.SIGTERM)  # to the sweep process only, as `kill PID` does
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out[-3000:]
    assert "Stopped. The same command resumes" in out and "Traceback" not in out
    stopped = result(sweep / "0")
    assert stopped["status"] == "interrupted" and "SIGTERM" in stopped["error"]
    assert stopped["last_checkpoint"] and os.path.isdir(stopped["last_checkpoint"])
    assert gone(pid), "the job's process outlived the sweep"
    assert not (sweep / "1" / "result.json").exists()  # the sweep stopped: job 1 never started

    again = run_py(*args, cwd=tmp_path, check=True)
    assert "2/2 jobs completed" in again.stdout
    resumed = result(sweep / "0")
    assert resumed["status"] == "completed" and resumed["steps"] == 60
    assert resumed["resumed_from"] == stopped["last_checkpoint"]


@pytest.mark.slow
def test_a_sweep_killed_with_minus_9_stops_its_job_instead_of_orphaning_it(tmp_path):
    sweep = tmp_path / "sweep"
    proc = start(
        "-m",
        TINY,
        "seed=1",
        "max_steps=2000",
        "trainer.save_steps=50",
        "trainer.eval_steps=2000",
        "wandb.mode=disabled",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    wait_for(str(sweep / "0" / "checkpoints" / "checkpoint-*" / "trainer_state.json"), proc)
    pid = result(sweep / "0")["pid"]
    proc.kill()
    proc.wait()
    deadline = time.time() + 60
    while not gone(pid):
        assert time.time() < deadline, "the job trained on as an orphan"
        time.sleep(0.2)
    assert result(sweep / "0")["status"] == "interrupted"
    assert "sweep process" in (sweep / "0" / "train.log").read_text()


@pytest.mark.slow
def test_a_second_launch_into_a_busy_job_dir_is_refused_and_touches_nothing(tmp_path):
    job = tmp_path / "job"
    args = [
        TINY,
        "max_steps=2000",
        "trainer.save_steps=1000",
        "trainer.eval_steps=2000",
        "wandb.mode=disabled",
        f"hydra.run.dir={job}",
    ]
    first = start(*args, cwd=tmp_path)
    wait_for(str(job / "checkpoints"), first)  # training has begun
    before = {p.name: p.stat().st_mtime_ns for p in job.iterdir() if p.is_file() and p.name != "train.log"}
    second = run_py(*args, cwd=tmp_path)
    assert second.returncode == 2 and "Traceback" not in second.stdout
    assert f"is in use: pid {result(job)['pid']}" in second.stdout
    assert {p.name: p.stat().st_mtime_ns for p in job.iterdir() if p.is_file() and p.name != "train.log"} == before
    assert result(job)["status"] == "running"
    first.send_signal(signal.SIGTERM)  # in-process job (a single run): it records `interrupted` itself
    out = first.communicate(timeout=120)[0]
    assert first.returncode == 130 and result(job)["status"] == "interrupted"
    # a single run's own way back, not the sweep's "the same command resumes"
    assert f"resumes the run from its last checkpoint: python run.py {' '.join(args[:-1])} hydra.run.dir={job}\n" in out
    assert "The same command resumes" not in out and (job / ".lock").read_text() == ""


@pytest.mark.slow
def test_a_killed_job_is_reported_killed_with_the_oom_hint_and_the_sweep_goes_on(tmp_path):
    """SIGKILL to a job's process is what the kernel's OOM killer does; the job cannot record it, its sweep does."""
    sweep = tmp_path / "sweep"
    proc = start(
        "-m",
        TINY,
        "max_steps=2000,4",
        "trainer.save_steps=50",
        "trainer.eval_steps=2000",
        "wandb.mode=disabled",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    wait_for(str(sweep / "0" / "checkpoints" / "checkpoint-*" / "trainer_state.json"), proc)
    os.kill(result(sweep / "0")["pid"], signal.SIGKILL)
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 1 and "1/2 jobs completed" in out, out[-3000:]
    killed = result(sweep / "0")
    assert (
        killed["status"] == "killed"
        and "SIGKILL" in killed["error"]
        and "per_device_train_batch_size" in killed["error"]
    )
    assert result(sweep / "1")["status"] == "completed"


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails (EFBIG) instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (250_000, 250_000))  # the tiny model's optimizer.pt is ~330 kB


@pytest.mark.slow
def test_a_full_disk_during_a_save_is_a_clear_failure_and_the_relaunch_steps_back(tmp_path):
    job = tmp_path / "job"
    args = [TINY, "wandb.mode=disabled", f"hydra.run.dir={job}"]
    full = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_limit_file_size,
    )
    assert full.returncode == 1 and "Traceback" not in full.stdout, full.stdout[-3000:]
    failed = result(job)
    assert failed["status"] == "failed" and "disk is full" in failed["error"] and "resumes" in failed["error"]
    assert (job / "checkpoints" / "checkpoint-2").is_dir()  # cut off: optimizer.pt hit the limit

    again = run_py(*args, cwd=tmp_path, check=True)
    assert "checkpoint-2 is incomplete" in again.stdout and "training starts over" in again.stdout
    done = result(job)
    assert done["status"] == "completed" and done["steps"] == 4
    assert (job / "checkpoints" / "incomplete-checkpoint-2").is_dir()  # kept aside, not deleted


@pytest.mark.slow
def test_kill_9_at_a_random_step_and_a_cut_off_checkpoint_still_resume_to_the_same_metrics(tmp_path):
    """The job is killed at a random step; its newest checkpoint is then cut off as a kill mid-save leaves it. The
    relaunch steps back to the one before and ends with the uninterrupted run's eval metrics."""
    args = [TINY, "max_steps=40", "trainer.save_steps=4", "trainer.eval_steps=40", "wandb.mode=disabled"]
    straight = run_py(*args, f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path, check=True)
    assert straight.returncode == 0
    job = tmp_path / "job"
    kill_after = random.Random().choice([2, 3, 4, 5, 6])  # checkpoints saved before the kill
    proc = start(*args, f"hydra.run.dir={job}", cwd=tmp_path)
    wait_for(str(job / "checkpoints" / f"checkpoint-{4 * kill_after}" / "trainer_state.json"), proc)
    proc.kill()
    proc.wait()
    newest = max((job / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    (newest / "trainer_state.json").unlink()
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    again = run_py(*args, f"hydra.run.dir={job}", cwd=tmp_path, check=True)
    assert f"{newest.name} is incomplete" in again.stdout
    resumed, reference = result(job), result(tmp_path / "straight")
    assert resumed["status"] == "completed" and resumed["steps"] == 40
    assert int(resumed["resumed_from"].rsplit("-", 1)[1]) < int(newest.name.split("-")[1])
    for key in EVAL_KEYS:
        assert resumed[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-6), (key, kill_after)


@pytest.mark.slow
def test_an_unreachable_wandb_server_falls_back_to_offline_and_says_how_to_sync(tmp_path):
    env = {
        **os.environ,
        "WANDB_MODE": "online",
        "WANDB_BASE_URL": "http://127.0.0.1:9",
        "WANDB_INIT_TIMEOUT": "10",
        "WANDB_API_KEY": "local-" + "0" * 40,
    }
    proc = run_py(TINY, "wandb.mode=online", f"hydra.run.dir={tmp_path / 'job'}", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    done = result(tmp_path / "job")
    assert done["status"] == "completed" and "offline-run-" in done["wandb_dir"]
    assert "could not start an online run" in proc.stdout and f"wandb sync {done['wandb_dir']}" in proc.stdout
    assert leet_summary(done["wandb_dir"])["summary"]["status"] == "completed"


@pytest.mark.slow
def test_wandb_dying_mid_run_costs_a_warning_not_the_training(tmp_path):
    job = tmp_path / "job"
    proc = start(
        TINY,
        "wandb.mode=offline",
        "max_steps=300",
        "trainer.save_steps=100",
        "trainer.eval_steps=100",
        f"hydra.run.dir={job}",
        cwd=tmp_path,
    )
    wait_for(str(job / "checkpoints"), proc)
    services = [p for p in psutil.Process(proc.pid).children(recursive=True) if "wandb-core" in " ".join(p.cmdline())]
    assert services, "no wandb service process to kill"
    for p in services:
        p.kill()
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]
    done = result(job)
    assert done["status"] == "completed" and done["steps"] == 300
    assert "wandb could not close the run" in out
