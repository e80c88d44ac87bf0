"""Write a checkpoint as a user's would arrive: saved in bf16, beside its exact fp32 upcast, with a tokenizer, so
`model=hf` runs on both offline.

    python benchmarks/make_checkpoint.py --out DIR [--size tiny|270m|0.5b] [--vocab N]   a random Qwen2-shaped model
    python benchmarks/make_checkpoint.py --out DIR --from MODEL_DIR           an existing model, cast to bf16
    -> DIR/bf16, DIR/fp32

Random models use the toy tokenizer; its small vocabulary puts their parameters in the layers, not the embeddings.
`--vocab N` widens the embedding and LM head to N outputs (a large vocabulary's logits, with the toy tokenizer).
"""

import argparse
from pathlib import Path
from typing import Optional

SIZES = {  # Qwen2 layer shapes: hidden, MLP width, layers, attention heads, key/value heads
    "tiny": dict(
        hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    ),
    "270m": dict(
        hidden_size=1024, intermediate_size=2816, num_hidden_layers=23, num_attention_heads=16, num_key_value_heads=8
    ),
    "0.5b": dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=32, num_attention_heads=16, num_key_value_heads=8
    ),
}


def make(out: Path, size: str = "270m", source: Optional[str] = None, vocab: Optional[int] = None) -> int:
    """Write out/bf16 and out/fp32 (the bf16 weights upcast); returns the parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from dpo_lab.toy.task import ensure_toy

    if source:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    else:
        tokenizer = AutoTokenizer.from_pretrained(ensure_toy()["model"])  # the default run's
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **SIZES[size],
        )
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config)
    model = model.to(torch.bfloat16)
    tokenizer.save_pretrained(out / "bf16")
    # Beside a Qwen2 config the toy tokenizer loads as Qwen2Tokenizer, which adds <|endoftext|>: size the embedding
    # for the tokenizer as it will load (dpo-lab refuses a tokenizer larger than the embedding).
    model.config.save_pretrained(out / "bf16")
    loaded = len(AutoTokenizer.from_pretrained(out / "bf16"))
    if max(loaded, vocab or 0) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(max(loaded, vocab or 0))
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        model.to(dtype).save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--size", default="270m", choices=sorted(SIZES))
    parser.add_argument("--from", dest="source", help="an existing model directory instead of a random model")
    parser.add_argument("--vocab", type=int, help="outputs of the embedding and LM head (at least the tokenizer's)")
    args = parser.parse_args()
    n = make(args.out, args.size, args.source, args.vocab)
    print(f"{args.out}/bf16 and {args.out}/fp32: {n / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
