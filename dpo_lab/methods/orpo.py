"""method=orpo: ORPO (Hong et al. 2024) through TRL's experimental ORPOTrainer: no reference model; the loss is the
chosen answer's NLL plus λ x the odds-ratio term, and `beta` is that λ (conf/method/orpo.yaml: 0.1, the paper's)."""

from typing import Any, Dict

from omegaconf import DictConfig

from dpo_lab.methods.base import (
    OLDER_PIPELINE_ARGS,
    POLICY_EVAL_KEYS,
    POLICY_ONLY_MASKS,
    Method,
    derive_policy_margin,
    only_default_loss,
)


def args(cfg: DictConfig) -> Dict[str, Any]:
    return {"beta": cfg.beta, **OLDER_PIPELINE_ARGS}


def check(cfg: DictConfig) -> None:
    only_default_loss(cfg, "ORPO's odds-ratio loss")


METHOD = Method(
    name="orpo",
    title="ORPO",
    trl_module="trl.experimental.orpo",
    config_class="ORPOConfig",
    trainer_class="ORPOTrainer",
    experimental=True,
    shares=False,
    reference=False,
    eval_keys=POLICY_EVAL_KEYS + ("eval_log_odds_ratio", "eval_log_odds_chosen", "eval_nll_loss"),
    params=(),
    token_masks=POLICY_ONLY_MASKS,
    logits="full+nll",
    args=args,
    check=check,
    derive=derive_policy_margin,
)
