"""Real training on the tiny model: every loss, LoRA and full fine-tuning, final eval, exact reruns."""

import math
import subprocess
import sys

import pytest
from helpers import LOSS_FILES, ROOT, TINY, compose_cfg, leet_records, leet_summary, run_py, train_job

from dpo_lab.files import read_json

pytestmark = pytest.mark.e2e  # every test trains


@pytest.mark.parametrize("loss", LOSS_FILES)
def test_every_loss_trains(tmp_path, loss):
    result = train_job(tmp_path, [f"loss={loss}", "wandb.mode=disabled", "trainer.eval_on_start=false", "max_steps=2"])
    assert result["status"] == "completed", result.get("error")
    assert result["steps"] == 2
    assert math.isfinite(result["eval/loss"]) and "eval/rewards/margins" in result


@pytest.mark.smoke
@pytest.mark.parametrize("peft", ["lora", "none"])
def test_lora_and_full_finetuning(tmp_path, peft):
    result = train_job(tmp_path, [f"peft={peft}", "wandb.mode=disabled"])
    assert result["status"] == "completed", result.get("error")
    final = {p.name for p in (tmp_path / "final").iterdir()}
    if peft == "lora":  # only the adapter is saved; the base stays where it was
        assert {"adapter_config.json", "adapter_model.safetensors"} <= final and "model.safetensors" not in final
    else:
        assert "model.safetensors" in final and "adapter_config.json" not in final


def test_run_logs_eval_at_start_every_eval_and_end(tmp_path):
    # max_steps=5 is not a multiple of eval_steps=2: the run must still end with an eval at step 5.
    result = train_job(tmp_path, ["max_steps=5"])
    assert result["status"] == "completed", result.get("error")
    history = [r["history"]["item"] for r in leet_records(result["wandb_dir"]) if r["type"] == "history"]
    steps = sorted({h["train/global_step"] for h in history if "eval/rewards/margins" in h})
    assert steps == [0, 2, 4, 5]
    assert result["steps"] == 5


def test_metrics_are_plotted_against_the_integer_trainer_step(tmp_path):
    """Every metric's x axis is train/global_step (the "*" definition, which wandb leet and the web UI follow), and
    it is logged as an integer."""
    result = train_job(tmp_path, ["max_steps=2"])
    records = leet_records(result["wandb_dir"])
    metrics = [r["metric"] for r in records if r["type"] == "metric"]
    assert {"glob_name": "*", "step_metric": "train/global_step"}.items() <= next(
        m for m in metrics if m.get("glob_name")
    ).items()
    steps = [r["history"]["item"]["train/global_step"] for r in records if r["type"] == "history"]
    assert steps and all(type(s) is int for s in steps) and sorted(set(steps)) == [0, 1, 2]


def test_rerun_is_named_by_what_it_changed(tmp_path):
    from dpo_lab.job import execute
    from dpo_lab.jobdir import prepare
    from dpo_lab.train import train

    overrides = ["loss=sigmoid", "beta=0.1", "wandb.mode=disabled", "max_steps=1", "trainer.eval_on_start=false"]
    prepare(
        compose_cfg([TINY, *overrides]),
        str(tmp_path / "job"),
        name="loss=sigmoid,beta=0.1",
        group=None,
        overrides=overrides,
        choices={},
    )
    assert execute(str(tmp_path / "job"), train)["status"] == "completed"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dpo_lab",
            "rerun",
            str(tmp_path / "job"),
            "lr=1e-5",
            "beta=0.5",
            "--out",
            str(tmp_path / "again"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_json(tmp_path / "again" / "job.json")["name"] == "loss=sigmoid,beta=0.5,lr=1e-5 (rerun)"


def test_rerun_reproduces_eval_metrics(tmp_path):
    original = train_job(tmp_path / "job", ["wandb.mode=disabled", "loss=ipo"])
    assert original["status"] == "completed", original.get("error")
    proc = subprocess.run(
        [sys.executable, "-m", "dpo_lab", "rerun", str(tmp_path / "job"), "--out", str(tmp_path / "again")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = read_json(tmp_path / "again" / "result.json")
    for key in ("eval/loss", "eval/rewards/margins", "eval/rewards/accuracies", "eval/logps/chosen"):
        assert again[key] == pytest.approx(original[key], rel=1e-5, abs=1e-6), key
    assert "largest difference" in proc.stderr
    # A rerun with an override is a changed run, recorded as such.
    saved = read_json(tmp_path / "again" / "job.json")
    assert saved["overrides"] == ["wandb.mode=disabled", "loss=ipo"]
    assert "Rerun vs original" in (tmp_path / "again" / "train.log").read_text()  # the rerun's log is in its dir


def test_wandb_config_is_ours_and_a_logged_config_reruns(tmp_path):
    """The run's config is dpo-lab's (TRL's arguments under `trl`, not merged over ours), it carries job type and
    default tags, and a config read back from wandb reruns to the same metrics: the `rerun wandb:...` path, fed the
    config a real run logged."""
    from dpo_lab.config import Config
    from dpo_lab.rerun import write_logged_config

    original = train_job(tmp_path / "job", ["max_steps=null", "epochs=0.34", "loss=ipo", "peft=lora"])
    assert original["status"] == "completed", original.get("error")
    config = leet_summary(original["wandb_dir"])["config"]
    assert config["max_steps"] is None and config["trl"]["max_steps"] == -1  # TRL's -1 no longer overwrites our null
    assert config["trl"]["beta"] == config["beta"] and "learning_rate" not in config and "run_name" not in config
    assert set(config) <= set(Config.__dataclass_fields__) | {"overrides", "choices", "resolved", "dtypes", "trl"}
    run = next(r["run"] for r in leet_records(original["wandb_dir"]) if r["type"] == "run")
    assert run["job_type"] == "dpo" and {"loss:ipo", "peft:lora"} <= set(run["tags"]), run

    write_logged_config(config, str(tmp_path / "from-wandb"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dpo_lab",
            "rerun",
            str(tmp_path / "from-wandb"),
            "wandb.mode=disabled",
            "--out",
            str(tmp_path / "again"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = read_json(tmp_path / "again" / "result.json")
    assert again["steps"] == original["steps"] == 5  # ceil(0.34 epochs x 12 steps)
    assert again["eval/loss"] == pytest.approx(original["eval/loss"], rel=1e-5, abs=1e-6)


def test_single_run_console_log_and_model_card(tmp_path):
    """One log file per job (train.log, no empty Hydra run.log), one line per eval and no raw metric dicts,
    deprecation or offline-URL noise on the console, the offline run's browse/upload lines, and a model card in
    final/ that names the base model."""
    job = tmp_path / "job"
    proc = run_py(TINY, f"hydra.run.dir={job}", cwd=tmp_path, check=True, timeout=300)
    assert not (job / "run.log").exists() and "Data: 48 train / 16 eval pairs" in (job / "train.log").read_text()
    assert "step 4/4  eval loss" in proc.stdout and "{'loss'" not in proc.stdout and "FutureWarning" not in proc.stdout
    assert "DPO experiment=tiny: 100%" in proc.stdout and "eval: 100%" in proc.stdout  # labelled bars
    assert "URL not available" not in proc.stdout and "wandb leet " in proc.stdout and "wandb sync " in proc.stdout
    card = (job / "final" / "README.md").read_text()
    assert "[None]" not in card and "fine-tuned version of the local checkpoint" in card and str(job / "final") in card
