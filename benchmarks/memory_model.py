"""The memory model behind `activation_checkpointing=auto`, `per_device_train_batch_size=auto` and `jobs_per_gpu=auto`
(dpo_lab/memory.py), measured.

    python benchmarks/memory_model.py [--gpu-peaks-only]

1. Activations: the bytes autograd saves per token and per layer of a Qwen2/Llama layer (a saved-tensors hook
   sums the storages a training forward keeps), on the CPU, fp32 and bf16 autocast over fp32 weights (bf16-mixed),
   full fine-tuning and LoRA (all-linear, r 16, dropout 0.05), checkpointing off and on. Two sequence lengths and two
   depths separate the per-token, per-layer bytes from the per-layer constants (autocast's weight copies) and the
   embedding and head; two MLP widths split them into a·hidden + c·intermediate. Printed beside memory.ACTIVATIONS.
2. The estimate beside the peaks measured on GPUs (torch.cuda.max_memory_allocated, GiB; benchmarks/README.md and
   docs/precision-and-memory.md give their commands): memory.estimate for each run's model, batch, padded length
   and precision, with the ratio.
"""

import torch

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
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
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
        shape = memory.ModelShape(params=n, lora_params=lora_n, hidden=h, layers=layers, intermediate=i)
        optim = PURE_OPTIM if mode == "bf16-pure" else None
        parts = memory.estimate(shape, PLANS[mode], lora, live, 2 * pairs, tokens, optim)
        drop = "activations" if ckpt else "activations_checkpointed"
        total = sum(v for k, v in parts.items() if k != drop) / GiB
        print(f"| {what} | {pairs} x 2 x {tokens} | {peak:.2f} | {total:.2f} | {total / peak:.2f} |", flush=True)


if __name__ == "__main__":
    import sys

    if "--gpu-peaks-only" not in sys.argv:  # part 2 alone: seconds, where part 1 takes minutes on 2 cores
        activations()
    against_gpu_peaks()
