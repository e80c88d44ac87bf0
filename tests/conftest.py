"""Shared test setup: an isolated cache and offline wandb, and a tiny model/data size so real runs take seconds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# A 1-layer, 32-wide Llama on 48 toy pairs: real TRL training, a few seconds per run on 2 CPU cores.
TINY = [
    "toy.n_train=48", "toy.n_eval=16", "toy.hidden_size=32", "toy.num_layers=1", "toy.num_heads=2",
    "toy.intermediate_size=64", "max_steps=4", "trainer.eval_steps=2", "trainer.save_steps=2",
    "trainer.logging_steps=1", "trainer.per_device_train_batch_size=4", "trainer.per_device_eval_batch_size=8",
    "trainer.max_length=256", "sft.steps=0", "samples.count=0",
]  # fmt: skip


@pytest.fixture(autouse=True, scope="session")
def _isolated_env(tmp_path_factory):
    """Keep tests off the user's cache and wandb account: everything offline, under a tmp dir."""
    cache = tmp_path_factory.mktemp("cache")
    saved = dict(os.environ)
    os.environ.update(DPO_LAB_CACHE=str(cache), WANDB_MODE="offline", WANDB_SILENT="true", HF_HUB_OFFLINE="1",
                      TOKENIZERS_PARALLELISM="false", WANDB_DIR=str(cache))  # fmt: skip
    os.environ.pop("WANDB_API_KEY", None)
    yield
    os.environ.clear()
    os.environ.update(saved)


def run_py(*args, cwd, check=False, timeout=600):
    """Run `python run.py ARGS` as a user would; returns the CompletedProcess (stdout+stderr merged)."""
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"run.py {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-4000:]}")
    return proc


def leet_records(run_dir) -> list:
    """Every record of an offline wandb run, read back with `wandb leet inspect --json`."""
    out = subprocess.run(["wandb", "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def leet_summary(run_dir) -> dict:
    out = subprocess.run(["wandb", "leet", "inspect", "--summary", "--json", str(run_dir)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return json.loads(out.stdout)
