"""method=simpo: SimPO (Meng et al. 2024) through TRL's experimental CPOTrainer (loss_type simpo, no NLL term): no
reference model; the reward is β x the length-normalised log-probability, and the margin must exceed γ (simpo_gamma).
β is ~2-10 here, not DPO's 0.01-0.5 (conf/method/simpo.yaml: 2.0, γ 1.0, the SimPO README's γ/β = 0.5)."""

from typing import Any, Dict

from omegaconf import DictConfig

from dpo_lab.errors import UserError
from dpo_lab.methods.base import (
    OLDER_PIPELINE_ARGS,
    POLICY_EVAL_KEYS,
    POLICY_ONLY_MASKS,
    Method,
    derive_policy_margin,
    only_default_loss,
)


def args(cfg: DictConfig) -> Dict[str, Any]:
    return {
        "beta": cfg.beta,
        "loss_type": "simpo",
        "cpo_alpha": 0.0,
        "simpo_gamma": cfg.method.simpo_gamma,
        **OLDER_PIPELINE_ARGS,
    }


def check(cfg: DictConfig) -> None:
    only_default_loss(cfg, "SimPO's")
    gamma = cfg.method.simpo_gamma
    if gamma is None or gamma < 0:
        raise UserError(
            f"method.simpo_gamma={gamma} must be >= 0: SimPO's target margin γ (the SimPO README starts "
            "at γ = β / 2; conf/method/simpo.yaml sets 1.0 for β 2.0)."
        )


METHOD = Method(
    name="simpo",
    title="SimPO",
    trl_module="trl.experimental.cpo",
    config_class="CPOConfig",
    trainer_class="CPOTrainer",
    experimental=True,
    shares=False,
    reference=False,
    eval_keys=POLICY_EVAL_KEYS,
    params=("simpo_gamma",),
    token_masks=POLICY_ONLY_MASKS,
    logits="full",
    args=args,
    check=check,
    derive=derive_policy_margin,
)
