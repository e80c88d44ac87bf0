"""method=kto: KTO (Ethayarajh et al. 2024) through TRL's KTOTrainer: a reference model, and unpaired rows. Each
preference pair becomes a desirable row (prompt, chosen) and an undesirable one (prompt, rejected), shuffled with
the run's seed: KTOTrainer reads its rows in order (its KL term pairs each row with another of the same batch)."""

import logging
import random
from typing import Any, Dict, List

from omegaconf import DictConfig

from dpo_lab.errors import UserError
from dpo_lab.methods.base import Method, only_default_loss, se_of_batches

log = logging.getLogger(__name__)


def args(cfg: DictConfig) -> Dict[str, Any]:
    m = cfg.method
    return {
        "beta": cfg.beta,
        "loss_type": "kto",
        "desirable_weight": m.desirable_weight,
        "undesirable_weight": m.undesirable_weight,
        "precompute_ref_log_probs": cfg.trainer.precompute_ref_log_probs,
    }


def check(cfg: DictConfig) -> None:
    only_default_loss(cfg, "KTO's")
    m, batch = cfg.method, cfg.trainer.per_device_train_batch_size
    for key in ("desirable_weight", "undesirable_weight"):
        if m[key] is None or m[key] <= 0:
            raise UserError(f"method.{key}={m[key]} must be > 0 (conf/method/kto.yaml: 1.0).")
    if batch != "auto" and batch < 2:  # auto picks 2 or more (Method.min_batch)
        raise UserError(
            f"method=kto with trainer.per_device_train_batch_size={batch}: KTO estimates its KL term from "
            "the other rows of a per-device batch (TRL refuses a batch of 1). Set "
            "trainer.per_device_train_batch_size=2 or more (KTO's authors suggest an effective batch of "
            "16 or more)."
        )


def rows(given: List[Dict[str, Any]], seed: int) -> List[Dict[str, Any]]:
    """Unpaired rows shuffled with `seed`: a file's, or two per pair (the chosen answer desirable, the rejected not)."""
    if given and "completion" in given[0]:
        out = [dict(r) for r in given]
        how = f"{len(out)} unpaired rows"
    else:
        out = [
            {"prompt": p["prompt"], "completion": p[key], "label": key == "chosen"}
            for p in given
            for key in ("chosen", "rejected")
        ]
        how = f"{len(given)} pairs -> {len(out)} rows"
    random.Random(seed).shuffle(out)
    good = sum(r["label"] for r in out)
    log.info("KTO: %s (%d desirable, %d undesirable), shuffled with seed %d.", how, good, len(out) - good, seed)
    return out


def derive(trainer, training: bool) -> None:
    """The log-ratio margin (TRL's reward margin / β) and, at eval, its standard error."""
    m = trainer._metrics["train" if training else "eval"]
    if m.get("rewards/margins"):
        m["logratios/margins"] = [v / trainer.beta for v in m["rewards/margins"]]
        if not training:
            m["logratios/margins_se"] = se_of_batches(m["logratios/margins"], len(m["logratios/margins"]))


METHOD = Method(
    name="kto",
    title="KTO",
    trl_module="trl",
    config_class="KTOConfig",
    trainer_class="KTOTrainer",
    experimental=False,
    shares=False,
    reference=True,
    eval_keys=(
        "eval_rewards/margins",
        "eval_rewards/chosen",
        "eval_rewards/rejected",
        "eval_logps/chosen",
        "eval_logps/rejected",
        "eval_loss",
        "eval_kl",
        "eval_logratios/margins",
        "eval_logratios/margins_se",
    ),
    params=("desirable_weight", "undesirable_weight"),
    args=args,
    check=check,
    min_batch=2,
    sequences=1,  # a row is one completion; the KL term's forward runs without gradients
    derive=derive,
    rows=rows,
    columns=("prompt", "completion", "label"),
    data=("paired", "unpaired"),
)
