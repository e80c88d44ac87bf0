"""Config values that pass the schema's types but that TRL, transformers, peft or torch would refuse once the job runs
(issue 25): preflight builds what the job builds and refuses them first, naming the dpo-lab key; keys that their
group option would ignore are refused; non-finite metrics are a status, never a crash."""

import math

import pytest
from helpers import CONF, TINY, run_py, tiny_toy

from dpo_lab.errors import UserError


def compose_job(overrides):
    """The config preflight checks: composed with Hydra's node, whose overrides.task holds the command line."""
    from hydra import compose, initialize_config_dir

    from dpo_lab.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[TINY, *overrides], return_hydra_config=True)


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["seed=-1"], "seed=-1: a seed must lie in [0, 2**32 - 1]"),
        (["samples.seed=4294967296"], "samples.seed=4294967296: a seed must lie"),
        (["trainer.warmup=-1"], "trainer.warmup=-1.0 must be >= 0"),
        (["peft=lora", "peft.lora_dropout=1.5"], "peft.lora_dropout=1.5 must lie in [0, 1)"),
        (["+trainer.extra.learning_rate=1"], "trainer.extra.learning_rate is set by lr: use that instead"),
        (["+trainer.extra.beta=1"], "trainer.extra.beta is set by beta"),
        (["+trainer.extra.max_length=64"], "trainer.extra.max_length is set by trainer.max_length"),
        (["+trainer.extra.output_dir=/tmp/x"], "trainer.extra.output_dir is set by dpo-lab itself"),
        (["beta=inf"], "beta=inf is not a finite number"),
        (["lr=nan"], "lr=nan is not a finite number"),
        (["loss=mpo", "loss.loss_weights=[1,inf,1]"], "loss.loss_weights[1]=inf is not a finite number"),
        (["data.prompt_format='Q: {prompt} {'"], "is not a valid format string"),
        (["data.prompt_format='{prompt} and {answer}'"], "must contain {prompt} and no other field"),
        (["data.train_file=prefs.jsonl"], "data.train_file=prefs.jsonl changes nothing without data=json"),
        (["model.path=/ckpt/x"], "model.path=/ckpt/x changes nothing without model=hf"),
        (["peft.r=4"], "peft.r=4 changes nothing without peft=lora"),
        (["data.name=trl-lib/x"], "changes nothing without data=hub"),
        (["sentiment.n_train_prompts=10"], "changes nothing without data=sentiment"),
        (["toy.vocab_size=100"], "toy.vocab_size=100 must be >= 256"),
        (["sft.lr=0"], "sft.lr=0.0 must be > 0"),
    ],
)
def test_values_the_libraries_would_refuse_are_refused_at_validate(overrides, says):
    from dpo_lab.validate import validate

    with pytest.raises(UserError) as e:
        validate(compose_job(overrides))
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_key_under_its_own_option_is_not_refused():
    from dpo_lab.validate import validate

    validate(compose_job(["model=hf", "model.path=/ckpt/x"]))  # the path itself is checked by preflight
    validate(compose_job(["peft=lora", "peft.r=4"]))
    validate(compose_job(["data=json", "data.train_file=prefs.jsonl"]))
    validate(compose_job(["data.prompt_format='Q: {prompt} {{a}}'"]))  # literal braces, escaped


@pytest.mark.parametrize(
    "overrides, says",
    [
        (
            ["trainer.lr_scheduler_type=foo"],
            "trainer.lr_scheduler_type=foo: DPOConfig refuses it (foo is not a valid SchedulerType",
        ),
        (["+trainer.extra.optim=foo"], "trainer.extra.optim=foo: DPOConfig refuses it"),
        (
            ["+trainer.extra.lr_scheduler_kwargs={power:2}"],
            "trainer.extra.lr_scheduler_kwargs={'power': 2}: the optimizer or learning-rate schedule refuses it",
        ),
        (["method=kto", "+trainer.extra.desirable_weight=1"], "trainer.extra.desirable_weight is set by method."),
    ],
)
def test_preflight_builds_the_trl_config_optimizer_and_schedule(overrides, says):
    from dpo_lab.trainer_args import preflight
    from dpo_lab.validate import validate

    cfg = compose_job(overrides)
    with pytest.raises(UserError) as e:
        validate(cfg)
        preflight(cfg)
    assert says in str(e.value), str(e.value)


@pytest.mark.parametrize("method", ["dpo", "simpo", "cpo", "alphapo", "orpo", "kto"])
def test_every_method_builds_its_trl_config_at_preflight(method):
    from dpo_lab import methods
    from dpo_lab.memory import fixed_batch
    from dpo_lab.precision import resolve
    from dpo_lab.trainer_args import build, preflight

    cfg = compose_job([f"method={method}", "beta=0.3"])
    preflight(cfg)
    args = build(cfg, "/job", "cpu", resolve("fp32", "cpu"), False, fixed_batch(cfg.trainer))
    assert type(args) is methods.trl_classes(methods.get(method))[0] and args.beta == 0.3


@pytest.mark.e2e
def test_lora_target_modules_are_matched_against_the_model(tmp_path):
    from dpo_lab.sweeps.preflight import check_job

    tiny_toy()
    with pytest.raises(UserError) as e:
        check_job(compose_job(["peft=lora", "peft.target_modules=[nonexistent]"]), {})
    assert "peft.target_modules=['nonexistent']" in str(e.value)
    assert "'q_proj'" in str(e.value) and "all-linear" in str(e.value)
    check_job(compose_job(["peft=lora", "peft.target_modules=[q_proj,v_proj]"]), {})


@pytest.mark.e2e
def test_an_encoder_checkpoint_is_refused_as_not_a_causal_lm(checkpoint):
    from transformers import BertConfig

    from dpo_lab.modeling import check_model
    from dpo_lab.sweeps.preflight import check_job

    bert = BertConfig(vocab_size=2048, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    bert.architectures = ["BertForMaskedLM"]  # as a hub BERT's config.json says
    bert.save_pretrained(checkpoint)
    with pytest.raises(UserError, match="BertForMaskedLM checkpoint, not a decoder-only causal language model"):
        check_job(compose_job(["model=hf", f"model.path={checkpoint}"]), {})
    bert.architectures = None  # saved from a config alone: the model type says it
    bert.save_pretrained(checkpoint)
    cfg = compose_job(["model=hf", f"model.path={checkpoint}"])
    with pytest.raises(UserError, match="a bert checkpoint, not a decoder-only"):  # the job checks too (reruns)
        check_model(str(checkpoint), cfg.model, cfg.peft)
    bert.is_decoder = True  # BertLMHeadModel as a decoder: a causal LM
    bert.save_pretrained(checkpoint)
    check_model(str(checkpoint), cfg.model, cfg.peft)


@pytest.mark.e2e
def test_a_judge_model_must_be_what_its_judge_loads(checkpoint, tmp_path):
    """A causal LM as the reward_model judge would get an untrained score head: win rates of noise, silently."""
    from transformers import BertConfig, LlamaForSequenceClassification

    from dpo_lab.modeling import check_judge_model
    from dpo_lab.sweeps.preflight import check_job

    judged = ["samples.count=4", f"samples.judge_model={checkpoint}"]
    with pytest.raises(UserError, match="is a LlamaForCausalLM checkpoint, not a reward model"):
        check_job(compose_job(["samples.judge=reward_model", *judged]), {})
    check_job(compose_job(["samples.judge=pairwise_lm", *judged]), {})  # a causal LM: what pairwise_lm asks
    reward = tmp_path / "reward"
    config = LlamaForSequenceClassification.config_class.from_pretrained(checkpoint, num_labels=1)
    config.architectures = ["LlamaForSequenceClassification"]
    config.save_pretrained(reward)
    check_judge_model(str(reward), "reward_model")
    config.num_labels = 3
    config.save_pretrained(reward)
    with pytest.raises(UserError, match="LlamaForSequenceClassification checkpoint with 3 outputs, not a reward"):
        check_judge_model(str(reward), "reward_model")
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(reward)
    with pytest.raises(UserError, match="not a causal LM: samples.judge=pairwise_lm asks"):
        check_judge_model(str(reward), "pairwise_lm")


@pytest.mark.e2e
def test_an_unknown_attention_implementation_is_refused(tmp_path):
    from dpo_lab.sweeps.preflight import check_job

    tiny_toy()
    with pytest.raises(UserError, match="model.attn_implementation=bogus is not an attention implementation"):
        check_job(compose_job(["model.attn_implementation=bogus"]), {})
    check_job(compose_job(["model.attn_implementation=eager"]), {})


@pytest.mark.e2e
def test_a_tokenizer_larger_than_the_embedding_is_refused(checkpoint):
    import json

    from dpo_lab.sweeps.preflight import check_job

    config = json.loads((checkpoint / "config.json").read_text())
    config["vocab_size"] = 100
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"its tokenizer has \d+ tokens, but the model's embedding has 100 rows"):
        check_job(compose_job(["model=hf", f"model.path={checkpoint}"]), {})


@pytest.mark.e2e
def test_a_file_as_model_path_is_called_a_file(checkpoint):
    from dpo_lab.modeling import check_model_path

    with pytest.raises(UserError, match="is a file; model.path takes the directory"):
        check_model_path(str(checkpoint / "config.json"))


@pytest.mark.e2e
def test_a_sweep_whose_jobs_a_library_would_refuse_starts_nothing(tmp_path):
    proc = run_py(
        "-m", TINY, "beta=0.1,0.2", "+trainer.extra.learning_rate=1", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    assert "2 of 2 jobs would fail" in proc.stdout and "trainer.extra.learning_rate is set by lr" in proc.stdout
    assert not (tmp_path / "s" / "0").exists()


@pytest.mark.e2e
def test_a_single_run_with_bad_lora_targets_leaves_no_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_py(TINY, "peft=lora", "peft.target_modules=[nonexistent]", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    assert "peft.target_modules=['nonexistent']" in proc.stdout and not run_dir.exists()


def test_statistics_of_non_finite_metrics_are_non_finite_not_errors():
    from dpo_lab.quality import mean_se
    from dpo_lab.samples.metrics import means, summarize

    assert math.isinf(mean_se([math.inf, 1.0])["mean"]) and math.isnan(mean_se([math.inf, 1.0])["se"])
    assert math.isnan(mean_se([math.nan, 1.0])["mean"])
    assert mean_se([1.0, 3.0]) == {"mean": 2.0, "se": 1.0}
    m = means([{"repetition": math.inf}, {"repetition": 0.5}])
    assert math.isinf(m["repetition"]) and math.isnan(m["repetition_se"])
    history = {0: {"win_rate": 0.5}, 10: {"win_rate": 0.9}, 20: {"win_rate": 0.1}}
    summary = summarize(history, "win_rate", 0.1, {0: [0.5, 0.5], 10: [math.nan, 1.0], 20: [0.0, 0.2]})
    assert summary["best_checkpoint_step"] == 10


@pytest.mark.e2e
def test_non_finite_eval_metrics_reach_the_divergence_guard(tmp_path):
    """A real trainer whose eval metrics are non-finite (as beta=inf made them before preflight refused it): the
    β-free metrics are derived without an error and the guard stops the run as `diverged`."""
    from helpers import compose_cfg

    from dpo_lab.faults import Diverged
    from dpo_lab.train import setup

    s = setup(compose_cfg([TINY, "samples.count=0", "max_steps=1"]), str(tmp_path), None)
    s.trainer.model.eval()
    s.trainer._metrics["eval"]["rewards/margins"] = [math.inf, 1.0]
    s.trainer._metrics["eval"]["rewards/accuracies"] = [1.0, 0.0]
    with pytest.raises(Diverged) as e:
        s.trainer.log({"eval_loss": math.nan})
    assert e.value.key == "eval_loss" and math.isnan(e.value.value)
