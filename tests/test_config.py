"""Configs compose, validate, and fail early with messages that name the bad key."""

import pytest
from helpers import CONF, LOSS_FILES, TINY, compose_cfg, run_py
from omegaconf import OmegaConf

from dpo_lab.config import LOSS_TYPES
from dpo_lab.errors import UserError
from dpo_lab.validate import validate


def test_every_trl_loss_type_has_its_own_file():
    single = {p for p in LOSS_FILES if OmegaConf.load(CONF / "loss" / f"{p}.yaml").loss_type == [p]}
    assert set(LOSS_TYPES) <= single
    combos = [p for p in LOSS_FILES if len(OmegaConf.load(CONF / "loss" / f"{p}.yaml").loss_type) > 1]
    assert combos and all(OmegaConf.load(CONF / "loss" / f"{c}.yaml").loss_weights for c in combos)


@pytest.mark.smoke
@pytest.mark.parametrize("loss", LOSS_FILES)
def test_every_loss_composes_and_validates(loss):
    cfg = compose_cfg([f"loss={loss}"])
    validate(cfg)
    assert all(t in LOSS_TYPES for t in cfg.loss.loss_type)


def test_loss_parameters_come_from_their_file():
    assert compose_cfg(["loss=robust"]).loss.label_smoothing == 0.1
    assert compose_cfg(["loss=discopop"]).loss.discopop_tau == 0.05
    assert compose_cfg(["loss=sigmoid"]).loss.label_smoothing == 0.0


def test_seed_run_experiment_is_the_first_users_run():
    cfg = compose_cfg(["experiment=seed_run"])
    assert (cfg.lr, cfg.epochs, cfg.beta, list(cfg.loss.loss_type)) == (1e-5, 2, 0.1, ["sigmoid"])
    t = cfg.trainer
    assert (t.per_device_train_batch_size, t.eval_steps, t.save_steps, t.logging_steps, t.max_length) == (
        16,
        200,
        200,
        10,
        512,
    )


def test_peft_groups():
    assert compose_cfg(["peft=lora"]).peft.enabled and compose_cfg(["peft=lora"]).peft.target_modules == "all-linear"
    assert not compose_cfg(["peft=none"]).peft.enabled


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss=robust", "loss.label_smoothing=0.7"], "label_smoothing=0.7"),
        (["loss=mpo", "loss.loss_weights=[1.0]"], "loss_weights has 1 entries"),
        (["beta=0"], "beta=0"),
        (["data.prompt_format='Q: {question}'"], "data.prompt_format"),
        (["+trainer.extra.lerning_rate=1"], "lerning_rate"),
        (["loss=aot", "loss.use_weighting=true"], "use_weighting"),
        (["trainer.precision=bf16-pure", "+trainer.extra.optim=adamw_torch"], "round away"),
        (["trainer.activation_checkpointing=sometimes"], "trainer.activation_checkpointing"),
        (["+trainer.extra.bf16=true"], "trainer.extra.bf16 is set by trainer.precision"),
        (["+trainer.extra.gradient_checkpointing=true"], "set by trainer.activation_checkpointing"),
        (["samples.keep_best=true", "trainer.save_steps=3", "trainer.eval_steps=2"], "multiple of trainer.eval_steps"),
        (["data=json", "data.train_file=t.json", "samples.best_metric=task_score"], "needs the toy data"),
        (["objective=best_eval/rewards/margins"], "logratio_margin: the last eval's log-ratio margin"),  # lists them
        (["samples.count=0", "objective=win_rate"], "samples.count=0 turns them off"),
        (["samples.judge=none", "objective=win_rate"], "objective=win_rate needs a judge"),
        (["data=json", "data.train_file=t.json", "samples.judge=reward_model"], "needs samples.judge_model"),
        (["data=json"], "data=json needs data.train_file"),
        (["samples.judge=pairwise_lm"], "pairwise_lm needs samples.judge_model"),
        (["+bta=0.1"], "bta is not a dpo-lab config key \\(did you mean beta\\?\\)"),
        (["+trainer.batch_size=4"], "trainer.batch_size is not a dpo-lab config key"),
    ],
)
def test_semantic_checks_name_the_key(overrides, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("{", r"\{")):
        validate(compose_cfg(overrides))


@pytest.mark.e2e
@pytest.mark.parametrize(
    "args, expected",
    [
        (["loss=nonsense"], ["loss=nonsense is not a loss option. Valid: aot,", "ipo", "sigmoid"]),
        (["bta=0.1"], ["bta is not a dpo-lab config key (did you mean beta?)"]),  # not Hydra's "use +bta=0.1"
        (["+bta=0.1"], ["bta is not a dpo-lab config key", "did you mean beta"]),
        (["beta=high"], ["beta=high: Value 'high'", "could not be converted to Float"]),
        (["trainer.batch_size=4"], ["trainer.batch_size is not a dpo-lab config key"]),
        (["trainer.max_lenght=4"], ["did you mean trainer.max_length?"]),
        (["+beta=0.2"], ["beta is already a config key; set it without the + (beta=VALUE)"]),
        (["beta=0.1,0.5"], ["beta=0.1,0.5: several values for one key sweep over them, which needs -m"]),
        (["-m", "beta=0.1,high"], ["1 of 2 jobs would fail", "beta=high: Value 'high'"]),
        (["-m", "bta=0.1,0.2"], ["2 of 2 jobs would fail", "bta is not a dpo-lab config key (did you mean beta?)"]),
        (
            ["data=json", "data.train_file=missing.json"],
            ["missing.json' does not exist"],
        ),  # the data, read at preflight
        # closed choices (config.Choice): refused as the config composes, with the valid values
        (["trainer.device=tpu"], ["trainer.device=tpu", "expected one of [auto, cpu, cuda]"]),
        (["trainer.precision=half"], ["trainer.precision=half", "bf16-mixed"]),
        (["samples.judge=oracle"], ["samples.judge=oracle", "reward_model, pairwise_lm"]),
    ],
)
def test_bad_overrides_exit_2_in_one_paragraph_before_any_dir_exists(tmp_path, args, expected):
    proc = run_py(*args, TINY, "wandb.mode=disabled", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:]
    for text in expected:
        assert text in proc.stdout, proc.stdout[-2000:]
    assert "Traceback" not in proc.stdout and "HYDRA_FULL_ERROR" not in proc.stdout
    if "-m" not in args:  # one paragraph
        assert [line for line in proc.stdout.splitlines() if line.startswith("Preflight: ")] == [
            proc.stdout.strip().splitlines()[-1]
        ]
    assert list(tmp_path.iterdir()) == []  # no outputs/ or multirun/ dir, no train.log, no wandb run


@pytest.mark.e2e
def test_single_run_preflight_only_checks_and_stops(tmp_path):
    proc = run_py(TINY, "beta=0.3", "preflight_only=true", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "Preflight: the run checks out. It would run as:\n  python run.py experiment=tiny beta=0.3\n" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # nothing trained, no dir made


@pytest.mark.e2e
def test_multirun_cfg_points_to_preflight_only(tmp_path):
    proc = run_py("-m", "loss=sigmoid,ipo", "--cfg", "job", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "preflight_only=true" in proc.stdout and "Traceback" not in proc.stdout
    assert not (tmp_path / "multirun").exists()


@pytest.mark.e2e
def test_help_says_sweep_needs_a_plus(tmp_path):
    proc = run_py("--help", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("dpo-lab: ")
    groups = proc.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert "sweep: all_losses" in groups and "python run.py -m +sweep=NAME" in groups
