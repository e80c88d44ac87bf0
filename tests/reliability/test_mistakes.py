"""User mistakes with paths, permissions and devices (issue 11): each ends in one paragraph naming the file or key
and the fix, a non-zero exit, and no traceback."""

import json
import os

import pytest
from helpers import CONF, TINY, run_py, tiny_toy

from dpo_lab.errors import UserError


def assert_refused(proc, *needles):
    """One clear refusal: non-zero exit, no traceback, and every needle in the output."""
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout, proc.stdout[-3000:]
    for needle in needles:
        assert needle in proc.stdout, f"{needle!r} not in:\n{proc.stdout[-3000:]}"


@pytest.mark.e2e
@pytest.mark.parametrize(
    "text, says",
    [("not json{", "is not valid JSON"), ('{"hidden_size": 32}', "has no model_type"), ("[1, 2]", "has no model_type")],
)
def test_a_corrupt_model_config_is_refused_naming_the_file(checkpoint, text, says):
    from dpo_lab.modeling import check_model_path

    (checkpoint / "config.json").write_text(text)
    with pytest.raises(UserError, match=says) as e:
        check_model_path(str(checkpoint))
    assert str(checkpoint / "config.json") in str(e.value) and "model.path" in str(e.value)
    assert check_model_path(tiny_toy()["model"]) == tiny_toy()["model"]  # an intact one passes


@pytest.mark.e2e
def test_a_sweep_over_a_corrupt_model_config_stops_at_preflight(checkpoint, tmp_path):
    (checkpoint / "config.json").write_text("not json{")
    sweep = tmp_path / "sweep"
    proc = run_py(
        "-m",
        TINY,
        "model=hf",
        f"model.path={checkpoint}",
        "beta=0.1,0.2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=300,
    )
    assert_refused(
        proc,
        "2 of 2 jobs would fail",
        f"{checkpoint / 'config.json'} (the config.json of model.path) is not valid JSON",
    )
    assert not sweep.exists()


@pytest.mark.e2e
@pytest.mark.parametrize("breakage", ["missing", "garbage", "wrong structure"])
def test_a_broken_tokenizer_is_a_user_error(checkpoint, breakage):
    from dpo_lab.modeling import load_tokenizer

    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if breakage == "missing":
            (checkpoint / name).unlink()
    if breakage != "missing":
        (checkpoint / "tokenizer.json").write_text("garbage" if breakage == "garbage" else json.dumps({"model": {}}))
    with pytest.raises(UserError, match="Cannot load the tokenizer of") as e:
        load_tokenizer(str(checkpoint))
    assert "\n" not in str(e.value) and "tokenizer.save_pretrained" in str(e.value)


@pytest.mark.e2e
@pytest.mark.parametrize("key", ["hydra.sweep.dir", "results_dir", "hydra.run.dir"])
def test_an_output_dir_under_a_file_is_refused_before_anything_runs(tmp_path, key):
    (tmp_path / "afile").write_text("")
    sweep = ["-m", "beta=0.1,0.2"] if key != "hydra.run.dir" else []
    own = [f"hydra.sweep.dir={tmp_path / 'sweep'}"] if key == "results_dir" else []
    proc = run_py(
        *sweep, TINY, "wandb.mode=disabled", f"{key}={tmp_path / 'afile' / 'out'}", *own, cwd=tmp_path, timeout=300
    )
    assert_refused(
        proc,
        f"{key}={tmp_path / 'afile' / 'out'} cannot be written: {tmp_path / 'afile'} is a file, not a directory",
        f"Point {key} at a directory you can write to",
    )
    assert proc.returncode == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing was made


def test_a_read_only_parent_is_named(tmp_path, monkeypatch):
    from dpo_lab.sweeps.preflight import check_writable_dir

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # root writes anyway: make the refusal the kernel would give

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(os, "mkdir", refuse)
    with pytest.raises(UserError, match=f"{locked} refuses new directories .Permission denied.") as e:
        check_writable_dir(str(locked / "sweep" / "0"), "hydra.sweep.dir")
    assert "Point hydra.sweep.dir at a directory you can write to" in str(e.value)
    monkeypatch.undo()
    locked.chmod(0o755)
    check_writable_dir(str(locked / "sweep" / "0"), "hydra.sweep.dir")  # writable now, and the probe left nothing
    assert list(locked.iterdir()) == []


def _finished_sweep(sweep, statuses):
    """A sweep dir whose jobs ended with `statuses`, as collect() reads it."""
    (sweep).mkdir()
    (sweep / "sweep.json").write_text(
        json.dumps(
            {"name": "dpo-sweep", "results_dir": "/nowhere/dpo-sweep", "swept_keys": ["beta"], "objective": "auto"}
        )
    )
    for i, status in enumerate(statuses):
        (sweep / str(i)).mkdir()
        (sweep / str(i) / "job.json").write_text(
            json.dumps({"name": f"beta=0.{i + 1}", "overrides": [f"beta=0.{i + 1}"]})
        )
        (sweep / str(i) / "result.json").write_text(json.dumps({"status": status, "name": f"beta=0.{i + 1}"}))


def test_a_report_that_cannot_be_written_still_gives_the_table_and_the_exit_status(
    tmp_path, monkeypatch, capsys, caplog
):
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from dpo_lab.sweeps import sweep as sweep_module

    def refuse(sweep_dir, out_dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", out_dir or "/nowhere/dpo-sweep")

    monkeypatch.setattr(sweep_module, "write_report", refuse)
    sweep = tmp_path / "sweep"
    _finished_sweep(sweep, ["completed", "failed"])
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "mode": RunMode.MULTIRUN}})
    callback = sweep_module.SweepCallback()
    callback.on_job_end(config, None)  # each job's end tries the report too: one warning in all
    with pytest.raises(SystemExit) as e:
        callback.on_multirun_end(config)
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert "1/2 jobs completed (no report: see the warning above)" in out and "| 1   | 0.2  | failed" in out
    warnings = [r.getMessage() for r in caplog.records if "Could not write the sweep report" in r.getMessage()]
    assert len(warnings) == 1 and "to /nowhere/dpo-sweep (PermissionError" in warnings[0]


@pytest.mark.slow
def test_a_sweep_whose_results_dir_refuses_the_report_exits_1_with_the_table(tmp_path):
    from dpo_lab.sweeps.sweep import sweep_name

    sweep, results = tmp_path / "sweep", tmp_path / "results"
    results.mkdir()
    report = results / sweep_name("dpo", str(sweep))
    report.write_text("")  # where the report goes: taken by a file, after preflight checked results_dir
    proc = run_py(
        "-m",
        TINY,
        "trainer.max_length=4,256",
        "wandb.mode=disabled",
        f"hydra.sweep.dir={sweep}",
        f"results_dir={results}",
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout
    assert f"1/2 jobs completed (report: {sweep / 'report'}/report.md)" in proc.stdout
    assert proc.stdout.count(f"Could not write the sweep report to {report}") == 1
    assert (sweep / "report" / "report.md").is_file() and (sweep / "summary.csv").is_file()


@pytest.mark.e2e
def test_a_relaunch_with_changed_values_is_refused_before_anything_is_rewritten(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "config.yaml").write_text("beta: 0.9\n")  # job 0 of an earlier launch, with other values
    earlier = {"overrides": ["experiment=tiny", "beta=0.9,0.2"], "swept_keys": ["beta"]}
    (sweep / "sweep.json").write_text(json.dumps(earlier))
    (sweep / "multirun.yaml").write_text("earlier\n")
    proc = run_py("-m", TINY, "beta=0.1,0.2", f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=300)
    assert_refused(
        proc,
        "1 of 2 jobs would fail; nothing was started",
        f"{sweep / '0'} already holds job 0 of an earlier launch with a different config",
        "Launch into a new directory (hydra.sweep.dir=",
        f"python run.py -m experiment=tiny beta=0.9,0.2 hydra.sweep.dir={sweep}",
    )
    assert (
        json.loads((sweep / "sweep.json").read_text()) == earlier
        and (sweep / "multirun.yaml").read_text() == "earlier\n"
    )
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "multirun.yaml", "sweep.json"]


@pytest.mark.slow
def test_relaunching_the_same_sweep_still_skips_and_a_changed_one_changes_nothing(tmp_path):
    """Like for like: a job's saved config was resolved in the job (here with ${hydra:...} values), and preflight
    must resolve the relaunch's the same way, or it would refuse the very sweep it should skip."""
    conf = tmp_path / "conf" / "experiment"
    conf.mkdir(parents=True)
    (conf / "tiny_interp.yaml").write_text(
        (CONF / "experiment" / "tiny.yaml").read_text()
        + "wandb:\n  group: g${hydra:job.num}-${hydra:runtime.output_dir}\n"
    )
    sweep = tmp_path / "sweep"
    args = [
        "experiment=tiny_interp",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        "wandb.mode=disabled",
        f"hydra.sweep.dir={sweep}",
    ]
    run_py("-m", "beta=0.1,0.2", *args, cwd=tmp_path, check=True)
    assert f"group: g1-{sweep / '1'}" in (sweep / "1" / "config.yaml").read_text()
    saved = {p: p.read_bytes() for p in [sweep / "sweep.json", sweep / "multirun.yaml", sweep / "0" / "result.json"]}

    again = run_py("-m", "beta=0.1,0.2", *args, cwd=tmp_path, check=True)
    assert again.stdout.count("already completed; skipping it") == 2 and "2/2 jobs completed" in again.stdout

    changed = run_py("-m", "beta=0.3,0.2", *args, cwd=tmp_path)
    assert_refused(changed, "1 of 2 jobs would fail; nothing was started", f"{sweep / '0'} already holds job 0")
    assert {p: p.read_bytes() for p in saved} == saved


def test_reruns_started_in_the_same_second_get_their_own_dirs(tmp_path, monkeypatch):
    import threading
    import time

    from dpo_lab import rerun

    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "2026-11-27_10-00-00")  # all in the same second
    start, made = threading.Barrier(6), []

    def one():
        start.wait()
        made.append(rerun.new_rerun_dir(str(tmp_path)))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    base = str(tmp_path / "reruns" / "2026-11-27_10-00-00")
    assert sorted(made) == sorted([base] + [f"{base}-{n}" for n in range(2, 7)])
    assert all(os.path.isdir(p) and not os.listdir(p) for p in made)


def test_a_rerun_dir_that_cannot_be_made_is_a_user_error(tmp_path, capsys):
    from dpo_lab.rerun import new_rerun_dir, rerun

    (tmp_path / "config.yaml").write_text("beta: 0.1\n")
    (tmp_path / "reruns").write_text("")  # taken by a file
    with pytest.raises(
        UserError,
        match=r"Cannot make the rerun's directory under .*reruns \(a file, not a directory\)\. "
        r"Give it another place: .*--out DIR",
    ):
        new_rerun_dir(str(tmp_path))
    assert rerun(str(tmp_path), []) == 2


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.e2e
@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_fp16_on_the_cpu_is_refused_at_preflight(tmp_path, device):
    if device == "auto" and _cuda():
        pytest.skip("auto resolves to CUDA here, where fp16 runs")
    sweep = tmp_path / "sweep"
    proc = run_py(
        "-m",
        TINY,
        f"trainer.device={device}",
        "trainer.precision=fp16",
        "beta=0.1,0.2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=300,
    )
    assert_refused(
        proc,
        "2 of 2 jobs would fail; nothing was started",
        "trainer.precision=fp16 needs a CUDA GPU",
        f"trainer.device={device} runs this job on the CPU",
        "Use trainer.precision=auto (fp32 on CPU), fp32 or bf16-mixed",
    )
    assert not list(tmp_path.rglob("result.json"))


@pytest.mark.e2e
@pytest.mark.skipif(_cuda(), reason="CUDA is visible here")
def test_a_single_run_with_fp16_or_cuda_on_a_cpu_machine_stops_before_training(tmp_path):
    for args, says in [
        (["trainer.precision=fp16-mixed"], "trainer.precision=fp16-mixed needs a CUDA GPU"),
        (["trainer.device=cuda"], "trainer.device=cuda but no CUDA device is visible"),
    ]:
        proc = run_py(TINY, *args, f"hydra.run.dir={tmp_path / 'job'}", cwd=tmp_path, timeout=300)
        assert_refused(proc, says)
        assert not (tmp_path / "job" / "result.json").exists()


@pytest.mark.e2e
def test_a_sweep_for_cluster_nodes_is_not_judged_by_this_machines_devices(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = run_py(
        "-m",
        TINY,
        "trainer.device=cuda",
        "trainer.precision=fp16",
        "beta=0.1,0.2",
        "hydra/launcher=slurm",
        "preflight_only=true",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0 and "all 2 jobs check out" in proc.stdout, proc.stdout[-3000:]
