"""What a preference method is to dpo-lab: one `Method` record per method module (dpo.py, ...)."""

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple

from omegaconf import DictConfig, OmegaConf

from dpo_lab.config import LossConfig
from dpo_lab.errors import UserError
from dpo_lab.quality import mean_se

# What every paired method's eval logs (TRL's names); a method adds its β-free margin and any keys of its own.
PAIR_EVAL_KEYS = (
    "eval_rewards/margins",
    "eval_rewards/accuracies",
    "eval_rewards/chosen",
    "eval_rewards/rejected",
    "eval_logps/chosen",
    "eval_logps/rejected",
    "eval_loss",
    "eval_rewards/accuracies_se",
)
# The reference-free trainers' (CPO, SimPO, ORPO): their β-free margin is the policy's own log-prob margin.
POLICY_EVAL_KEYS = PAIR_EVAL_KEYS + ("eval_logps/margins", "eval_logps/margins_se")

# TRL's older pipeline (CPO, ORPO) collates one mask per answer, each over prompt + answer.
POLICY_ONLY_MASKS = ("chosen_attention_mask", "rejected_attention_mask")
# Their collator reads columns transformers' Trainer would drop; TRL sets this itself, with a warning at every job.
OLDER_PIPELINE_ARGS = {"remove_unused_columns": False}


@dataclass(frozen=True)
class Method:
    """A preference method: its TRL classes, what it needs, what it logs, and how our config maps onto it."""

    name: str  # the method= option
    title: str  # for logs, progress bars and model cards
    trl_module: str  # where its TRL classes live; imported only when the method is chosen
    config_class: str
    trainer_class: str
    experimental: bool  # TRL ships it under trl.experimental: it may change in any release
    reference: bool  # it has a reference model (TRL's ref_model)
    shares: bool  # a sweep's jobs share its tokenized data and reference log-probs (reuse.py: DPO's columns)
    eval_keys: Tuple[str, ...]  # the eval metrics result.json keeps (TRL's names, eval_ prefixed)
    params: Tuple[str, ...]  # the method.* settings it reads (config.MethodConfig); the others must stay unset
    args: Callable[[DictConfig], Dict[str, Any]]  # the method's own config fields: beta, loss, its parameters
    check: Callable[[DictConfig], None]  # preflight: a UserError naming the key and the fix
    derive: Callable[[Any, bool], None]  # (trainer, training): add β-free metrics to the trainer's before it logs
    rows: Callable[[List[Dict[str, Any]], int], List[Dict[str, Any]]] = lambda rows, seed: rows  # the trainer's
    # rows from checked preference pairs (KTO: two unpaired rows per pair)
    columns: Tuple[str, ...] = ("prompt", "chosen", "rejected")  # the columns of those rows the trainer reads
    data: Tuple[str, ...] = ("paired",)  # the kinds of rows it trains on (data.Preferences.shape)
    token_masks: Tuple[str, ...] = ("attention_mask",)  # the masks of a collated batch whose sum is its tokens
    min_batch: int = 1  # the least per-device batch it trains with (a batch of 1 gives KTO no KL estimate)
    sequences: int = 2  # sequences a micro-batch row trains on, for memory.py (a pair: chosen and rejected)
    logits: str = "fused"  # how its trainer scores the LM head, for memory.py: "fused" (TRL's fused head: DPO, KTO),
    # "full" (the full logits: TRL's older pipeline), "full+nll" (and the chosen answer's NLL, a cross-entropy)


def se_of_batches(values, n: int):
    """The standard error of a mean of per-batch values, repeated n times: TRL logs the mean of each metric's list
    (the batch-means estimate: the eval pass keeps no per-pair values)."""
    return [mean_se(values)["se"]] * n


def derive_policy_margin(trainer, training: bool) -> None:
    """For TRL's reference-free trainers (CPO, ORPO), whose rewards are β x the policy's own log-probs: the log-prob
    margin (reward margin / β) and, at eval, the standard errors of it and of the accuracy. They keep their metrics
    in `_stored_metrics`, eval ones with the eval_ prefix."""
    prefix = "" if training else "eval_"
    m = trainer._stored_metrics["train" if training else "eval"]
    margins = m.get(f"{prefix}rewards/margins")
    if margins:
        m[f"{prefix}logps/margins"] = [v / trainer.beta for v in margins]
        if not training:
            for key in ("eval_logps/margins", "eval_rewards/accuracies"):
                m[f"{key}_se"] = se_of_batches(m[key], len(m[key]))


def only_default_loss(cfg: DictConfig, whose: str) -> None:
    """A method with one loss of its own: the loss group must be left at its default (loss=sigmoid)."""
    if OmegaConf.to_container(cfg.loss) != OmegaConf.to_container(OmegaConf.structured(LossConfig)):
        raise UserError(
            f"method={cfg.method.name} has one loss, {whose} (loss=sigmoid, the default); loss.loss_type="
            f"{list(cfg.loss.loss_type)} and the other loss.* settings are DPO's: use method=dpo for "
            "them."
        )
