"""method=dpo: TRL's DPOTrainer, with every loss type DPOConfig has (`loss=`, conf/loss/)."""

from typing import Any, Dict

from omegaconf import DictConfig, OmegaConf

from dpo_lab.config import LOSS_TYPES
from dpo_lab.errors import UserError
from dpo_lab.methods.base import PAIR_EVAL_KEYS, Method, se_of_batches

F_DIVERGENCE_LOSSES = {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"}


def args(cfg: DictConfig) -> Dict[str, Any]:
    """beta, the loss group's fields (DPOConfig's names) and whether reference log-probs are precomputed."""
    return {
        "beta": cfg.beta,
        **OmegaConf.to_container(cfg.loss),
        "precompute_ref_log_probs": cfg.trainer.precompute_ref_log_probs,
    }


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def check(cfg: DictConfig) -> None:
    """The loss group's rules: known loss types, weights, and each loss's own parameter ranges."""
    loss = cfg.loss
    types = list(loss.loss_type)
    _check(len(types) > 0, "loss.loss_type is empty: give at least one loss type, e.g. loss=sigmoid.")
    for t in types:
        _check(
            t in LOSS_TYPES, f"loss.loss_type contains {t!r}, which TRL does not know. Valid: {', '.join(LOSS_TYPES)}."
        )
    if loss.loss_weights is not None:
        _check(
            len(loss.loss_weights) == len(types),
            f"loss.loss_weights has {len(loss.loss_weights)} entries for {len(types)} loss types {types}: "
            "give one weight per loss type, or leave loss_weights unset for equal weights.",
        )
        _check(all(w >= 0 for w in loss.loss_weights), f"loss.loss_weights {list(loss.loss_weights)} must be >= 0.")
    if "robust" in types:
        _check(
            0.0 <= loss.label_smoothing < 0.5,
            f"loss.label_smoothing={loss.label_smoothing} is out of range for the robust loss: it is the probability "
            "that a label is flipped and must lie in [0, 0.5) (the Robust DPO paper suggests 0.1).",
        )
    if "exo_pair" in types:
        _check(
            0.0 < loss.label_smoothing < 1.0,
            f"loss.label_smoothing={loss.label_smoothing} is out of range for exo_pair: it is EXO's epsilon and must "
            "lie in (0, 1) (the paper suggests 1e-3).",
        )
    _check(
        not (loss.use_weighting and {"aot", "aot_unpaired"} & set(types)),
        "loss.use_weighting=true (WPO) is not implemented for aot / aot_unpaired in TRL: drop one of them.",
    )
    _check(loss.discopop_tau > 0, f"loss.discopop_tau={loss.discopop_tau} must be > 0 (the paper uses 0.05).")
    if loss.ld_alpha is not None:
        _check(0.0 <= loss.ld_alpha <= 1.0, f"loss.ld_alpha={loss.ld_alpha} must lie in [0, 1] (or be null).")
    if loss.f_divergence_type != "reverse_kl":
        unsupported = sorted(set(types) - F_DIVERGENCE_LOSSES)
        _check(
            not unsupported,
            f"loss.f_divergence_type={loss.f_divergence_type!r} is not defined for loss types {unsupported}; "
            f"use it only with {sorted(F_DIVERGENCE_LOSSES)} or keep reverse_kl.",
        )


def derive(trainer, training: bool) -> None:
    """The log-ratio margin (TRL's reward margin / β: its rewards are β x log-ratios) and, at eval, the standard
    errors of it and of the accuracy."""
    m = trainer._metrics["train" if training else "eval"]
    if m.get("rewards/margins"):
        m["logratios/margins"] = [v / trainer.beta for v in m["rewards/margins"]]
        if not training:
            for key in ("logratios/margins", "rewards/accuracies"):
                m[f"{key}_se"] = se_of_batches(m[key], len(m[key]))


METHOD = Method(
    name="dpo",
    title="DPO",
    trl_module="trl",
    config_class="DPOConfig",
    trainer_class="DPOTrainer",
    experimental=False,
    shares=True,
    reference=True,
    eval_keys=PAIR_EVAL_KEYS + ("eval_logratios/margins", "eval_logratios/margins_se"),
    params=(),
    args=args,
    check=check,
    derive=derive,
)
