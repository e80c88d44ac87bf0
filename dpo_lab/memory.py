"""A memory estimate for one DPO run, and the activation-checkpointing decision it drives.

Activation checkpointing recomputes each layer's forward during the backward pass: it saves memory and costs time
(benchmarks/README.md has the measured cost). `trainer.activation_checkpointing=auto`
turns it on only when the run would not fit in the device's free memory without it; `true`/`false` force it.

The estimate, in bytes, for N parameters of which T train, b(x) the size of dtype x (see precision.py):

    weights      N·b(load dtype), + T·4 for LoRA's fp32 adapters
    gradients    T·b(trainable)
    optimizer    T·8: AdamW's two fp32 moments (bf16-pure's 8-bit AdamW: T·2)
    reference    N·b(frozen) for full fine-tuning with a live reference (LoRA: the base itself; precomputed: none)
    casts        N·b(compute) for full fine-tuning under autocast: the low-precision weight copies backward keeps
    activations  tokens·layers·(12·h + 4·i)·b(compute), tokens = 2 (chosen and rejected)·batch·max_length:
                 a Llama-style layer's saved tensors (norms, q/k/v, attention output, the MLP's four i-wide ones);
                 with checkpointing only each layer's input (h) is kept, plus one layer recomputed at a time

It is a planning figure, deliberately on the high side (padding to max_length), not an allocator trace.
"""

import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, Optional

from dpo_lab.precision import BYTES, PURE_OPTIM, Precision

log = logging.getLogger(__name__)

HEADROOM = 0.8  # share of free memory a plan may use: CUDA context, allocator fragmentation, eval and sampling
GB = 1e9


@dataclass
class ModelShape:
    params: int  # N
    lora_params: int  # adapter parameters for the configured LoRA (0 without)
    hidden: int
    layers: int
    intermediate: int


@dataclass
class MemoryPlan:
    parts: Dict[str, float]  # bytes without checkpointing, by part
    checkpointed_activations: float
    free: float  # bytes free on the device when the run planned
    checkpointing: bool
    why: str

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def summary(self) -> Dict[str, float]:
        """For result.json: the decision and its numbers in GB."""
        return {
            "activation_checkpointing": self.checkpointing,
            "memory_estimate_gb": round(self.total / GB, 3),
            "memory_free_gb": round(self.free / GB, 3),
        }


def model_shape(path: str, model_cfg, peft_cfg) -> ModelShape:
    """Parameter count and layer sizes from the checkpoint's config, built on the meta device (no weights read)."""
    import torch

    from dpo_lab.modeling import meta_model

    config, model = meta_model(path, model_cfg)
    lora = 0
    if peft_cfg.enabled:
        output = model.get_output_embeddings()
        for name, module in model.named_modules():
            if (
                isinstance(module, torch.nn.Linear)
                and module is not output
                and _targeted(name, peft_cfg.target_modules)
            ):
                lora += peft_cfg.r * (module.in_features + module.out_features)
    text = config.get_text_config()
    hidden = text.hidden_size
    return ModelShape(
        params=sum(p.numel() for p in model.parameters()),
        lora_params=lora,
        hidden=hidden,
        layers=text.num_hidden_layers,
        intermediate=getattr(text, "intermediate_size", None) or 4 * hidden,
    )


def _targeted(name: str, target) -> bool:
    """peft's matching: all-linear, a regex for the whole name, or a list of module-name suffixes."""
    if target == "all-linear":
        return True
    if isinstance(target, str):
        return re.fullmatch(target, name) is not None
    return name.split(".")[-1] in set(target) or name in set(target)


def estimate(
    shape: ModelShape,
    precision: Precision,
    lora: bool,
    live_reference: bool,
    sequences: int,
    max_length: int,
    optim: Optional[str] = None,
) -> Dict[str, float]:
    """Bytes per part without checkpointing (see the module docstring), plus "activations_checkpointed"."""
    n, b = shape.params, BYTES
    trainable, t_bytes = (shape.lora_params, 4) if lora else (n, b[precision.trainable])
    tokens = sequences * max_length
    per_token_layer = 12 * shape.hidden + 4 * shape.intermediate
    mixed = precision.compute != precision.trainable
    return {
        "weights": n * b[precision.load_dtype(lora)] + (trainable * 4 if lora else 0),
        "gradients": trainable * t_bytes,
        "optimizer": trainable * (2 if optim == PURE_OPTIM else 8),
        "reference": n * b[precision.frozen] if (live_reference and not lora) else 0,
        "casts": n * b[precision.compute] if (mixed and not lora) else 0,
        "activations": tokens * shape.layers * per_token_layer * b[precision.compute],
        "activations_checkpointed": tokens * (shape.layers * shape.hidden + per_token_layer) * b[precision.compute],
    }


def free_memory(device: str) -> float:
    """Bytes free now: on the current CUDA device, or the host's available RAM."""
    if device == "cuda":
        import torch

        # this process's GPU: under `accelerate launch` each rank's LOCAL_RANK, before accelerate selects it
        return float(torch.cuda.mem_get_info(int(os.environ.get("LOCAL_RANK", "0")))[0])
    import psutil

    return float(psutil.virtual_memory().available)


def decide(setting: str, parts: Dict[str, float], free: float) -> MemoryPlan:
    """auto: checkpoint only if the run without it would use more than HEADROOM of the free memory."""
    parts = dict(parts)
    checkpointed = parts.pop("activations_checkpointed")
    total = sum(parts.values())
    setting = str(setting).lower()
    if setting != "auto":
        on, why = setting == "true", "forced by trainer.activation_checkpointing"
    else:
        on = total > HEADROOM * free
        why = f"auto: {total / GB:.2f} GB {'>' if on else '<='} {HEADROOM:.0%} of {free / GB:.1f} GB free"
    return MemoryPlan(parts, checkpointed, free, on, why)


def plan(model_path: str, cfg, precision: Precision, device: str) -> MemoryPlan:
    """Estimate this run's memory and decide activation checkpointing; logs both."""
    t = cfg.trainer
    shape = model_shape(model_path, cfg.model, cfg.peft)
    live_reference = not t.precompute_ref_log_probs
    parts = estimate(
        shape,
        precision,
        cfg.peft.enabled,
        live_reference,
        2 * t.per_device_train_batch_size,
        t.max_length,
        t.extra.get("optim") or precision.trainer_args().get("optim"),
    )
    result = decide(t.activation_checkpointing, parts, free_memory(device))
    log.info(
        "Memory estimate (%d params, batch %d x 2 x %d tokens, %s): %s = %.2f GB; with checkpointing the "
        "activations take %.2f GB. Activation checkpointing %s (%s).",
        shape.params,
        t.per_device_train_batch_size,
        t.max_length,
        precision.mode,
        ", ".join(f"{k} {v / GB:.2f}" for k, v in result.parts.items()),
        result.total / GB,
        result.checkpointed_activations / GB,
        "on" if result.checkpointing else "off",
        result.why,
    )
    return result
