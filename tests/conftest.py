"""Shared test setup: an isolated cache and offline wandb, the `slow` and `e2e` markers. The helpers the test files
share (train_job, run_py, compose_cfg, tiny_toy, ...) are in helpers.py: `from helpers import ...`.

The training tests run on `experiment=tiny` (conf/experiment/tiny.yaml): real TRL training, a few seconds per run.
Tests marked `slow` train the default model; they are deselected unless `--run-slow` is given or CI is set
(.ci/run sets it), so a local `python -m pytest -q` stays quick and CI runs everything.

Tests marked `e2e` train, run run.py or build the toy model (every `slow` test is one too, marked here);
`python -m pytest -q -m "not e2e"` leaves them all out: the fast tier, about a minute.
"""

import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (CI always does)")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the markers added here
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "slow" in item.keywords:  # slow tests are e2e too, so `-m "not e2e"` leaves them out under CI as well
            item.add_marker(pytest.mark.e2e)
    if config.getoption("--run-slow") or os.environ.get("CI"):
        return
    slow = [item for item in items if "slow" in item.keywords]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if "slow" not in item.keywords]


@pytest.fixture(autouse=True, scope="session")
def _isolated_env(tmp_path_factory):
    """Keep tests off the user's cache and wandb account: everything offline, under a tmp dir."""
    cache = tmp_path_factory.mktemp("cache")
    saved = dict(os.environ)
    os.environ.update(
        DPO_LAB_CACHE=str(cache),
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        WANDB_DIR=str(cache),
    )
    os.environ.pop("WANDB_API_KEY", None)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def checkpoint(tmp_path):
    """A copy of the tiny toy model: a complete save_pretrained directory to break."""
    import shutil

    from helpers import tiny_toy

    path = tmp_path / "ckpt"
    shutil.copytree(tiny_toy()["model"], path)
    return path
