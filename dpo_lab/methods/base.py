"""What a preference method is to dpo-lab: one `Method` record per method module (dpo.py, ...)."""

from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

from omegaconf import DictConfig

from dpo_lab.quality import mean_se


@dataclass(frozen=True)
class Method:
    """A preference method: its TRL classes, what it needs, what it logs, and how our config maps onto it."""

    name: str  # the method= option
    title: str  # for logs, progress bars and model cards
    trl_module: str  # where its TRL classes live; imported only when the method is chosen
    config_class: str
    trainer_class: str
    experimental: bool  # TRL ships it under trl.experimental: it may change in any release
    reference: bool  # it has a reference model (TRL's ref_model; reference log-probs shared by reuse.py)
    eval_keys: Tuple[str, ...]  # the eval metrics result.json keeps (TRL's names, eval_ prefixed)
    args: Callable[[DictConfig], Dict[str, Any]]  # the method's own config fields: beta, loss, its parameters
    check: Callable[[DictConfig], None]  # preflight: a UserError naming the key and the fix
    derive: Callable[[Any, bool], None]  # (trainer, training): add β-free metrics to the trainer's before it logs


def se_of_batches(values, n: int):
    """The standard error of a mean of per-batch values, repeated n times: TRL logs the mean of each metric's list
    (the batch-means estimate: the eval pass keeps no per-pair values)."""
    return [mean_se(values)["se"]] * n
