"""Precision: which dtype each part of a run holds, chosen once from `trainer.precision`, and read back after.

    mode        trainable weights, optimizer state   frozen weights (LoRA base, reference)   compute
    fp32        fp32                                 fp32                                    fp32
    bf16-mixed  fp32                                 bf16                                    bf16 autocast
    fp16-mixed  fp32                                 fp16                                    fp16 autocast, loss scaling
    bf16-pure   bf16, 8-bit AdamW with stochastic    bf16                                    bf16
                rounding (torchao)

`auto` is bf16-mixed on a CUDA GPU with bf16, fp16-mixed on older ones, fp32 on CPU. Weights load in the dtype above
whatever dtype the checkpoint was saved in: transformers 5 would keep a bf16 checkpoint in bf16, where AdamW's small
updates round away (TRL loads a model given by name in fp32 for the same reason). LoRA adapters are fp32 in every
mode (peft upcasts them), so with LoRA bf16-pure behaves as bf16-mixed.
"""

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any, Dict, Optional

from dpo_lab import tracking
from dpo_lab.errors import UserError

log = logging.getLogger(__name__)

LEGACY = {"bf16": "bf16-mixed", "fp16": "fp16-mixed"}  # earlier names, so saved configs still rerun
# transformers' name for torchao's 8-bit AdamW; with bf16_stochastic_round it keeps small updates to bf16 weights.
PURE_OPTIM = "adamw_torch_8bit"
PURE_OPTIM_ARGS = "bf16_stochastic_round=True"
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Precision:
    mode: str
    trainable: str  # weights full fine-tuning updates
    frozen: str  # weights that never train: LoRA's base model, the reference copy
    compute: str  # matmul dtype: autocast's, or the weights' own

    def load_dtype(self, lora: bool) -> str:
        """The policy's load dtype: LoRA's base is frozen (peft adds fp32 adapters); full fine-tuning trains it all."""
        return self.frozen if lora else self.trainable

    def trainer_args(self) -> Dict[str, Any]:
        """DPOConfig fields: autocast flags, and for bf16-pure the stochastic-rounding optimizer."""
        args: Dict[str, Any] = {"bf16": self.compute == "bfloat16", "fp16": self.compute == "float16"}
        if self.mode == "bf16-pure":
            args.update(optim=PURE_OPTIM, optim_args=PURE_OPTIM_ARGS)
        return args


PLANS = {
    "fp32": Precision("fp32", "float32", "float32", "float32"),
    "bf16-mixed": Precision("bf16-mixed", "float32", "bfloat16", "bfloat16"),
    "fp16-mixed": Precision("fp16-mixed", "float32", "float16", "float16"),
    "bf16-pure": Precision("bf16-pure", "bfloat16", "bfloat16", "bfloat16"),
}


def check(mode: str, extra: Dict[str, Any]) -> Optional[str]:
    """Why `mode` cannot run here (None if it can); device-independent, so preflight runs it for every job."""
    if mode != "bf16-pure":
        return None
    if "optim" in extra or "optim_args" in extra:
        return (
            f"trainer.precision=bf16-pure keeps the trained weights in bf16, where AdamW's small updates round "
            f"away to nothing, so it brings its own optimizer ({PURE_OPTIM} with {PURE_OPTIM_ARGS}); "
            f"trainer.extra.optim={extra.get('optim')!r} / optim_args={extra.get('optim_args')!r} would replace "
            "it. Drop them, or use trainer.precision=bf16-mixed."
        )
    if importlib.util.find_spec("torchao") is None:
        return (
            "trainer.precision=bf16-pure keeps the trained weights in bf16, where AdamW's small updates round away "
            "to nothing; it needs torchao's AdamW with stochastic rounding, and torchao is not installed. Install "
            "it (pip install 'dpo-lab[bf16-pure]'), or use trainer.precision=bf16-mixed (fp32 weights and "
            "optimizer state, bf16 compute: about 10 more bytes per trained parameter)."
        )
    return None


def resolve(mode: str, device: str) -> Precision:
    """The plan for `mode` on `device` (auto picks); UserError where the device cannot run it."""
    import torch

    bf16_ok = device == "cpu" or torch.cuda.is_bf16_supported()
    mode = LEGACY.get(mode, mode)
    if mode == "auto":
        mode = "fp32" if device == "cpu" else "bf16-mixed" if bf16_ok else "fp16-mixed"
    if device == "cpu" and mode == "fp16-mixed":
        raise UserError("trainer.precision=fp16-mixed needs CUDA; on CPU use fp32 (or auto, or bf16-mixed).")
    if mode.startswith("bf16") and not bf16_ok:
        raise UserError(
            f"trainer.precision={mode} needs a GPU with bf16 (Ampere or newer); this one has none: "
            "use fp16-mixed (or auto)."
        )
    return PLANS[mode]


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


class DtypeReport:
    """The dtypes a run really used, read off its trainer after the first optimizer step: trainable weights,
    optimizer state, compute (the output of a linear layer in a training forward) and reference weights."""

    def __init__(self, trainer, run=None):
        self.trainer, self.run = trainer, run
        self.dtypes: Dict[str, Optional[str]] = {}
        self.compute: Optional[str] = None
        self._hook = None

    def watch(self, model) -> None:
        """Hook the first linear layer: what autocast really computed in, seen in the first training forward."""
        import torch

        linear = next((m for m in model.modules() if isinstance(m, torch.nn.Linear)), None)
        if linear is None or self._hook is not None:
            return

        def hook(module, inputs, output):
            if module.training and self.compute is None and torch.is_tensor(output):
                self.compute = dtype_name(output.dtype)

        self._hook = linear.register_forward_hook(hook)

    def read(self) -> Dict[str, Optional[str]]:
        """Read the dtypes off the trainer; log them and put them in the wandb config."""
        import torch
        from accelerate.utils import is_peft_model

        trainer = self.trainer
        model = trainer.accelerator.unwrap_model(trainer.model)
        trainable = {dtype_name(p.dtype) for p in model.parameters() if p.requires_grad}
        states = trainer.optimizer.state.values() if trainer.optimizer is not None else ()
        # torchao's 8-bit state is a tensor subclass whose .dtype is the dequantized one: name the class instead
        state = {
            dtype_name(v.dtype) if type(v) is torch.Tensor else type(v).__name__
            for s in states
            for v in s.values()
            if torch.is_tensor(v) and v.dim() > 0
        }
        if not trainer.method.reference:
            reference = set()
        elif trainer.ref_model is not None:
            reference = {dtype_name(p.dtype) for p in trainer.ref_model.parameters()}
        elif is_peft_model(model):  # the reference is the base model with the adapter off
            reference = {dtype_name(p.dtype) for p in model.parameters() if not p.requires_grad}
        else:
            reference = trainable  # precomputed log-probs: TRL ran the policy before its first step (reuse.py's key
            # includes the weights' dtype, so reused log-probs were computed in the same one)
        join = lambda names: "+".join(sorted(names)) or None  # noqa: E731
        self.dtypes = {
            "trainable_dtype": join(trainable),
            "optimizer_state_dtype": join(state),
            "compute_dtype": self.compute,
            "reference_dtype": join(reference),
        }
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        log.info(
            "Dtypes: trainable %(trainable_dtype)s, optimizer state %(optimizer_state_dtype)s, compute "
            "%(compute_dtype)s, reference %(reference_dtype)s",
            self.dtypes,
        )
        if self.run is not None:
            tracking.safely(lambda: self.run.config.update({"dtypes": self.dtypes}, allow_val_change=True))
        return self.dtypes
