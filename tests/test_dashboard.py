"""A sweep's W&B workspace view built from code (issue 24), on a real offline sweep: grouped by exactly the swept keys,
filtered to the sweep's group, every panel backed by a key the runs logged; the command's offline and --push paths.
No W&B server is reachable here: the push is exercised only up to W&B refusing it for want of credentials."""

import json
import os
import sys

import pytest
from helpers import TINY, run_dpo_lab, run_py

from dpo_lab import dashboard
from dpo_lab.errors import EXIT_USER_ERROR, UserError

pytest.importorskip("wandb_workspaces")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 2 x 2 offline sweep of the tiny model with checkpoint samples judged by the toy task."""
    tmp = tmp_path_factory.mktemp("dash")
    run_py(
        "-m",
        TINY,
        "loss=sigmoid,ipo",
        "beta=0.1,0.5",
        "samples.count=2",
        "samples.judge=task",
        "samples.max_new_tokens=8",
        "wandb.mode=offline",
        f"hydra.sweep.dir={tmp / 'sweep'}",
        f"results_dir={tmp / 'results'}",
        cwd=tmp,
        check=True,
    )
    return tmp / "sweep"


@pytest.mark.e2e
def test_the_view_groups_by_the_swept_keys_and_every_panel_is_logged(sweep):
    logged = dashboard.read_logged(str(sweep))
    view, missing = dashboard.build(str(sweep), logged)
    name = json.loads((sweep / "sweep.json").read_text())["name"]
    assert len(logged.runs) == 4 and logged.group == name and not logged.online
    rs = view.runset_settings
    assert [g.name for g in rs.groupby] == ["choices.loss", "beta"]  # the swept keys, in the sweep's order
    assert "Group" in str(rs.filters) and name in str(rs.filters)  # the sweep's wandb group, nothing else
    keys = dashboard.panel_keys(view)
    assert keys and keys <= logged.history | logged.summary, keys - (logged.history | logged.summary)
    assert {"samples/win_rate", "eval/rewards/accuracies", "samples/table", "perf/tokens_per_second"} <= keys
    assert "perf/mfu" in missing  # a CPU run logs no MFU: its panel is left out, not shown empty
    kinds = {type(p).__name__ for s in view.sections for p in s.panels}
    assert {"LinePlot", "ParallelCoordinatesPlot", "ParameterImportancePlot", "RunComparer"} <= kinds
    # a sweep over seeds groups replicates: seed is not a grouping key
    assert dashboard.group_keys(["seed", "beta"], logged.config) == ["beta"]


@pytest.mark.e2e
def test_the_command_writes_the_spec_offline_and_push_needs_credentials(sweep, tmp_path):
    proc = run_dpo_lab("dashboard", sweep, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:]
    spec = json.loads((sweep / dashboard.SPEC).read_text())
    grouping = spec["spec"]["section"]["runSets"][0]["grouping"]
    assert [g["name"] for g in grouping] == ["choices.value.loss", "beta.value"]  # W&B's paths of nested config
    assert f"wandb sync {sweep}/wandb\n" in proc.stdout  # as the sweep's own last lines say
    assert f"python -m dpo_lab dashboard {sweep} --push" in proc.stdout
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_BASE_URL")}
    env["WANDB_CONFIG_DIR"] = str(tmp_path / "no-login")  # no saved login either
    pushed = run_dpo_lab("dashboard", sweep, "--push", cwd=tmp_path, env=env)
    assert pushed.returncode == EXIT_USER_ERROR and "Traceback" not in pushed.stdout, pushed.stdout[-2000:]
    assert "needs a logged-in wandb: run `wandb login`" in pushed.stdout
    assert "dashboard_url" not in json.loads((sweep / "sweep.json").read_text())


def test_without_the_library_the_command_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)
    monkeypatch.setitem(sys.modules, "wandb_workspaces.workspaces", None)
    with pytest.raises(UserError, match=r"pip install 'dpo-lab\[dashboards\]'"):
        dashboard._library()


def test_a_sweep_end_never_fails_for_its_view(tmp_path, caplog):
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "x", "swept_keys": ["beta"]}))
    assert dashboard.at_sweep_end(str(tmp_path)) is None  # no wandb run at all: a warning, not an exception
    assert "No W&B view for" in caplog.text
