"""Helpers the test files share: paths, the tiny experiment's override, composing a config, building the tiny toy,
running a job in-process (`train_job`) or as a user would (`run_py`, `run_dpo_lab`), and reading back offline wandb
runs and PNGs.

Import them with `from helpers import ...` (tests/ is on sys.path: pytest puts it there for tests/conftest.py).
Fixtures and pytest hooks stay in conftest.py.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
TINY = "experiment=tiny"
# The CLIs of the packages this interpreter has, whatever PATH holds (.ci/run's lower-bound venv is not activated).
WANDB = [sys.executable, "-m", "wandb"]
# Every loss file (conf/loss/*.yaml) by name: test_config.py composes each, test_train.py trains each.
LOSS_FILES = sorted(p.stem for p in (CONF / "loss").glob("*.yaml"))


def compose_cfg(overrides=()):
    """The config run.py would compose from these overrides (Hydra's compose API, no job started)."""
    from hydra import compose, initialize_config_dir

    from dpo_lab.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def tiny_toy(cache_dir=None) -> dict:
    """Paths of the toy data and model `experiment=tiny` trains on (built once per cache)."""
    from omegaconf import OmegaConf

    from dpo_lab.toy.task import ensure_toy

    return ensure_toy(cache_dir=cache_dir, **OmegaConf.to_container(compose_cfg([TINY]).toy))


def train_job(job_dir, overrides) -> dict:
    """Prepare and execute one `experiment=tiny` job in this process, as run.py does; returns its result."""
    from dpo_lab.job import execute
    from dpo_lab.jobdir import prepare
    from dpo_lab.train import train

    cfg = compose_cfg([TINY, *overrides])
    prepare(cfg, str(job_dir), name="test", group="tests", overrides=list(overrides), choices={})
    return execute(str(job_dir), train)


def run_py(*args, cwd, check=False, timeout=600, env=None):
    """Run `python run.py ARGS` as a user would; returns the CompletedProcess (stdout+stderr merged)."""
    proc = _run([str(ROOT / "run.py"), *args], cwd, timeout, env)
    if check and proc.returncode != 0:
        raise AssertionError(f"run.py {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-4000:]}")
    return proc


def run_dpo_lab(*args, cwd, timeout=300, env=None):
    """Run `python -m dpo_lab ARGS` as a user would; returns the CompletedProcess (stdout+stderr merged)."""
    return _run(["-m", "dpo_lab", *map(str, args)], cwd, timeout, env)


def _run(argv, cwd, timeout, env):
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env=env,
    )


def png_size(path) -> tuple:
    """(width, height) in pixels, from the PNG's header."""
    head = open(path, "rb").read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def leet_records(run_dir) -> list:
    """Every record of an offline wandb run, read back with `wandb leet inspect --json`."""
    out = subprocess.run(
        [*WANDB, "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True, check=True
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def leet_summary(run_dir) -> dict:
    out = subprocess.run(
        [*WANDB, "leet", "inspect", "--summary", "--json", str(run_dir)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)
