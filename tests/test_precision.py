"""Precision and memory: weights train in the dtype the mode says whatever the checkpoint's, the run records the
dtypes it really used, bf16-pure needs a stochastic-rounding optimizer, activation checkpointing follows the
estimate."""

import dataclasses
import importlib.util

import pytest
import torch
from helpers import TINY, compose_cfg, leet_summary, run_py, tiny_toy, train_job
from safetensors.torch import load_file

from dpo_lab import memory
from dpo_lab.precision import resolve

EVAL = ("eval/loss", "eval/rewards/margins", "eval/rewards/accuracies", "eval/logps/chosen", "eval/logps/rejected")


@pytest.fixture(scope="module")
def bf16_and_fp32_twins(tmp_path_factory):
    """The tiny toy model saved in bf16 (as hub models ship), and the exact fp32 upcast of those bf16 weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    toy = tiny_toy()
    out = tmp_path_factory.mktemp("twins")
    tokenizer = AutoTokenizer.from_pretrained(toy["model"])
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        model = AutoModelForCausalLM.from_pretrained(toy["model"], dtype=torch.float32).to(torch.bfloat16).to(dtype)
        model.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
    assert AutoModelForCausalLM.from_pretrained(out / "bf16").dtype == torch.bfloat16  # transformers keeps bf16
    return out


def changed_fraction(start_dir, final_dir) -> float:
    start, final = load_file(f"{start_dir}/model.safetensors"), load_file(f"{final_dir}/model.safetensors")
    changed = sum((final[k].float() != start[k].float()).sum().item() for k in final)
    return changed / sum(t.numel() for t in final.values())


@pytest.mark.e2e
@pytest.mark.smoke
def test_bf16_checkpoint_trains_like_its_fp32_twin(tmp_path, bf16_and_fp32_twins):
    """Full fine-tuning at our first user's lr: a bf16 checkpoint trains in fp32 (auto on CPU) exactly as its twin."""
    results = {}
    for name in ("bf16", "fp32"):
        path = bf16_and_fp32_twins / name
        results[name] = train_job(tmp_path / name, ["model=hf", f"model.path={path}", "lr=1e-5", "wandb.mode=disabled"])
        assert results[name]["status"] == "completed", results[name].get("error")
    for key in EVAL:
        assert results["bf16"][key] == pytest.approx(results["fp32"][key], rel=1e-5, abs=1e-7), key
    bf16 = results["bf16"]
    assert (
        bf16["precision"],
        bf16["trainable_dtype"],
        bf16["optimizer_state_dtype"],
        bf16["compute_dtype"],
        bf16["reference_dtype"],
    ) == ("fp32", "float32", "float32", "float32", "float32")
    # In bf16 weights most of these updates would round away; in fp32 nearly every weight moves.
    assert changed_fraction(bf16_and_fp32_twins / "bf16", tmp_path / "bf16" / "final") > 0.9


@pytest.mark.e2e
@pytest.mark.smoke
def test_mixed_precision_dtypes_full_finetuning(tmp_path):
    """bf16-mixed (bf16 autocast works on CPU too): fp32 weights and Adam state, bf16 compute and a live bf16
    reference copy (precomputed log-probs come from the fp32 policy before its first step: test_reuse.py)."""
    result = train_job(tmp_path, ["trainer.precision=bf16-mixed", "trainer.precompute_ref_log_probs=false"])
    assert result["status"] == "completed", result.get("error")
    dtypes = {k: result[k] for k in ("trainable_dtype", "optimizer_state_dtype", "compute_dtype", "reference_dtype")}
    assert dtypes == {
        "trainable_dtype": "float32",
        "optimizer_state_dtype": "float32",
        "compute_dtype": "bfloat16",
        "reference_dtype": "bfloat16",
    }
    assert {t.dtype for t in load_file(str(tmp_path / "final" / "model.safetensors")).values()} == {torch.float32}
    assert abs(result["eval_history"][0]["eval/rewards/margins"]) < 1e-3  # a bf16 reference still matches at step 0
    config = leet_summary(result["wandb_dir"])["config"]
    assert config["resolved"]["precision"] == "bf16-mixed" and config["resolved"]["activation_checkpointing"] is False
    assert config["dtypes"] == dtypes


@pytest.mark.e2e
@pytest.mark.smoke
def test_lora_adapters_are_fp32_over_a_bf16_base(tmp_path):
    """LoRA under bf16-mixed, with activation checkpointing forced on: bf16 base, fp32 adapters and optimizer."""
    result = train_job(
        tmp_path,
        ["peft=lora", "trainer.precision=bf16-mixed", "trainer.activation_checkpointing=true", "wandb.mode=disabled"],
    )
    assert result["status"] == "completed", result.get("error")
    assert (
        result["trainable_dtype"],
        result["optimizer_state_dtype"],
        result["compute_dtype"],
        result["reference_dtype"],
    ) == ("float32", "float32", "bfloat16", "bfloat16")
    assert result["activation_checkpointing"] is True
    adapter = load_file(str(tmp_path / "final" / "adapter_model.safetensors"))
    assert adapter and {t.dtype for t in adapter.values()} == {torch.float32}


@pytest.mark.e2e
def test_bf16_pure_without_stochastic_rounding_is_refused_at_preflight(tmp_path):
    proc = run_py(
        "-m",
        TINY,
        "trainer.precision=bf16-pure",
        "+trainer.extra.optim=adamw_torch",
        "beta=0.1,0.2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert "2 of 2 jobs would fail" in proc.stdout and "round away" in proc.stdout and "bf16-mixed" in proc.stdout


@pytest.mark.e2e
@pytest.mark.skipif(importlib.util.find_spec("torchao") is not None, reason="torchao is installed: bf16-pure can run")
def test_bf16_pure_without_torchao_is_refused(tmp_path):
    proc = run_py(TINY, "trainer.precision=bf16-pure", f"hydra.run.dir={tmp_path / 'job'}", cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    assert "torchao is not installed" in proc.stdout and "Traceback" not in proc.stdout
    assert not (tmp_path / "job" / "checkpoints").exists()


def test_auto_precision_on_cpu_is_fp32_and_fp16_is_refused():
    assert resolve("auto", "cpu").mode == "fp32"
    assert resolve("bf16", "cpu").mode == "bf16-mixed"  # configs saved before the modes had names still rerun
    with pytest.raises(Exception, match="needs CUDA"):
        resolve("fp16-mixed", "cpu")


def test_activation_checkpointing_follows_the_estimate():
    shape = memory.ModelShape(params=500_000_000, lora_params=0, hidden=1024, layers=24, intermediate=2816)
    parts = memory.estimate(
        shape, resolve("bf16-mixed", "cpu"), lora=False, live_reference=True, sequences=16, max_length=1024
    )
    # 0.5B full fine-tuning: 16 bytes/param for weights, grads, Adam, + 2 for the bf16 reference, + 2 for casts.
    assert parts["weights"] + parts["gradients"] + parts["optimizer"] == 16 * 500_000_000
    assert parts["reference"] == parts["casts"] == 1_000_000_000
    assert parts["activations"] == 16 * 1024 * 24 * (32 * 1024 + 8 * 2816)  # memory.ACTIVATIONS for bf16
    assert parts["activations"] > 5 * parts["activations_checkpointed"]
    total = sum(v for k, v in parts.items() if k != "activations_checkpointed")
    assert memory.decide("auto", parts, free=2 * total)[0] is False  # an H200: room to spare
    assert memory.decide("auto", parts, free=total)[0] is True  # a card that would be full
    assert memory.decide("false", parts, free=1)[0] is False  # forced
    assert memory.decide("True", parts, free=1e15)[0] is True
    lora = memory.estimate(
        dataclasses.replace(shape, lora_params=4_000_000),
        resolve("bf16-mixed", "cpu"),
        lora=True,
        live_reference=True,
        sequences=16,
        max_length=1024,
    )
    assert lora["reference"] == lora["casts"] == 0 and lora["optimizer"] == 8 * 4_000_000


@pytest.mark.e2e
def test_model_shape_counts_what_peft_and_transformers_build():
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from dpo_lab.modeling import lora_config

    cfg = compose_cfg([TINY, "peft=lora"])
    toy = tiny_toy()
    shape = memory.model_shape(toy["model"], cfg.model, cfg.peft)
    model = AutoModelForCausalLM.from_pretrained(toy["model"])
    assert shape.params == sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, lora_config(cfg.peft))
    assert shape.lora_params == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    plan = memory.plan(toy["model"], cfg, resolve("auto", "cpu"), "cpu", length=100, pairs=64)
    assert plan.checkpointing is False and 0 < plan.total < plan.free  # a 2-core box has room for the tiny model
    assert plan.length == 100 and plan.batch.train == cfg.trainer.per_device_train_batch_size


@pytest.mark.e2e
@pytest.mark.smoke
@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="needs torchao (.ci/run's lower-bound stage)")
def test_bf16_pure_trains_bf16_weights_with_torchao(tmp_path):
    result = train_job(tmp_path, ["trainer.precision=bf16-pure", "wandb.mode=disabled"])
    assert result["status"] == "completed", result.get("error")
    assert (result["trainable_dtype"], result["compute_dtype"], result["reference_dtype"]) == ("bfloat16",) * 3
    assert "float32" not in result["optimizer_state_dtype"]
    assert {t.dtype for t in load_file(str(tmp_path / "final" / "model.safetensors")).values()} == {torch.bfloat16}
