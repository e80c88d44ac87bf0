"""Training throughput of one dpo-lab run, by variant: tokens/s, MFU and peak memory.

    python benchmarks/throughput.py [--size 0.5b|270m|tiny] [--steps 30] [--warmup 5] [--batch 8] [--length 1024]
                                    [--variants defaults,live_reference,...]

A random Qwen2-shaped model (benchmarks/make_checkpoint.py; default 0.5b on CUDA, tiny on CPU) saved in bf16, random
preference pairs of about `--length` tokens per prompt + answer (a quarter prompt), `trainer=gpu` on CUDA. Each
variant runs in its own process through dpo-lab's own setup (train.setup: precision, memory plan, shared reference
log-probs), trains `--steps` steps with no eval or save, and is timed after `--warmup` steps (compilation, allocator
warm-up). Printed per variant: tokens/s (TRL's token count: chosen + rejected, padding excluded), MFU, peak memory
(CUDA: allocated; CPU: the process's peak RSS).

    MFU = tokens/s x F x N / peak FLOP/s, N = parameters, F = 8 with a live reference (policy forward 2 + backward 4,
    reference forward 2), 6 with precomputed reference log-probs; LoRA: 6 live, 4 precomputed (no weight gradients
    of the base). Attention's own FLOPs are left out, so MFU is a lower bound. Peak: dense bf16 of the card
    (H100/H200: 989 TFLOP/s); unknown on CPU.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# name -> dpo-lab overrides on top of the base (trainer=gpu on CUDA); `precompute_ref_log_probs` is on by default.
VARIANTS = {
    "defaults": [],
    "live_reference": ["trainer.precompute_ref_log_probs=false"],
    "checkpointing_on": ["trainer.activation_checkpointing=true"],
    "checkpointing_off": ["trainer.activation_checkpointing=false"],
    "lora": ["peft=lora", "lr=1e-4"],
    "liger_kernels": ["+trainer.extra.use_liger_kernel=true"],  # TRL applies liger's layer kernels (pip liger-kernel)
    "attn_eager": ["model.attn_implementation=eager"],
    "attn_flash2": ["model.attn_implementation=flash_attention_2"],  # needs the flash-attn package
    "batch_x2": ["DOUBLE_BATCH"],
    "torch_compile": ["+trainer.extra.torch_compile=true"],
    # the busy-device settings (issue 22): auto micro-batch (no global batch: the largest that fits, up to 64),
    # length-grouped batches, half the sequence length (the memory model's second length)
    "auto_batch": ["AUTO_BATCH"],
    "auto_batch_lora": ["AUTO_BATCH", "peft=lora", "lr=1e-4"],
    "group_by_length": ["trainer.group_by_length=true"],
    "half_length": ["HALF_LENGTH"],
}
MARKERS = ("DOUBLE_BATCH", "AUTO_BATCH", "HALF_LENGTH")


def peak_flops():
    import torch

    from dpo_lab.perf import peak_flops

    return peak_flops("cuda", "bfloat16") if torch.cuda.is_available() else None


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def make_data(out: Path, length: int, n: int, tokenizer_dir: str) -> None:
    """Random token text: a quarter of `length` prompt, the rest answer, chosen and rejected drawn apart."""
    import random

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    rng = random.Random(0)
    text = lambda k: tok.decode([rng.randrange(8, len(tok)) for _ in range(k)])  # noqa: E731
    rows = [
        {"prompt": text(length // 4), "chosen": text(length - length // 4), "rejected": text(length - length // 4)}
        for _ in range(n + 8)
    ]
    (out / "train.json").write_text(json.dumps(rows[:n]))
    (out / "eval.json").write_text(json.dumps(rows[n:]))  # held out: eval rows train holds are dropped


def one(variant: str, model: str, data: str, a) -> dict:
    """Train one variant in this process; the figures as a dict."""
    import torch
    from hydra import compose, initialize_config_dir
    from transformers import TrainerCallback

    from dpo_lab import reuse, train
    from dpo_lab.config import register_configs
    from dpo_lab.validate import validate

    cuda = torch.cuda.is_available()
    batch = a.batch * (2 if "DOUBLE_BATCH" in VARIANTS[variant] else 1)
    batch = "auto" if "AUTO_BATCH" in VARIANTS[variant] else batch
    length = a.length // 2 if "HALF_LENGTH" in VARIANTS[variant] else a.length
    overrides = [
        "model=hf",
        f"model.path={model}",
        "data=json",
        f"data.train_file={data}/train.json",
        f"data.eval_file={data}/eval.json",
        "samples=off",
        "wandb.mode=disabled",
        f"max_steps={a.steps}",
        f"trainer.max_length={length}",
        f"trainer.per_device_train_batch_size={batch}",
        "trainer.global_batch_size=null",
        "trainer.eval_on_start=false",
        f"trainer.eval_steps={10**6}",
        f"trainer.save_steps={10**6}",
        "trainer.logging_steps=1",
        *(["trainer=gpu"] if cuda else []),
        *(o for o in VARIANTS[variant] if o not in MARKERS),
    ]
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    validate(cfg)

    class Clock(TrainerCallback):
        marks = []  # (step, time, tokens) at each log

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:
                if cuda:
                    torch.cuda.synchronize()
                self.marks.append((state.global_step, time.perf_counter(), logs["num_tokens"]))

    with tempfile.TemporaryDirectory() as out:
        s = train.setup(cfg, out)
        s.trainer.add_callback(Clock())
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        s.trainer.train()
        model_ = s.trainer.accelerator.unwrap_model(s.trainer.model)
        n = sum(p.numel() for p in model_.parameters())
        if cfg.peft.enabled:
            n -= sum(p.numel() for p in model_.parameters() if p.requires_grad)
        (s0, t0, k0), (s1, t1, k1) = next(m for m in Clock.marks if m[0] >= a.warmup), Clock.marks[-1]
        tokens_per_s = (k1 - k0) / (t1 - t0)
        live = not cfg.trainer.precompute_ref_log_probs
        factor = (6 if live else 4) if cfg.peft.enabled else (8 if live else 6)
        peak = peak_flops()
        return {
            "variant": variant,
            "tokens_per_s": round(tokens_per_s),
            "steps_timed": s1 - s0,
            "mfu": round(tokens_per_s * factor * n / peak, 4) if peak else None,
            "flops_per_token": f"{factor}N",
            "params_m": round(n / 1e6, 1),
            "batch": s.memory.batch.train,
            "checkpointing": s.memory.checkpointing,
            "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30 if cuda else _peak_rss_gb(), 2),
            "estimate_gb": round(s.memory.total / 2**30, 2),
            "padding": s.trainer.meter.total(1.0).get("padding_fraction"),
            "reference_logps": reuse.status(s.trainer),
            "precision": s.precision.mode,
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default=None, help="0.5b (CUDA default), 270m or tiny (CPU default)")
    p.add_argument("--steps", type=int, default=None, help="steps per variant (default 30 on CUDA, 8 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="steps before timing starts (default 5 on CUDA, 2 on CPU)")
    p.add_argument("--batch", type=int, default=8, help="pairs per step")
    p.add_argument("--length", type=int, default=None, help="tokens per prompt + answer (1024 on CUDA, 256 on CPU)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant in this process
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    a = p.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    a.size = a.size or ("0.5b" if cuda else "tiny")
    a.steps = a.steps or (30 if cuda else 8)
    a.warmup = a.warmup or (5 if cuda else 2)
    a.length = a.length or (1024 if cuda else 256)
    if a.one:
        print("RESULT " + json.dumps(one(a.one, a.model, a.data, a)), flush=True)
        return

    from make_checkpoint import make

    from dpo_lab.toy.task import ensure_toy

    device = torch.cuda.get_device_name() if cuda else f"CPU ({len(os.sched_getaffinity(0))} cores)"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = make(tmp / "ckpt", a.size)
        make_data(tmp, a.length, a.batch * 2 * a.steps, ensure_toy()["model"])
        env = {**os.environ, "DPO_LAB_CACHE": str(tmp / "cache"), "WANDB_MODE": "disabled"}  # cold reuse cache
        print(
            f"{device}: random Qwen2-shaped {a.size} ({n / 1e6:.1f}M parameters, bf16 checkpoint), {a.batch} pairs "
            f"x ~{a.length} tokens per step, {a.steps} steps, timed after {a.warmup}\n"
        )
        print(
            "| variant | tokens/s | MFU | FLOPs/token | peak GiB | estimate GiB | batch | padding | checkpointing "
            "| reference log-probs |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for variant in a.variants.split(","):
            cmd = [
                sys.executable,
                __file__,
                "--one",
                variant,
                "--model",
                str(tmp / "ckpt" / "bf16"),
                "--data",
                str(tmp),
                "--steps",
                str(a.steps),
                "--warmup",
                str(a.warmup),
                "--batch",
                str(a.batch),
                "--length",
                str(a.length),
                "--size",
                a.size,
            ]
            proc = subprocess.run(cmd, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                last = [x for x in proc.stdout.strip().splitlines() if x.strip()][-1:] or ["no output"]
                print(f"| {variant} | not run: {last[0][:150]} |")
                continue
            r = json.loads(line[len("RESULT ") :])
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
            print(
                f"| {variant} | {r['tokens_per_s']} | {mfu} | {r['flops_per_token']} | {r['peak_gb']} | "
                f"{r['estimate_gb']} | {r['batch']} | {r['padding']} | {r['checkpointing']} | {r['reference_logps']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
