"""What a sweep's jobs share (dpo_lab/reuse.py): reference log-probs and tokenized data, computed once per key."""

import csv
import json
import os
from pathlib import Path

import pytest
from helpers import TINY, run_py, tiny_toy, train_job

pytestmark = pytest.mark.e2e  # every test trains

EVAL = ("eval/loss", "eval/rewards/margins", "eval/logps/chosen", "eval/logps/rejected")


@pytest.fixture
def cold_cache(tmp_path, monkeypatch):
    """A cache with the session's toy data and models but none of reuse.py's artifacts."""
    tiny_toy()  # built into the session cache
    session = Path(os.environ["DPO_LAB_CACHE"])
    cache = tmp_path / "cache"
    cache.mkdir()
    for entry in session.iterdir():
        if entry.is_dir() and not entry.name.startswith(("ref-logps-", "tokens-", ".")):
            (cache / entry.name).symlink_to(entry)
    monkeypatch.setenv("DPO_LAB_CACHE", str(cache))
    return cache


@pytest.mark.smoke
def test_second_job_reuses_reference_logps_without_a_reference_pass(tmp_path, cold_cache):
    first = train_job(tmp_path / "a", [])
    assert first["status"] == "completed", first.get("error")
    assert first["reference_logps"] == "computed" and first["reference_batches"] > 0
    # Another loss, beta and lr: the reference log-probs do not depend on them.
    second = train_job(tmp_path / "b", ["loss=ipo", "beta=0.5", "lr=1e-4"])
    assert second["status"] == "completed", second.get("error")
    assert second["reference_logps"] == "reused" and second["reference_batches"] == 0
    assert len(list(cold_cache.glob("ref-logps-*/DONE"))) == 2  # train and eval, once each
    # LoRA's reference is the base with the adapter off: the same weights, so the same log-probs.
    lora = train_job(tmp_path / "lora", ["peft=lora"])
    assert lora["status"] == "completed", lora.get("error")
    assert lora["reference_logps"] == "reused" and lora["reference_batches"] == 0


@pytest.mark.parametrize("change", ["trainer.max_length=128", "data.prompt_format=alpaca", "loss.ld_alpha=0.5"])
def test_a_change_that_alters_reference_logps_is_not_reused(tmp_path, cold_cache, change):
    assert train_job(tmp_path / "a", ["max_steps=1"])["reference_logps"] == "computed"
    changed = train_job(tmp_path / "b", ["max_steps=1", change])
    assert changed["status"] == "completed", changed.get("error")
    assert changed["reference_logps"] == "computed" and changed["reference_batches"] > 0


def test_reused_and_live_reference_give_the_same_results(tmp_path, cold_cache):
    train_job(tmp_path / "warm", [])  # computes and caches the log-probs
    reused = train_job(tmp_path / "reused", [])
    live = train_job(tmp_path / "live", ["trainer.precompute_ref_log_probs=false"])
    assert (reused["reference_logps"], live["reference_logps"]) == ("reused", "live")
    for key in EVAL:
        assert reused[key] == pytest.approx(live[key], rel=1e-4, abs=1e-5), key
    assert [h["eval/loss"] for h in reused["eval_history"]] == pytest.approx(
        [h["eval/loss"] for h in live["eval_history"]], rel=1e-4
    )


def test_tokenized_data_is_shared(tmp_path, cold_cache):
    train_job(tmp_path / "a", ["max_steps=1"])
    tokens = sorted(p.parent.name for p in cold_cache.glob("tokens-*/DONE"))
    assert len(tokens) == 2  # train and eval
    train_job(tmp_path / "b", ["max_steps=1", "beta=0.5"])
    assert sorted(p.parent.name for p in cold_cache.glob("tokens-*/DONE")) == tokens  # loaded, not rebuilt
    train_job(tmp_path / "c", ["max_steps=1", "trainer.max_length=128"])  # TRL drops rows by max_length: new key
    assert len(list(cold_cache.glob("tokens-*/DONE"))) == 4


def test_concurrent_jobs_have_their_own_process_run_and_dir(tmp_path):
    """Two jobs at once on one machine (joblib, 2 workers): separate processes, wandb runs and job dirs, each with
    its share of the CPU cores; seconds_to_first_step reaches the summary."""
    sweep = tmp_path / "sweep"
    proc = run_py(
        "-m",
        "hydra/launcher=gpus",
        "hydra.launcher.n_jobs=2",
        "loss=sigmoid,ipo",
        "beta=0.1,0.5",
        TINY,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    results = [json.loads((sweep / str(i) / "result.json").read_text()) for i in range(4)]
    assert all(r["status"] == "completed" for r in results)
    assert len({r["pid"] for r in results}) == 4 and os.getpid() not in {r["pid"] for r in results}
    assert len({r["wandb_run_id"] for r in results}) == 4 and len({r["job_dir"] for r in results}) == 4
    for i in range(4):
        assert len(list((sweep / str(i) / "wandb").glob("offline-run-*"))) == 1
    assert {r["cpu_threads"] for r in results} == {max(1, len(os.sched_getaffinity(0)) // 2)}
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert all(float(r["seconds_to_first_step"]) > 0 for r in rows)


def test_spawn_start_method_runs_a_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_py(
        "-m", "start_method=spawn", "beta=0.1", TINY, "wandb.mode=disabled", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert json.loads((sweep / "0" / "result.json").read_text())["status"] == "completed"
