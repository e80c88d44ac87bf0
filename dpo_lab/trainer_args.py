"""Our config as the method's TRL config (`trainer_kwargs`), built the same way by the job and by preflight (`build`):
a value TRL, transformers or torch would refuse once the job runs is refused before any job starts, named by its
dpo-lab key (`key_of`), not by TRL's field name."""

import dataclasses
import os
import re
from typing import Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf

from dpo_lab import methods
from dpo_lab.config import Config, LossConfig, MethodConfig, TrainerConfig
from dpo_lab.distributed import in_launch, world_size
from dpo_lab.errors import UserError
from dpo_lab.memory import Batch, fixed_batch
from dpo_lab.precision import Precision, resolve
from dpo_lab.samples import sampling

# The dpo-lab key of each TRL field `trainer_kwargs` sets under another name; a field named as ours is found by
# `key_of`, and the rest (output_dir, report_to, ...) dpo-lab sets itself.
RENAMED = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "data_seed": "seed",
    "warmup_steps": "trainer.warmup",
    "bf16": "trainer.precision",
    "fp16": "trainer.precision",
    "gradient_checkpointing": "trainer.activation_checkpointing",
    "activation_checkpointing": "trainer.activation_checkpointing",
    "use_cpu": "trainer.device",
    "load_best_model_at_end": "samples.keep_best",
    "metric_for_best_model": "samples.best_metric",
    "greater_is_better": "samples.best_metric",
}


def key_of(field: str) -> Optional[str]:
    """The dpo-lab key that sets TRL field `field`, or None if dpo-lab sets it itself."""
    if field in RENAMED:
        return RENAMED[field]
    for prefix, schema in (("", Config), ("trainer.", TrainerConfig), ("loss.", LossConfig), ("method.", MethodConfig)):
        found = schema.__dataclass_fields__.get(field)
        if found is not None and not dataclasses.is_dataclass(found.type):
            return prefix + field
    return None


def trainer_kwargs(
    cfg: DictConfig, out_dir: str, device: str, precision: Precision, checkpointing: bool, batch: Batch
) -> Dict[str, Any]:
    """Our config as the fields of the method's TRL config: the training loop's (with the batch memory.plan chose),
    then the method's own (its `args`); cfg.trainer.extra passes any other field of that config."""
    return {
        **_ours(cfg, out_dir, device, precision, checkpointing, batch),
        **OmegaConf.to_container(cfg.trainer.extra),
    }


def _ours(
    cfg: DictConfig, out_dir: str, device: str, precision: Precision, checkpointing: bool, batch: Batch
) -> Dict[str, Any]:
    from dpo_lab.compat import checkpointing_arg

    t = cfg.trainer
    return dict(
        output_dir=os.path.join(out_dir, "checkpoints"),
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        seed=cfg.seed,
        data_seed=cfg.seed,
        **methods.get(cfg.method.name).args(cfg),
        per_device_train_batch_size=batch.train,
        per_device_eval_batch_size=batch.eval,
        gradient_accumulation_steps=batch.accumulation,
        **({"train_sampling_strategy": "group_by_length"} if t.group_by_length else {}),
        eval_strategy="steps",
        eval_steps=t.eval_steps,
        eval_on_start=t.eval_on_start,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps,
        max_length=t.max_length,
        warmup_steps=t.warmup,
        lr_scheduler_type=t.lr_scheduler_type,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        **checkpointing_arg(checkpointing),
        dataloader_num_workers=t.dataloader_num_workers,
        # every parameter that trains takes part in each step: DDP's search for unused ones is a wasted graph walk
        **({"ddp_find_unused_parameters": False} if world_size(t) > 1 else {}),
        use_cpu=device == "cpu",
        **precision.trainer_args(),
        report_to=[],  # wandb logging is callbacks.TrainerLogger, added when the job has a run
        run_name=os.path.basename(out_dir),
        disable_tqdm=False,
        **sampling.trainer_args(cfg),
    )


def check_extra(cfg: DictConfig) -> None:
    """trainer.extra may set only fields of the method's TRL config that dpo-lab does not set itself."""
    method = methods.get(cfg.method.name)
    config_class = methods.trl_classes(method)[0]
    extra = cfg.trainer.extra
    ours = _ours(cfg, "/job", "cpu", resolve("fp32", "cpu"), False, fixed_batch(cfg.trainer))
    ours.update(RENAMED)  # bf16, fp16, gradient_checkpointing, ...: set by dpo-lab whether or not this job sets them
    for field in extra:
        if field in ours:
            key = key_of(field)
            raise UserError(
                f"trainer.extra.{field} is set by {key}: use that instead ({key}=VALUE"
                + ("; see docs/precision-and-memory.md)." if key.startswith("trainer.") else ").")
                if key
                else f"trainer.extra.{field} is set by dpo-lab itself (to {ours[field]!r} here) and cannot be "
                "changed through trainer.extra; drop it."
            )
    unknown = [f for f in extra if f not in config_class.__dataclass_fields__]
    if unknown:
        raise UserError(
            f"trainer.extra has keys {unknown} that trl.{config_class.__name__} (method={method.name}) does not "
            "have. trainer.extra passes fields straight to it; check the spelling against TRL's documentation of "
            f"{config_class.__name__}."
        )


def build(cfg: DictConfig, out_dir: str, device: str, precision: Precision, checkpointing: bool, batch: Batch):
    """The method's TRL config for this job; UserError naming the dpo-lab key of any value it refuses."""
    method = methods.get(cfg.method.name)
    config_class = methods.trl_classes(method)[0]
    kwargs = trainer_kwargs(cfg, out_dir, device, precision, checkpointing, batch)
    try:
        return config_class(**kwargs)
    except Exception as e:  # ValueError mostly; TRL and transformers check in __post_init__ with any exception type
        raise UserError(_refused(config_class.__name__, e, kwargs, cfg.trainer.extra)) from None


def _refused(what: str, error: Exception, kwargs: Dict[str, Any], extra) -> str:
    """`error` from building `what` as one paragraph that names the dpo-lab keys behind the fields it mentions."""
    text = " ".join(str(error).split()) or type(error).__name__
    said = lambda word: re.search(rf"(?<![\w.]){re.escape(str(word))}(?!\w)", text) is not None  # noqa: E731
    named = [f for f in kwargs if said(f)]
    if not named:  # "foo is not a valid SchedulerType": the value names its field
        named = [
            f for f in kwargs if f in extra or key_of(f) if any(len(str(w)) > 1 and said(w) for w in _words(kwargs[f]))
        ]
    keys = []
    for field in named:
        key = f"trainer.extra.{field}" if field in extra else key_of(field)
        if key and key not in [k for k, _ in keys]:
            keys.append((key, kwargs[field]))
    if not keys:
        return (
            f"{what} refuses this config ({text.rstrip('.')}). python run.py --cfg job prints the config, and "
            "dpo_lab/config.py says what each key means."
        )
    one = len(keys) == 1
    return (
        f"{', '.join(f'{k}={v}' for k, v in keys)}: {what} refuses {'it' if one else 'them'} ({text.rstrip('.')}). "
        f"Change {'that value' if one else 'those values'} (dpo_lab/config.py says what each key means)."
    )


def _words(value: Any) -> list:
    """What of a field's value an error message may quote: the value, a dict's keys, a list's items."""
    if isinstance(value, dict):
        return list(value)
    return list(value) if isinstance(value, (list, tuple)) else [value]


def preflight(cfg: DictConfig) -> None:
    """Build what the job will build from the config alone, no weights: the method's TRL config, its optimizer
    class and the learning-rate schedule. On the CPU, so the sweep's own process never holds a CUDA context (the
    device and precision are checked by validate)."""
    import torch
    from transformers import Trainer
    from transformers.optimization import get_scheduler

    if in_launch():
        # A rank of `accelerate launch`: TrainingArguments would join the process group now, before the job builds
        # its cache artifacts outside it (a rank other than 0 then saves no weights). The job builds this config
        # moments later and refuses it the same way.
        return
    mode = "bf16-pure" if cfg.trainer.precision == "bf16-pure" else "fp32"  # bf16-pure brings its own optimizer
    batch = fixed_batch(cfg.trainer, world_size(cfg.trainer))  # the global batch splits over all the job's processes
    args = build(cfg, "/job", "cpu", resolve(mode, "cpu"), False, batch)
    param = torch.nn.Parameter(torch.zeros(1))
    steps = cfg.max_steps or 100  # the schedule's shape, not its length, is what can be refused
    kwargs = {f: getattr(args, f) for f in ("optim", "optim_args", "lr_scheduler_type", "lr_scheduler_kwargs")}
    try:
        Trainer.get_optimizer_cls_and_kwargs(args, torch.nn.Linear(1, 1))
        optimizer = torch.optim.SGD([param], lr=args.learning_rate)  # any optimizer: the schedule only scales its lr
        get_scheduler(
            args.lr_scheduler_type,
            optimizer,
            num_warmup_steps=args.get_warmup_steps(steps),
            num_training_steps=steps,
            scheduler_specific_kwargs=args.lr_scheduler_kwargs,
        )
    except Exception as e:
        raise UserError(_refused("the optimizer or learning-rate schedule", e, kwargs, cfg.trainer.extra)) from None
