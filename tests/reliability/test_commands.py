"""Every command ends one way per outcome (issue 25): a mistake in one paragraph with exit 2, Ctrl-C with 130, both
without a traceback; anything else with its traceback and the bug line, exit 1; and a stopped or failed preflight
leaves no fork server behind."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest
from helpers import CONF, ROOT, TINY, compose_cfg, run_dpo_lab, run_py

from dpo_lab.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError, run_command
from dpo_lab.job import exit_code


def assert_one_paragraph(proc, code, *needles):
    """Exit `code`, no traceback, one paragraph (no blank line) holding every needle."""
    out = proc.stdout.strip()
    assert proc.returncode == code, proc.stdout[-3000:]
    assert "Traceback" not in out and "\n\n" not in out, out[-3000:]
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out[-3000:]}"


def test_a_job_ended_by_a_mistake_exits_2_and_any_other_failure_1():
    assert exit_code({"status": "completed"}) == 0
    assert exit_code({"status": "failed", "user_error": True}) == EXIT_USER_ERROR
    for status in ("failed", "diverged", "oom", "killed", "interrupted"):
        assert exit_code({"status": status}) == EXIT_FAILED


def test_run_command_ends_a_mistake_a_stop_and_a_bug_each_its_way(capsys, caplog):
    def raises(e):
        def command():
            raise e

        return command

    assert run_command(raises(UserError("data.train_file=x.json is missing."))) == EXIT_USER_ERROR
    assert capsys.readouterr().err == "data.train_file=x.json is missing.\n"
    assert run_command(raises(KeyboardInterrupt())) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "\nStopped.\n"
    assert run_command(raises(RuntimeError("boom"))) == EXIT_FAILED  # logged: to the job's log where there is one
    assert "Traceback" in caplog.text and "RuntimeError: boom" in caplog.text
    assert caplog.text.rstrip().endswith("please report it with the traceback above.")
    assert run_command(lambda: 0) == 0


@pytest.mark.parametrize(
    "settings, key",
    [
        (["hydra/launcher=gpus", "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs=0"),
        (["hydra/launcher=gpus", "hydra.launcher.batch_size=0"], "hydra.launcher.batch_size=0"),
        (["hydra/launcher=gpus", "hydra.launcher.timeout=0"], "hydra.launcher.timeout=0.0"),  # a float key
        (["hydra/launcher=local", "hydra.launcher.timeout_min=0"], "hydra.launcher.timeout_min=0"),
        (["hydra/launcher=slurm", "hydra.launcher.array_parallelism=0"], "hydra.launcher.array_parallelism=0"),
    ],
)
def test_launcher_settings_no_launcher_can_run_are_refused(settings, key):
    from hydra import compose, initialize_config_dir

    from dpo_lab.config import register_configs
    from dpo_lab.sweeps.preflight import check_launcher

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        refused = compose(config_name="config", overrides=settings, return_hydra_config=True)
        fine = compose(config_name="config", overrides=settings[:1], return_hydra_config=True)
    with pytest.raises(UserError, match=rf"^{key}: .* Set {key.split('=')[0]} to .*nothing was started\.$"):
        check_launcher(refused)
    check_launcher(fine)  # conf/hydra/launcher's own settings pass


@pytest.mark.e2e
@pytest.mark.parametrize(
    "args, says",
    [
        (["execute", "{empty}"], "is not a prepared job directory: it has no readable job.json"),
        (["execute", "{tmp}/nowhere"], "is not a prepared job directory"),
        (["rerun", "{empty}"], "has no config.yaml, so it is not a dpo-lab job directory"),
        (["samples", "{empty}"], "has no samples.jsonl"),
        (["report", "{file}"], "is a file, not a directory, so there is no sweep to report on"),
        (["report", "{tmp}/nowhere"], "does not exist, so there is no sweep to report on"),
        (["report", "{empty}"], "is not a sweep directory: it has no sweep.json and no job directories"),
    ],
)
def test_each_subcommand_refuses_a_bad_argument_in_one_paragraph(tmp_path, args, says):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("not a sweep\n")
    paths = {"empty": tmp_path / "empty", "file": tmp_path / "a_file", "tmp": tmp_path}
    proc = run_dpo_lab(*(a.format(**paths) for a in args), cwd=tmp_path)
    assert_one_paragraph(proc, EXIT_USER_ERROR, says)
    assert sorted(os.listdir(tmp_path)) == ["a_file", "empty"] and not os.listdir(tmp_path / "empty")


@pytest.mark.e2e
@pytest.mark.parametrize("args", [["bogus"], ["samples"], ["samples", ".", "--step", "x"], ["report", ".", "--o"]])
def test_a_bad_command_line_is_argparses_usage_and_exit_2(tmp_path, args):
    proc = run_dpo_lab(*args, cwd=tmp_path)
    assert proc.returncode == EXIT_USER_ERROR and "Traceback" not in proc.stdout
    assert proc.stdout.startswith("usage: python -m dpo_lab") and "error:" in proc.stdout


@pytest.mark.e2e
def test_a_job_that_finds_a_mistake_itself_exits_2_and_records_it(tmp_path):
    """The data file went missing after the job was prepared: the job's own check (not preflight) finds it."""
    from dpo_lab.jobdir import prepare

    gone = tmp_path / "train.json"
    job = tmp_path / "job"
    cfg = compose_cfg([TINY, "data=json", f"data.train_file={gone}", "wandb.mode=disabled"])
    prepare(cfg, str(job), name="test", group=None, overrides=[], choices={})
    proc = run_dpo_lab("execute", job, cwd=tmp_path)
    assert proc.returncode == EXIT_USER_ERROR and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    result = json.loads((job / "result.json").read_text())
    assert result["status"] == "failed" and result["user_error"] is True and str(gone) in result["error"]


@pytest.mark.e2e
def test_a_single_run_whose_job_finds_a_mistake_exits_2(tmp_path):
    """Preflight reads a checkpoint's config.json, not its weights; the job finds them cut off when it loads them."""
    import shutil

    from helpers import tiny_toy

    ckpt, job = tmp_path / "ckpt", tmp_path / "job"
    shutil.copytree(tiny_toy()["model"], ckpt)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    proc = run_py(
        TINY, "model=hf", f"model.path={ckpt}", "wandb.mode=disabled", f"hydra.run.dir={job}", cwd=tmp_path, timeout=300
    )
    assert proc.returncode == EXIT_USER_ERROR and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    assert f"The weights of '{ckpt}' cannot be read" in proc.stdout and "damaged or cut off" in proc.stdout
    result = json.loads((job / "result.json").read_text())
    assert result["status"] == "failed" and result["user_error"] is True


@pytest.mark.e2e
def test_launcher_settings_joblib_refuses_stop_the_sweep_at_preflight(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_py(
        "-m", TINY, "beta=0.1,0.2", "hydra/launcher=gpus", "hydra.launcher.n_jobs=0", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert_one_paragraph(proc, EXIT_USER_ERROR, "Preflight: hydra.launcher.n_jobs=0", "Set hydra.launcher.n_jobs to")
    assert not sweep.exists()  # no sweep.json, no multirun.yaml


def fork_servers(marker: str) -> list:
    """The fork servers started by a command run with `marker` in its environment (they inherit it)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if (
                "multiprocessing.forkserver" in " ".join(p.info["cmdline"] or [])
                and p.environ().get("DPO_LAB_TEST_MARK") == marker
                and p.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def sweep(tmp_path, *args):
    """A tiny sweep in a process group of its own (as a terminal runs it), tagged for fork_servers."""
    marker = uuid.uuid4().hex
    sweep_dir = f"hydra.sweep.dir={tmp_path / 'sweep'}"
    with open(tmp_path / "out.txt", "w") as out:  # not a pipe: the server would hold it open after the sweep exited
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "-m", TINY, "beta=0.1,0.2", sweep_dir, *args],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "DPO_LAB_TEST_MARK": marker},
        )
    return proc, marker


@pytest.mark.e2e
def test_ctrl_c_during_preflight_exits_130_without_a_traceback_or_a_fork_server(tmp_path):
    proc, marker = sweep(tmp_path)
    deadline = time.time() + 120
    while not fork_servers(marker):  # started right before preflight; then it imports PRELOAD
        assert proc.poll() is None, (tmp_path / "out.txt").read_text()[-3000:]
        assert time.time() < deadline, "no fork server started"
        time.sleep(0.05)
    time.sleep(1)  # into the server's preload
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole foreground group
    proc.wait(timeout=60)
    out = (tmp_path / "out.txt").read_text()
    assert proc.returncode == EXIT_INTERRUPTED, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    assert "Stopped." in out
    assert not fork_servers(marker)  # stopped and reaped before the sweep exited, not left to finish its imports
    assert not (tmp_path / "sweep").exists()


@pytest.mark.e2e
def test_a_failed_preflight_leaves_no_fork_server(tmp_path):
    proc, marker = sweep(tmp_path, "trainer.device=cpu", "trainer.precision=fp16")
    proc.wait(timeout=300)
    out = (tmp_path / "out.txt").read_text()
    assert proc.returncode == EXIT_USER_ERROR and "Traceback" not in out, out[-3000:]
    assert "2 of 2 jobs would fail" in out
    assert not fork_servers(marker)  # stopped and reaped before the sweep exited, not left to finish its imports


@pytest.mark.e2e
def test_ctrl_c_during_a_sweeps_job_stops_the_job_cleanly_with_130(tmp_path):
    """The server ignores SIGINT; a job forked from it still ends in `interrupted` with a checkpoint to resume."""
    proc, _ = sweep(tmp_path, "max_steps=400", "trainer.save_steps=2", "trainer.eval_steps=400", "wandb.mode=disabled")
    job = tmp_path / "sweep" / "0"
    deadline = time.time() + 300
    while not list(job.glob("checkpoints/checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, (tmp_path / "out.txt").read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint"
        time.sleep(0.1)
    pid = json.loads((job / "result.json").read_text())["pid"]
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    out = (tmp_path / "out.txt").read_text()
    assert proc.returncode == EXIT_INTERRUPTED and "Traceback" not in out, out[-3000:]
    stopped = json.loads((job / "result.json").read_text())
    assert stopped["status"] == "interrupted" and stopped["last_checkpoint"], stopped
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
