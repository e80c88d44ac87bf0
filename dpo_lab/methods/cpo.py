"""method=cpo: CPO (Xu et al. 2024) through TRL's experimental CPOTrainer: no reference model; a preference loss on
the policy's own log-probs (loss=sigmoid, hinge or ipo) plus cpo_alpha x the chosen answer's NLL."""

from typing import Any, Dict

from omegaconf import DictConfig

from dpo_lab.errors import UserError
from dpo_lab.methods.base import OLDER_PIPELINE_ARGS, POLICY_EVAL_KEYS, POLICY_ONLY_MASKS, Method, derive_policy_margin

LOSSES = ("sigmoid", "hinge", "ipo")  # CPOConfig's loss types besides simpo / alphapo (their own methods)


def args(cfg: DictConfig) -> Dict[str, Any]:
    return {
        "beta": cfg.beta,
        "loss_type": cfg.loss.loss_type[0],
        "label_smoothing": cfg.loss.label_smoothing,
        "cpo_alpha": cfg.method.cpo_alpha,
        **OLDER_PIPELINE_ARGS,
    }


def check(cfg: DictConfig) -> None:
    loss = cfg.loss
    if len(loss.loss_type) != 1 or loss.loss_type[0] not in LOSSES or loss.loss_weights is not None:
        raise UserError(
            f"method=cpo takes one of the losses {', '.join(LOSSES)} (loss=NAME); loss.loss_type="
            f"{list(loss.loss_type)} is DPO's: use method=dpo for it."
        )
    if loss.use_weighting or loss.ld_alpha is not None or loss.f_divergence_type != "reverse_kl":
        raise UserError(
            "loss.use_weighting, loss.ld_alpha and loss.f_divergence_type are DPO's settings: method=cpo "
            "has no reference model to apply them to. Leave them unset, or use method=dpo."
        )
    if not 0 <= loss.label_smoothing < 0.5:
        raise UserError(f"loss.label_smoothing={loss.label_smoothing} must lie in [0, 0.5) for method=cpo.")
    if cfg.method.cpo_alpha is None or cfg.method.cpo_alpha < 0:
        raise UserError(
            f"method.cpo_alpha={cfg.method.cpo_alpha} must be >= 0: the weight of the chosen answer's NLL "
            "(conf/method/cpo.yaml: 1.0, TRL's default)."
        )


METHOD = Method(
    name="cpo",
    title="CPO",
    trl_module="trl.experimental.cpo",
    config_class="CPOConfig",
    trainer_class="CPOTrainer",
    experimental=True,
    shares=False,
    reference=False,
    eval_keys=POLICY_EVAL_KEYS + ("eval_nll_loss",),
    params=("cpo_alpha",),
    token_masks=POLICY_ONLY_MASKS,
    logits="full+nll",
    args=args,
    check=check,
    derive=derive_policy_margin,
)
