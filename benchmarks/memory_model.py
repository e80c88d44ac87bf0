"""The memory model behind `activation_checkpointing=auto`, `per_device_train_batch_size=auto` and `jobs_per_gpu=auto`
(dpo_lab/memory.py), measured.

    python benchmarks/memory_model.py [--gpu-peaks-only | --logits]

1. Activations: the bytes autograd saves per token and per layer of a Qwen2/Llama layer (a saved-tensors hook
   sums the storages a training forward keeps), on the CPU, fp32 and bf16 autocast over fp32 weights (bf16-mixed),
   full fine-tuning and LoRA (all-linear, r 16, dropout 0.05), checkpointing off and on. Two sequence lengths and two
   depths separate the per-token, per-layer bytes from the per-layer constants (autocast's weight copies) and the
   embedding and head; two MLP widths split them into a·hidden + c·intermediate. Printed beside memory.ACTIVATIONS.
2. The estimate beside the peaks measured on GPUs (torch.cuda.max_memory_allocated, GiB; benchmarks/README.md and
   docs/precision-and-memory.md give their commands): memory.estimate for each run's model, batch, padded length
   and precision, with the ratio.
3. `--logits`: what the LM head's output holds, by Method.logits (memory.FULL_LOGITS, FUSED_CPU). Each method trains
   two steps through dpo-lab's own setup on a random tiny Qwen2 whose LM head has 2,048 or 16,384 outputs; the peak
   is the torch profiler's record of the CPU allocator (live bytes, plus the weights held before), or on a GPU
   torch.cuda.max_memory_allocated. The growth of (peak - the estimate without its logits part) per token and added
   vocabulary entry is what each entry holds; the estimate / peak ratios check the whole estimate.
"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

GiB = 2**30


def saved_bytes(hidden, inter, layers, seq, batch, mixed, lora, checkpointing=False) -> int:
    """Bytes of the distinct storages autograd saves in one training forward of a random Qwen2 model."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=512,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 128,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = model.to(torch.bfloat16) if mixed else model  # dpo-lab loads LoRA's base in the frozen dtype
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    ids = torch.randint(0, 512, (batch, seq))
    with (
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        model(input_ids=ids, use_cache=False)
    return sum(seen.values())


def per_token_layer(hidden, inter, mixed, lora, checkpointing=False) -> float:
    b, s = 2, 256
    m = lambda layers, seq: saved_bytes(hidden, inter, layers, seq, b, mixed, lora, checkpointing)  # noqa: E731
    return ((m(2, 2 * s) - m(2, s)) - (m(1, 2 * s) - m(1, s))) / (b * s)


def activations() -> None:
    from dpo_lab.memory import ACTIVATIONS, CHECKPOINTED, LORA_FP32

    print("Saved activations per token and layer, CPU (bytes = a x hidden + c x intermediate):\n")
    print("| compute | LoRA | checkpointing | h=1024 i=4096 | h=1024 i=2816 | a | c | memory.py |")
    print("|---|---|---|---|---|---|---|---|")
    for mixed in (False, True):
        for lora in (False, True):
            for ckpt in (False, True):
                wide, narrow = (per_token_layer(1024, i, mixed, lora, ckpt) for i in (4096, 2816))
                c = (wide - narrow) / (4096 - 2816)
                a = (wide - c * 4096) / 1024
                dtype = "bfloat16" if mixed else "float32"
                ours = ACTIVATIONS[dtype]
                if lora and not mixed:
                    ours = (ours[0] + LORA_FP32[0], ours[1] + LORA_FP32[1])
                said = f"{CHECKPOINTED}h kept" if ckpt else f"{ours[0]}h + {ours[1]}i"
                print(
                    f"| {'bf16 autocast' if mixed else 'fp32'} | {lora} | {ckpt} | {wide:.0f} | {narrow:.0f} | "
                    f"{a:.1f} | {c:.1f} | {said} |",
                    flush=True,
                )


# GPU peaks measured earlier (NVIDIA H200, torch 2.11, transformers 5.17, trl 1.16, 2026-11-27): (what, make_checkpoint
# size, pairs per micro-batch, tokens per sequence as padded, LoRA, live reference, checkpointing, precision, GiB).
# 270m runs: `SWEEP=0 bash benchmarks/gpu_check.sh` on the toy data (max_length 512; its longest pair is 125 tokens).
# 0.5b runs: `python benchmarks/throughput.py --variants defaults,live_reference,lora` (random ~1024-token pairs).
MEASURED = [
    ("270m full", "270m", 16, 125, False, False, False, "bf16-mixed", 9.7),
    ("270m LoRA", "270m", 16, 125, True, False, False, "bf16-mixed", 5.4),
    ("270m checkpointing", "270m", 16, 125, False, False, True, "bf16-mixed", 5.3),
    ("270m bf16-pure", "270m", 16, 125, False, False, False, "bf16-pure", 6.0),
    ("0.5b full", "0.5b", 8, 1024, False, False, False, "bf16-mixed", 39.17),
    ("0.5b live reference", "0.5b", 8, 1024, False, True, False, "bf16-mixed", 40.28),
    ("0.5b LoRA", "0.5b", 8, 1024, True, False, False, "bf16-mixed", 30.83),
]


def against_gpu_peaks() -> None:
    from make_checkpoint import SIZES

    from dpo_lab import memory
    from dpo_lab.precision import PLANS, PURE_OPTIM

    print("\nThe estimate beside measured GPU peaks (GiB):\n")
    print("| run | pairs x tokens | measured peak | estimate | estimate / peak |")
    print("|---|---|---|---|---|")
    for what, size, pairs, tokens, lora, live, ckpt, mode, peak in MEASURED:
        s = SIZES[size]
        h, i, layers = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
        kv = h * s["num_key_value_heads"] // s["num_attention_heads"]
        n = layers * (2 * h * h + 2 * h * kv + 3 * h * i) + 2048 * h  # the toy tokenizer's 2048-token vocabulary
        lora_n = layers * 16 * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 3) if lora else 0
        shape = memory.ModelShape(params=n, lora_params=lora_n, hidden=h, layers=layers, intermediate=i, vocab=2048)
        optim = PURE_OPTIM if mode == "bf16-pure" else None
        parts = memory.estimate(shape, PLANS[mode], lora, live, 2 * pairs, tokens, optim)
        drop = "activations" if ckpt else "activations_checkpointed"
        total = sum(v for k, v in parts.items() if k != drop) / GiB
        print(f"| {what} | {pairs} x 2 x {tokens} | {peak:.2f} | {total:.2f} | {total / peak:.2f} |", flush=True)


def peak_bytes(fn, device: str) -> int:
    """The most bytes the device's allocator held at once while `fn()` ran: on a GPU in all; on the CPU what was
    allocated while it ran (frees of older memory, e.g. an earlier run's garbage, do not count against it)."""
    import gc

    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        fn()
        return torch.cuda.max_memory_allocated()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, nodes = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while nodes:
        node = nodes.pop()
        nodes.extend(node.children)
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.typed[1].ptr, node.typed[1].alloc_size))
    held, live, peak = {}, 0, 0
    for _, ptr, size in sorted(events):
        if size > 0:
            held[ptr] = size
            live += size
        elif ptr in held:
            live -= held.pop(ptr)
        peak = max(peak, live)
    return peak


def step_peak(method: str, vocab: int, pairs: int, precision: str, tmp: Path, length: int = 128, device: str = "cpu"):
    """(peak bytes of two training steps of `method`, the batch's padded length, the job's memory.MemoryPlan) for a
    random tiny Qwen2 with `vocab` outputs: `pairs` random pairs of `length` tokens."""
    from hydra import compose, initialize_config_dir
    from make_checkpoint import make
    from throughput import make_data

    from dpo_lab import train
    from dpo_lab.config import register_configs

    checkpoint, data = tmp / f"vocab-{vocab}", tmp / f"data-{pairs}x{length}"
    if not checkpoint.exists():
        make(checkpoint, "tiny", vocab=vocab)
    if not data.exists():
        data.mkdir(parents=True)
        make_data(data, length, 2 * pairs, str(checkpoint / "fp32"))
    overrides = [
        f"method={method}",
        "model=hf",
        f"model.path={checkpoint / 'fp32'}",
        "data=json",
        f"data.train_file={data}/train.json",
        f"data.eval_file={data}/eval.json",
        "samples=off",
        "wandb.mode=disabled",
        "max_steps=2",
        f"trainer.device={device}",
        f"trainer.precision={precision}",
        f"trainer.max_length={length}",
        f"trainer.per_device_train_batch_size={pairs}",
        f"trainer.per_device_eval_batch_size={pairs}",  # no eval or reference pass larger than a training step
        "trainer.global_batch_size=null",
        "trainer.activation_checkpointing=false",
        "trainer.eval_on_start=false",
        f"trainer.eval_steps={10**6}",
        f"trainer.save_steps={10**6}",
    ]
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    s = train.setup(cfg, str(tmp / f"run-{method}-{vocab}-{precision}"))
    s.trainer.args.eval_strategy = "no"  # the training steps alone
    batch = next(iter(s.trainer.get_train_dataloader()))  # (and DPO's reference log-probs, before the measurement)
    padded = max(v.shape[-1] for k, v in batch.items() if k.endswith("input_ids"))
    models = [s.trainer.model, getattr(s.trainer, "ref_model", None)]
    held = sum(t.nbytes for m in models if m is not None for t in [*m.parameters(), *m.buffers()])
    peak = peak_bytes(s.trainer.train, device)
    return peak + (held if device == "cpu" else 0), padded, s.memory


def logits(vocabs=(2048, 16384), pairs: int = 4, length: int = 128) -> None:
    import tempfile

    from dpo_lab import memory, methods

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"The LM head's output at a training step's peak, {device} ({pairs} pairs x {length} tokens):\n")
    print(
        "| method | precision | Method.logits | bytes per token and entry | memory.py | "
        + " | ".join(f"estimate / peak, vocab {v}" for v in vocabs)
        + " |"
    )
    print("|---|---|---|---|---|" + "---|" * len(vocabs))
    with tempfile.TemporaryDirectory() as tmp:
        for name in methods.NAMES:
            how = methods.get(name).logits
            ours = memory.FULL_LOGITS.get(how, memory.FUSED_CPU if device == "cpu" else 0)
            for precision in ("fp32", "bf16-mixed"):
                over, ratios = [], []  # (peak - the estimate without logits) per token; estimate / peak
                for vocab in vocabs:
                    peak, padded, plan = step_peak(name, vocab, pairs, precision, Path(tmp), length, device)
                    tokens = methods.get(name).sequences * pairs * padded
                    over.append((peak - (plan.total - plan.parts["logits"])) / tokens)
                    ratios.append(f"{plan.total / peak:.2f}")
                per_entry = (over[1] - over[0]) / (vocabs[1] - vocabs[0])
                print(f"| {name} | {precision} | {how} | {per_entry:.1f} | {ours} | {' | '.join(ratios)} |", flush=True)


if __name__ == "__main__":
    if "--logits" in sys.argv:
        logits()
    else:
        if "--gpu-peaks-only" not in sys.argv:  # part 2 alone: seconds, where part 1 takes minutes on 2 cores
            activations()
        against_gpu_peaks()
