"""Preference methods (issue 20): DPO's trainer arguments stay what they were before methods existed."""

import json

import pytest

from conftest import ROOT, TINY, compose_cfg

GOLDEN = ROOT / "tests" / "data" / "dpo_kwargs_golden.json"
CASES = {"tiny": [TINY], "ipo": [TINY, "loss=ipo"], "mpo": [TINY, "loss=mpo"], "lora": [TINY, "peft=lora"],
         "seed_run": ["experiment=seed_run"], "samples_keep_best": [TINY, "samples.count=4", "samples.keep_best=true"]}  # fmt: skip


def dpo_kwargs(overrides) -> dict:
    """The DPOConfig fields a job of these overrides gets on the CPU, without paths or version-named keys."""
    from dpo_lab.precision import resolve
    from dpo_lab.train import trainer_kwargs

    kw = trainer_kwargs(compose_cfg(overrides), "/job", "cpu", resolve("auto", "cpu"), checkpointing=False)
    kw["checkpointing"] = kw.pop("activation_checkpointing", kw.pop("gradient_checkpointing", None))
    return json.loads(json.dumps(kw, sort_keys=True, default=str))


@pytest.mark.smoke
@pytest.mark.parametrize("case", sorted(CASES))
def test_dpo_trainer_arguments_are_unchanged(case):
    assert dpo_kwargs(CASES[case]) == json.loads(GOLDEN.read_text())[case]


if __name__ == "__main__":  # python tests/test_methods.py: rewrite the golden file (only for an intended change)
    GOLDEN.write_text(json.dumps({c: dpo_kwargs(o) for c, o in sorted(CASES.items())}, indent=1, sort_keys=True) + "\n")
