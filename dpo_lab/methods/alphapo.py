"""method=alphapo: AlphaPO (Gupta et al. 2025) through TRL's experimental CPOTrainer (loss_type alphapo: SimPO with
the reward reshaped as (1 - p^-α) / α): no reference model; α 0 would be plain SimPO (method=simpo)."""

from typing import Any, Dict

from omegaconf import DictConfig

from dpo_lab.errors import UserError
from dpo_lab.methods.base import OLDER_PIPELINE_ARGS, POLICY_ONLY_MASKS, Method, derive_policy_margin, only_default_loss
from dpo_lab.methods.simpo import METHOD as SIMPO


def args(cfg: DictConfig) -> Dict[str, Any]:
    return {
        "beta": cfg.beta,
        "loss_type": "alphapo",
        "alpha": cfg.method.alpha,
        "simpo_gamma": cfg.method.simpo_gamma,
        **OLDER_PIPELINE_ARGS,
    }


def check(cfg: DictConfig) -> None:
    only_default_loss(cfg, "AlphaPO's")
    m = cfg.method
    if m.alpha is None or m.alpha == 0:
        raise UserError(
            f"method.alpha={m.alpha}: AlphaPO's reward shape must be non-zero (alpha 0 is SimPO: method=simpo)."
        )
    if m.simpo_gamma is None or m.simpo_gamma < 0:
        raise UserError(f"method.simpo_gamma={m.simpo_gamma} must be >= 0: the target margin.")


METHOD = Method(
    name="alphapo",
    title="AlphaPO",
    trl_module=SIMPO.trl_module,
    config_class=SIMPO.config_class,
    trainer_class=SIMPO.trainer_class,
    experimental=True,
    shares=False,
    reference=False,
    eval_keys=SIMPO.eval_keys,
    params=("alpha", "simpo_gamma"),
    token_masks=POLICY_ONLY_MASKS,
    logits="full",
    args=args,
    check=check,
    derive=derive_policy_margin,
)
