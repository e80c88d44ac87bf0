"""Training speed for a run's logs and result: tokens per second, padding, FLOPs per token and MFU.

MFU (model FLOPs utilisation) = tokens/s x FLOPs per token / the card's peak FLOP/s. FLOPs per token count the
dense matmuls of N parameters (the base's, without LoRA's adapters): policy forward 2N + backward 4N (LoRA: 2N, no
weight gradients of the base), + 2N for a live reference forward. Attention's own FLOPs and KTO's KL pass are left
out, so MFU is a lower bound. The peak is the card's dense bf16/fp16 tensor-core figure: MFU is logged on CUDA
under bf16/fp16 compute only (on CPU, or for an unknown card, tokens/s alone).
"""

import time
from typing import Any, Dict, Optional

# Dense bf16/fp16 tensor-core peak FLOP/s by a substring of torch.cuda.get_device_name() (vendors' data sheets; the
# SXM parts, first match wins).
PEAK_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
}


def peak_flops(device: str, compute_dtype: Optional[str]) -> Optional[float]:
    """The peak of this process's CUDA card for `compute_dtype` ("bfloat16"/"float16"), or None (CPU, fp32, unknown
    card)."""
    if not device.startswith("cuda") or compute_dtype not in ("bfloat16", "float16"):
        return None
    import torch

    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def flops_per_token(params: int, lora: bool, live_reference: bool) -> int:
    """FLOPs per trained token: (4 if LoRA else 6) x N, + 2N with a live reference (module docstring)."""
    return ((4 if lora else 6) + (2 if live_reference else 0)) * params


def base_params(model) -> int:
    """N: the model's parameters without LoRA's adapters (a PEFT model's trainable ones)."""
    from accelerate.utils import is_peft_model

    total = sum(p.numel() for p in model.parameters())
    return total - sum(p.numel() for p in model.parameters() if p.requires_grad) if is_peft_model(model) else total


class Meter:
    """Counts a run's tokens (real and padded) and gives the `perf/` metrics since the last training log."""

    def __init__(self):
        self.tokens = 0  # tokens trained on in this process, padding excluded
        self.padded = 0  # the same batches' positions, padding included
        self.flops_per_token: Optional[int] = None  # set with `peak` once the model is known (LabTrainer)
        self.peak: Optional[float] = None
        self._mark = None  # (time, tokens, padded) at the last training log, or at the first batch

    def count(self, tokens: int, padded: int) -> None:
        if self._mark is None:
            self._mark = (time.perf_counter(), 0, 0)
        self.tokens += tokens
        self.padded += padded

    def interval(self) -> Dict[str, float]:
        """perf/tokens_per_second, perf/padding_fraction and (where the peak is known) perf/mfu since the last call."""
        if self._mark is None:
            return {}
        now, (then, tokens, padded) = time.perf_counter(), self._mark
        self._mark = (now, self.tokens, self.padded)
        return metrics(self.tokens - tokens, self.padded - padded, now - then, self.flops_per_token, self.peak, "perf/")

    def total(self, seconds: float) -> Dict[str, Any]:
        """For result.json: the whole run's figures over its training time."""
        out = {"mfu": None, **metrics(self.tokens, self.padded, seconds, self.flops_per_token, self.peak)}
        out["flops_per_token"] = self.flops_per_token
        out["peak_flops"] = self.peak
        return out


def metrics(
    tokens: int, padded: int, seconds: float, per_token: Optional[int], peak: Optional[float], prefix: str = ""
) -> Dict[str, float]:
    out = {}
    if seconds > 0 and tokens:
        out[f"{prefix}tokens_per_second"] = round(tokens / seconds, 1)
        if per_token and peak:
            out[f"{prefix}mfu"] = round(tokens / seconds * per_token / peak, 4)
    if padded:
        out[f"{prefix}padding_fraction"] = round(1 - tokens / padded, 4)
    return out
