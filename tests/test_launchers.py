"""Spreading a sweep with existing engines: Hydra's joblib and submitit launchers, and the GPU claim."""

import csv
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from helpers import ROOT, TINY, run_py

from dpo_lab.gpus import claim_slot


@pytest.mark.e2e
@pytest.mark.smoke
@pytest.mark.parametrize("launcher", ["gpus", "local"])  # joblib, submitit's local executor
def test_sweep_runs_under_launcher(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    proc = run_py(
        "-m",
        f"hydra/launcher={launcher}",
        "loss=sigmoid,ipo",
        TINY,
        "wandb.mode=disabled",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        check=True,
    )
    assert "2/2 jobs completed" in proc.stdout
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert sorted(r["name"] for r in rows) == ["loss=ipo", "loss=sigmoid"]
    assert all(r["status"] == "completed" for r in rows)
    if launcher == "local":
        assert (sweep / ".submitit").is_dir()


def test_no_two_jobs_share_a_gpu_slot(tmp_path):
    held, peak, lock = [], [0], threading.Lock()

    def job():
        with claim_slot(str(tmp_path), count=2, poll_s=0.05) as slot:
            with lock:
                assert slot not in held
                held.append(slot)
                peak[0] = max(peak[0], len(held))
            time.sleep(0.3)
            with lock:
                held.remove(slot)

    threads = [threading.Thread(target=job) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2  # both slots used at once, never more, never the same one twice


def test_jobs_per_gpu_spreads_over_gpus_then_shares(tmp_path, monkeypatch):
    from contextlib import ExitStack

    from dpo_lab import gpus

    monkeypatch.setattr(gpus, "visible_gpu_count", lambda: 2)
    with ExitStack() as held:  # four jobs at once on two GPUs, two per GPU
        envs = [held.enter_context(gpus.gpu_env(str(tmp_path), jobs_per_gpu=2)) for _ in range(4)]
        assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0", "1"]


@pytest.mark.e2e
def test_two_process_accelerate_launch(tmp_path):
    """DDP over two CPU processes (gloo): one job dir, one wandb run, written by rank 0. The warm-up and the toy
    reward model are built once (outside the process group) and the checkpoint samples are answered and judged by
    both ranks, gathered and written once."""
    job = tmp_path / "job"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(ROOT / "run.py"),
        f"hydra.run.dir={job}",
        TINY,
        "sft.steps=8",
        "sft.batch_size=8",
        "samples.count=3",
        "samples.max_new_tokens=16",
        "reward_model.steps=8",
    ]
    # A cache of its own: with the tokenized data already cached (by an earlier test), every rank read it from one
    # place and the test passed where a fresh cache failed (TRL's reference log-probs file in rank 0's temp dir).
    env = {**os.environ, "DPO_LAB_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "[rank 0] " in proc.stdout and "[rank 1] " in proc.stdout  # which rank said what, on the shared console
    result = json.loads((job / "result.json").read_text())
    assert result["status"] == "completed" and result["world_size"] == 2 and result["steps"] == 4
    assert (
        result["reference_logps"] == "computed" and (job / ".lock").read_text() == ""
    )  # the finished job's lock names nobody
    assert len(list((job / "wandb").glob("offline-run-*"))) == 1
    rows = [json.loads(line) for line in (job / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    # 3 prompts split 2 + 1(+1 padding) over the ranks: each step has each prompt exactly once, in order.
    assert [(r["step"], r["index"]) for r in rows] == [
        (s, i) for s in (0, 2, 4) for i in sorted({r["index"] for r in rows})
    ]
    assert len({r["index"] for r in rows}) == 3 and all(r["reference"] is not None for r in rows)
    assert all(r["win"] in (0.0, 0.5, 1.0) for r in rows)  # each rank judged its share with its own judge
