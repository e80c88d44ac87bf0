"""Secrets and untrusted inputs (issue 11): tokens in the environment end up in no file a run writes and not on the
console; checkpoints and remote configs are data, never code."""

import os
import shutil
from pathlib import Path

import pytest
from helpers import TINY, compose_cfg, run_py, tiny_toy

from dpo_lab.errors import UserError

# Fake, but shaped like the real ones (a wandb key is 40 characters; HF tokens start with hf_).
WANDB_KEY = "plantedwandbkey0dpolab0test0notreal01234"
HF_TOKEN = "hf_plantedDpoLabTokenNotReal0123456789ab"


@pytest.mark.slow
def test_planted_tokens_appear_in_no_file_of_a_sweep_and_not_on_the_console(tmp_path):
    home = tmp_path / "wandb-home"  # wandb's own directories, so that whatever it writes is checked too
    env = {
        **os.environ,
        "WANDB_API_KEY": WANDB_KEY,
        "HF_TOKEN": HF_TOKEN,
        "HUGGING_FACE_HUB_TOKEN": HF_TOKEN,
        **{f"WANDB_{d}_DIR": str(home / d.lower()) for d in ("CONFIG", "CACHE", "DATA")},
    }
    sweep, results = tmp_path / "sweep", tmp_path / "results"
    proc = run_py(
        "-m",
        TINY,
        "wandb.mode=offline",
        "seed=1",
        f"hydra.sweep.dir={sweep}",
        f"results_dir={results}",
        cwd=tmp_path,
        env=env,
        check=True,
    )
    job = sweep / "0"
    written = [
        p
        for root in (tmp_path, os.environ["DPO_LAB_CACHE"])
        for p in Path(root).rglob("*")
        if p.is_file() and not p.is_symlink()
    ]
    names = {p.name for p in written}
    # what the check covers: the job's own files, wandb's (its binary .wandb log too), the sweep's and the report's
    assert {
        "config.yaml",
        "job.json",
        "run_info.json",
        "result.json",
        "train.log",
        "sweep.json",
        "multirun.yaml",
        "hydra.yaml",
        "report.md",
        "output.log",
        "debug-internal.log",
    } <= names
    assert list(job.rglob("*.wandb"))
    for secret in (WANDB_KEY, HF_TOKEN):
        assert secret not in proc.stdout
        leaks = [str(p) for p in written if secret.encode() in p.read_bytes()]
        assert not leaks, f"{secret[:8]}... found in {leaks}"


def _record_from_pretrained(monkeypatch, cls_name):
    import transformers

    seen = {}

    def fake(path, **kwargs):
        seen.update(kwargs)
        raise OSError("recorded")

    monkeypatch.setattr(getattr(transformers, cls_name), "from_pretrained", fake)
    return seen


@pytest.mark.parametrize("trust", [False, True])
def test_remote_code_runs_only_when_the_model_config_turns_it_on(monkeypatch, trust):
    from dpo_lab.modeling import load_model, load_tokenizer

    cfg = compose_cfg([TINY, "model=hf", "model.path=some/model", f"model.trust_remote_code={trust}"])
    model = _record_from_pretrained(monkeypatch, "AutoModelForCausalLM")
    with pytest.raises(UserError):
        load_model(cfg.model.path, cfg.model, "float32")
    assert model["trust_remote_code"] is trust
    assert model.get("use_safetensors", None) is not False  # transformers 5 prefers safetensors unless told not to
    tok = _record_from_pretrained(monkeypatch, "AutoTokenizer")
    with pytest.raises(UserError):
        load_tokenizer(cfg.model.path, None, cfg.model.trust_remote_code)
    assert tok["trust_remote_code"] is trust


class _Planted:
    """A pickle that runs a command when loaded: what a hostile pytorch_model.bin holds."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.e2e
@pytest.mark.parametrize("safetensors", [True, False])
def test_a_pickled_checkpoint_never_runs_its_code(tmp_path, safetensors):
    import torch

    from dpo_lab.modeling import load_model

    ckpt, marker = tmp_path / "ckpt", tmp_path / "ran"
    shutil.copytree(tiny_toy()["model"], ckpt)
    torch.save({"model.embed_tokens.weight": _Planted(marker)}, ckpt / "pytorch_model.bin")
    if not safetensors:
        (ckpt / "model.safetensors").unlink()
    cfg = compose_cfg([TINY, "model=hf", f"model.path={ckpt}"])
    if safetensors:  # the safetensors file is what loads; the pickle beside it is never opened
        assert load_model(str(ckpt), cfg.model, "float32") is not None
    else:
        with pytest.raises(UserError, match="runs no code from checkpoints.*convert it to safetensors"):
            load_model(str(ckpt), cfg.model, "float32")
    assert not marker.exists()


def test_a_remote_wandb_config_instantiates_nothing_and_reads_no_environment(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from dpo_lab.jobdir import load_config
    from dpo_lab.rerun import write_logged_config

    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a) or 0)
    monkeypatch.setattr("hydra.utils.instantiate", lambda *a, **k: called.append(a))
    logged = {
        "_target_": "os.system",
        "hydra": {"callbacks": {"x": {"_target_": "os.system", "command": "touch x"}}},
        "beta": 0.3,
        "model": {"_target_": "os.system", "path": "some/model", "trust_remote_code": True},
        "trainer": {"extra": {"_target_": "os.system"}},
        "loss": {"loss_type": ["ipo"]},
        "overrides": ["beta=0.3"],
        "trl": {"beta": 0.3},
        "unknown_top_level": {"_target_": "os.system"},
    }
    write_logged_config(logged, str(tmp_path / "job"))
    saved = OmegaConf.to_container(OmegaConf.load(tmp_path / "job" / "config.yaml"))
    assert saved == {
        "beta": 0.3,
        "model": {"path": "some/model", "trust_remote_code": False},
        "trainer": {"extra": {}},
        "loss": {"loss_type": ["ipo"]},
    }
    cfg = load_config(str(tmp_path / "job" / "config.yaml"), ["model.trust_remote_code=true"])  # asked for here
    assert cfg.beta == 0.3 and cfg.model.trust_remote_code is True and not called

    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    with pytest.raises(UserError, match=r"sets name='\$\{oc.env:HF_TOKEN\}', an interpolation"):
        write_logged_config({"name": "${oc.env:HF_TOKEN}"}, str(tmp_path / "other"))
    with pytest.raises(UserError, match=r"wandb.tags\[1\]="):
        write_logged_config({"wandb": {"tags": ["ok", "${oc.env:HF_TOKEN}"]}}, str(tmp_path / "other"))
    assert not called
