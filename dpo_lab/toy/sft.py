"""Supervised warm-up of the tiny toy model, so DPO starts from a model that writes stories instead of noise.

A short trl.SFTTrainer run on the toy prompts with their chosen answers and, for a fraction of them, their rejected
answers: the warm model writes fluent stories that sometimes miss a required word or loop, which is exactly what the
preference data teaches DPO to avoid. Cached next to the toy artifact, keyed by its parameters, so a sweep pays once.

    python -m dpo_lab.toy.sft            # build (or find) the warm-up for the default toy config; prints its path
"""

import json
import logging
import random
from dataclasses import asdict
from pathlib import Path

from dpo_lab import cache
from dpo_lab.config import SftConfig

log = logging.getLogger(__name__)

VERSION = "sft-v1"  # bump when the recipe changes: it is part of the cache key


def warmup_rows(rows: list[dict], rejected_fraction: float, seed: int) -> list[dict]:
    """prompt/completion rows: each toy prompt with its chosen answer, or with probability rejected_fraction its
    rejected one (so DPO has mistakes left to fix)."""
    rng = random.Random(seed)
    out = []
    for r in rows:
        key = "rejected" if rng.random() < rejected_fraction else "chosen"
        out.append({"prompt": r["prompt"], "completion": r[key]})
    return out


def write_sft(
    out_dir,
    toy_paths: dict,
    steps: int,
    lr: float,
    batch_size: int,
    rejected_fraction: float,
    seed: int,
    prompt_format: str = "none",
    device: str = "cpu",
) -> None:
    """Warm up toy_paths["model"] on toy_paths["train_file"]; the result goes to out_dir/model."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import ProgressCallback
    from trl import SFTConfig, SFTTrainer

    from dpo_lab.callbacks import Progress
    from dpo_lab.data import format_prompts

    out_dir = Path(out_dir)
    rows = json.loads(Path(toy_paths["train_file"]).read_text(encoding="utf-8"))
    rows = format_prompts(rows, prompt_format)  # the same prompts (and chat template) the DPO run will see
    tokenizer = AutoTokenizer.from_pretrained(toy_paths["model"])
    model = AutoModelForCausalLM.from_pretrained(toy_paths["model"])
    args = SFTConfig(**cache.training_args(out_dir, steps, lr, batch_size, seed, device))
    trainer = SFTTrainer(
        model=model,
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list(warmup_rows(rows, rejected_fraction, seed)),
    )
    if trainer.pop_callback(ProgressCallback):  # the bar with the loss on it, not a metrics dict per log
        trainer.add_callback(Progress("warm-up"))
    trainer.train()
    model.save_pretrained(out_dir / "model")
    tokenizer.save_pretrained(out_dir / "model")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    log.info("Warm-up final loss: %s", losses[-1] if losses else None)


def ensure_sft(toy_paths: dict, prompt_format: str = "none", device: str = "cpu", **recipe) -> str:
    """The warm-up of the toy model at toy_paths, built at most once into `sft-<hash>` beside the toy artifact.
    `recipe`: SftConfig fields (steps, lr, batch_size, rejected_fraction, seed); unset ones take its defaults.
    The device is not part of the key: the warm-up is fp32 and close enough on any device."""
    recipe = asdict(SftConfig(**recipe))  # one place for the defaults; an unknown field fails here
    kwargs = dict(toy_paths=toy_paths, prompt_format=prompt_format, device=device, **recipe)
    params, cache_dir = _key(toy_paths, prompt_format, recipe)
    out_dir = cache.ensure(
        "sft", params, lambda tmp: cache.write_in_child("dpo_lab.toy.sft:write_sft", tmp, kwargs), cache_dir
    )
    return str(out_dir / "model")


def cached_sft(toy_paths: dict, prompt_format: str = "none", **recipe) -> str:
    """The path ensure_sft returns, built or not."""
    return str(cache.path("sft", *_key(toy_paths, prompt_format, asdict(SftConfig(**recipe)))) / "model")


def _key(toy_paths: dict, prompt_format: str, recipe: dict):
    """(params, cache dir): the warm-up's cache key, beside the toy artifact."""
    toy_dir = Path(toy_paths["model"]).parent
    return {"version": VERSION, "toy": toy_dir.name, "prompt_format": prompt_format, **recipe}, toy_dir.parent


if __name__ == "__main__":
    from dpo_lab.toy.task import ensure_toy

    print(ensure_sft(ensure_toy()))
