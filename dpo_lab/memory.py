"""A memory estimate for one run, and what it decides: activation checkpointing and an `auto` micro-batch.

Activation checkpointing recomputes each layer's forward during the backward pass: it saves memory and costs time
(benchmarks/README.md has the measured cost). `trainer.activation_checkpointing=auto` turns it on only when the run
would not fit in HEADROOM of the device's free memory without it; `trainer.per_device_train_batch_size=auto` takes
the largest micro-batch that fits there (without checkpointing where one does), keeping `trainer.global_batch_size`.

The estimate, in bytes, for N parameters of which T train, b(x) the size of dtype x (see precision.py):

    weights      N·b(load dtype), + T·4 for LoRA's fp32 adapters
    gradients    T·b(trainable)
    optimizer    T·8: AdamW's two fp32 moments (bf16-pure's 8-bit AdamW: T·2)
    reference    N·b(frozen) for full fine-tuning with a live reference (LoRA: the base itself; precomputed: none)
    casts        N·b(compute) for full fine-tuning under autocast: the low-precision weight copies backward keeps
    activations  tokens·layers·(a·h + c·i): what autograd saves per token and layer (ACTIVATIONS), tokens =
                 Method.sequences (a pair: chosen and rejected)·batch·length, length = the data's longest prompt +
                 answer up to max_length (a batch pads to its longest); with checkpointing each layer keeps its
                 input (CHECKPOINTED·h) and one layer is recomputed at a time
    logits       what the LM head's output holds (Method.logits): the full logits of TRL's older pipeline (CPO,
                 SimPO, AlphaPO, ORPO), tokens·vocab·FULL_LOGITS; or TRL's fused head (DPO, KTO), a buffer of
                 min(tokens, 4096)·32768 entries in the compute dtype (+ FUSED_CPU per entry of each tile on the CPU)

`python benchmarks/memory_model.py` measures ACTIVATIONS (bytes autograd saves, on the CPU) and sets the estimate
beside the peaks measured on GPUs (benchmarks/README.md, "The memory model"); `--logits` measures FULL_LOGITS and
FUSED_CPU.
"""

import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from dpo_lab import methods
from dpo_lab.errors import UserError
from dpo_lab.precision import BYTES, PURE_OPTIM, Precision

log = logging.getLogger(__name__)

HEADROOM = 0.8  # share of free memory a plan may use: CUDA context, allocator fragmentation, eval and sampling
GB = 1e9
# Bytes autograd keeps per token and layer, (a, c) for a·hidden + c·intermediate, by compute dtype: a Qwen2/Llama
# layer's norms (fp32 under autocast: the residual stream stays fp32), q/k/v and attention output, the MLP's i-wide
# tensors, and autocast's casts of them (measured, benchmarks/memory_model.py).
ACTIVATIONS = {"float32": (36, 16), "bfloat16": (32, 8), "float16": (32, 8)}
# peft's fp32 copies of each targeted layer's input (and its dropout) under fp32 compute; under autocast the GPU
# peaks measured show none beyond full fine-tuning's.
LORA_FP32 = (32, 4)
CHECKPOINTED = 4  # bytes per hidden unit a checkpointed layer keeps: its (fp32) input
# Bytes per token and vocabulary entry of the full logits at a step's peak, by Method.logits: the logits, their
# log-softmax and its gradient; the NLL term adds a cross-entropy over the chosen half (measured, rounded up).
FULL_LOGITS = {"full": 12, "full+nll": 14}
# TRL's fused LM head (trl 1.16, kernels/chunked_logprob.py) projects onto a buffer of (tokens, vocabulary entries)
# and, on a CUDA GPU, folds it in place with a Triton kernel; elsewhere its torch fallback holds FUSED_CPU bytes more
# per entry of each min(tokens, 4096) x min(vocab, 32768) tile (measured on the CPU).
FUSED_TILE = (4096, 32768)
FUSED_CPU = 29
PACK_BATCH = 8  # pairs an `auto` micro-batch counts as when jobs_per_gpu=auto packs jobs onto a card
SHARE_ENV = "DPO_LAB_GPU_SHARE"  # set by gpus.gpu_env: the share of the card a job may plan with when jobs share it
AUTO_BATCH_MAX = 64  # the largest micro-batch `auto` picks without a global batch: past it, steps get no faster


@dataclass
class ModelShape:
    params: int  # N
    lora_params: int  # adapter parameters for the configured LoRA (0 without)
    hidden: int
    layers: int
    intermediate: int
    vocab: int = 0  # the LM head's outputs (0: unknown, and the estimate's logits part is left out)


@dataclass(frozen=True)
class Batch:
    """Pairs per device per micro-batch (train, eval) and micro-batches per optimizer step."""

    train: int
    eval: int
    accumulation: int
    why: str = "set by trainer.per_device_train_batch_size"


@dataclass
class MemoryPlan:
    parts: Dict[str, float]  # bytes at the chosen batch without checkpointing, by part
    checkpointed_activations: float
    free: float  # bytes the run may plan with: free on the device (or the job's share of it)
    checkpointing: bool
    why: str
    batch: Batch
    length: int  # tokens per sequence the estimate pads to
    world: int = 1  # processes the job spans

    @property
    def global_batch(self) -> int:
        """Pairs per optimizer step on all processes."""
        return self.batch.train * self.batch.accumulation * self.world

    @property
    def total(self) -> float:
        """The estimate as the run goes: with checkpointed activations when checkpointing is on."""
        if not self.checkpointing:
            return sum(self.parts.values())
        return sum(v for k, v in self.parts.items() if k != "activations") + self.checkpointed_activations

    def summary(self) -> Dict[str, Any]:
        """For result.json: the decisions and their numbers in GB."""
        return {
            "activation_checkpointing": self.checkpointing,
            "memory_estimate_gb": round(self.total / GB, 3),
            "memory_free_gb": round(self.free / GB, 3),
            "memory_length": self.length,
            "per_device_train_batch_size": self.batch.train,
            "per_device_eval_batch_size": self.batch.eval,
            "gradient_accumulation_steps": self.batch.accumulation,
            "global_batch_size": self.global_batch,
            "batch_why": self.batch.why,
        }


def model_shape(path: str, model_cfg, peft_cfg) -> ModelShape:
    """Parameter count and layer sizes from the checkpoint's config, built on the meta device (no weights read)."""
    import torch

    from dpo_lab.modeling import meta_model

    config, model = meta_model(path, model_cfg)
    output = model.get_output_embeddings()
    lora = 0
    if peft_cfg.enabled:
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
        vocab=output.out_features if output is not None else text.vocab_size,
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
    logits: str = "fused",
    device: str = "cuda",
) -> Dict[str, float]:
    """Bytes per part without checkpointing (see the module docstring), plus "activations_checkpointed";
    `max_length`: the tokens each of the `sequences` pads to; `logits`: the method's Method.logits."""
    n, b = shape.params, BYTES
    trainable, t_bytes = (shape.lora_params, 4) if lora else (n, b[precision.trainable])
    tokens = sequences * max_length
    a, c = ACTIVATIONS[precision.compute]
    if lora and precision.compute == "float32":
        a, c = a + LORA_FP32[0], c + LORA_FP32[1]
    per_token_layer = a * shape.hidden + c * shape.intermediate
    mixed = precision.compute != precision.trainable
    return {
        "weights": n * b[precision.load_dtype(lora)] + (trainable * 4 if lora else 0),
        "gradients": trainable * t_bytes,
        "optimizer": trainable * (2 if optim == PURE_OPTIM else 8),
        "reference": n * b[precision.frozen] if (live_reference and not lora) else 0,
        "casts": n * b[precision.compute] if (mixed and not lora) else 0,
        "logits": _logits(shape.vocab, tokens, logits, b[precision.compute], device),
        "activations": tokens * shape.layers * per_token_layer,
        "activations_checkpointed": tokens * (shape.layers * CHECKPOINTED * shape.hidden + per_token_layer),
    }


def _logits(vocab: int, tokens: int, how: str, compute_bytes: int, device: str) -> float:
    """Bytes the LM head's output holds at a step's peak (the module docstring's `logits`); 0 for an unknown vocab."""
    if not vocab:
        return 0
    if how != "fused":
        return tokens * vocab * FULL_LOGITS[how]
    rows, width = min(tokens, FUSED_TILE[0]), FUSED_TILE[1]
    without_triton = rows * min(vocab, width) * FUSED_CPU if device != "cuda" else 0
    return rows * width * compute_bytes + without_triton


def free_memory(device: str) -> float:
    """Bytes free now: on the current CUDA device (at most this job's share of the card, when jobs share it: they
    start at once, and each would see the others' memory as free), or the host's available RAM."""
    if device == "cuda":
        import torch

        # this process's GPU: under `accelerate launch` each rank's LOCAL_RANK, before accelerate selects it
        free, card = torch.cuda.mem_get_info(int(os.environ.get("LOCAL_RANK", "0")))
        return float(min(free, card * float(os.environ.get(SHARE_ENV, "1"))))
    import psutil

    return float(psutil.virtual_memory().available)


def decide(setting: str, parts: Dict[str, float], free: float) -> Tuple[bool, str]:
    """auto: checkpoint only if the run without it would use more than HEADROOM of the free memory."""
    total = sum(v for k, v in parts.items() if k != "activations_checkpointed")
    setting = str(setting).lower()
    if setting != "auto":
        return setting == "true", "forced by trainer.activation_checkpointing"
    on = total > HEADROOM * free
    return on, f"auto: {total / GB:.2f} GB {'>' if on else '<='} {HEADROOM:.0%} of {free / GB:.1f} GB free"


def total(parts: Dict[str, float], checkpointing: bool) -> float:
    """estimate()'s bytes as the run goes, with or without checkpointing."""
    drop = "activations" if checkpointing else "activations_checkpointed"
    return sum(v for k, v in parts.items() if k != drop)


def fits(parts: Dict[str, float], free: float, checkpointing: bool) -> bool:
    return total(parts, checkpointing) <= HEADROOM * free


def choose_batch(
    parts_at, free: float, setting: str, per_device_global: Optional[int], pairs: int, smallest: int = 1
) -> Tuple[int, bool, str]:
    """(micro-batch, checkpointing, why) for per_device_train_batch_size=auto: the largest candidate that fits
    HEADROOM of `free` without checkpointing, else (checkpointing auto) with it. Candidates: the divisors of the
    per-device global batch when one is set, else `smallest` .. min(AUTO_BATCH_MAX, pairs) (`smallest`: the method's
    least batch, Method.min_batch). `parts_at(batch)`: estimate()."""
    if per_device_global:
        candidates = [d for d in range(per_device_global, 0, -1) if per_device_global % d == 0 and d >= smallest]
    else:
        candidates = list(range(max(smallest, min(AUTO_BATCH_MAX, pairs)), smallest - 1, -1))
    if not candidates:
        raise UserError(
            f"trainer.global_batch_size gives {per_device_global} pairs per device, fewer than this method's least "
            f"micro-batch, {smallest}: raise trainer.global_batch_size."
        )
    setting = str(setting).lower()
    modes = {"auto": (False, True), "true": (True,), "false": (False,)}[setting]
    for checkpointing in modes:
        for batch in candidates:
            if fits(parts_at(batch), free, checkpointing):
                how = "with checkpointing" if checkpointing else "without checkpointing"
                cap = f"divisors of {per_device_global}" if per_device_global else f"{smallest}..{candidates[0]}"
                fit = f"{HEADROOM:.0%} of {free / GB:.1f} GB free"
                return batch, checkpointing, f"auto: the largest of {cap} that fits {fit} {how}"
    batch, checkpointing = candidates[-1], modes[-1]
    return (
        batch,
        checkpointing,
        (f"auto: not even {batch} fits {HEADROOM:.0%} of {free / GB:.1f} GB free by the estimate; trying {batch}"),
    )


def resolve_batch(t, free: float, parts_at, pairs: int, world: int, smallest: int = 1) -> Tuple[Batch, bool, str]:
    """The run's Batch and checkpointing decision from trainer settings `t`: fixed sizes are kept, `auto` ones
    chosen by choose_batch, and trainer.global_batch_size (pairs per optimizer step on all `world` devices) sets
    the accumulation."""
    per_device_global = global_per_device(t, world)
    if str(t.per_device_train_batch_size) == "auto":
        train, checkpointing, why = choose_batch(
            parts_at, free, t.activation_checkpointing, per_device_global, pairs, smallest
        )
        forced = str(t.activation_checkpointing).lower() != "auto"
        why_ckpt = "forced by trainer.activation_checkpointing" if forced else why
    else:
        train, why = int(t.per_device_train_batch_size), "set by trainer.per_device_train_batch_size"
        checkpointing, why_ckpt = decide(t.activation_checkpointing, parts_at(train), free)
    accumulation = per_device_global // train if per_device_global else int(t.gradient_accumulation_steps)
    if str(t.per_device_eval_batch_size) == "auto":
        evals = 2 * train  # a forward without autograd keeps no activations
    else:
        evals = int(t.per_device_eval_batch_size)
    return Batch(train, evals, accumulation, why), checkpointing, why_ckpt


def fixed_batch(t, world: int = 1) -> Batch:
    """The Batch of trainer settings `t` before any memory is known (an `auto` size counts as 1 pair): preflight
    builds the TRL config with it, and checks that trainer.global_batch_size splits."""
    per_device = global_per_device(t, world)
    train = 1 if str(t.per_device_train_batch_size) == "auto" else int(t.per_device_train_batch_size)
    evals = 2 * train if str(t.per_device_eval_batch_size) == "auto" else int(t.per_device_eval_batch_size)
    return Batch(train, evals, per_device // train if per_device else int(t.gradient_accumulation_steps))


def global_per_device(t, world: int) -> Optional[int]:
    """trainer.global_batch_size per device, or None when unset; UserError when the devices cannot split it."""
    if t.global_batch_size is None:
        return None
    if t.global_batch_size % world:
        raise UserError(
            f"trainer.global_batch_size={t.global_batch_size} does not split over {world} devices: use a multiple "
            f"of {world}."
        )
    per_device = t.global_batch_size // world
    fixed = str(t.per_device_train_batch_size)
    if fixed != "auto" and per_device % int(fixed):
        raise UserError(
            f"trainer.global_batch_size={t.global_batch_size} is not a whole number of micro-batches of "
            f"trainer.per_device_train_batch_size={fixed} on {world} device(s): use a divisor of {per_device}, "
            "or per_device_train_batch_size=auto."
        )
    return per_device


def job_estimate(model_path: str, cfg, length: int) -> float:
    """Bytes a job of `cfg` will use on a GPU, for jobs_per_gpu=auto before any job starts: auto precision as
    bf16-mixed, an `auto` micro-batch as PACK_BATCH pairs (it then grows into the job's share of the card)."""
    from dpo_lab.precision import LEGACY, PLANS

    t = cfg.trainer
    mode = str(t.precision)
    precision = PLANS["bf16-mixed" if mode == "auto" else LEGACY.get(mode, mode)]
    batch = fixed_batch(t).train if str(t.per_device_train_batch_size) != "auto" else PACK_BATCH
    _, parts_at = _estimator(model_path, cfg, precision, min(length, t.max_length), "cuda")
    return total(parts_at(batch), str(t.activation_checkpointing).lower() == "true")


def _estimator(model_path: str, cfg, precision: Precision, length: int, device: str):
    """(the model's shape, estimate() of this job's settings as a function of its micro-batch in pairs)."""
    t = cfg.trainer
    shape = model_shape(model_path, cfg.model, cfg.peft)
    optim = t.extra.get("optim") or precision.trainer_args().get("optim")
    method = methods.get(cfg.method.name)
    live_reference = not t.precompute_ref_log_probs
    return shape, lambda batch: estimate(
        shape,
        precision,
        cfg.peft.enabled,
        live_reference,
        method.sequences * batch,
        length,
        optim,
        method.logits,
        device,
    )


def plan(
    model_path: str, cfg, precision: Precision, device: str, length: int, pairs: int, smallest: int = 1
) -> MemoryPlan:
    """Estimate this run's memory, pick an `auto` micro-batch and decide activation checkpointing; logs all three.
    `length`: the data's longest prompt + answer in tokens (capped at max_length); `pairs`: train rows;
    `smallest`: the method's least micro-batch."""
    t = cfg.trainer
    length = max(1, min(length, t.max_length))
    shape, parts_at = _estimator(model_path, cfg, precision, length, device)
    free = free_memory(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batch, checkpointing, why = resolve_batch(t, free, parts_at, pairs, world, smallest)
    parts = parts_at(batch.train)
    checkpointed = parts.pop("activations_checkpointed")
    result = MemoryPlan(parts, checkpointed, free, checkpointing, why, batch, length, world)
    log.info(
        "Memory estimate (%d params, batch %d x %d x %d tokens, %s): %s = %.2f GB; with checkpointing the "
        "activations take %.2f GB. Micro-batch %d x %d accumulation x %d process(es) = %d pairs per step (%s). "
        "Activation checkpointing %s (%s).",
        shape.params,
        batch.train,
        methods.get(cfg.method.name).sequences,
        length,
        precision.mode,
        ", ".join(f"{k} {v / GB:.2f}" for k, v in parts.items() if v),
        sum(parts.values()) / GB,
        checkpointed / GB,
        batch.train,
        batch.accumulation,
        world,
        result.global_batch,
        batch.why,
        "on" if checkpointing else "off",
        why,
    )
    return result
