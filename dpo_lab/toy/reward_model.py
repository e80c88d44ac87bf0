"""The toy reward model: a Bradley-Terry scorer trained on the toy preferences, so the `reward_model` judge of
checkpoint samples runs offline (tests, the default sweep) with no hub download.

A short trl.RewardTrainer run on the toy train pairs (plus pairs whose rejected side is the chosen story garbled
with fragments of another: trained on the toy pairs alone, it scored an over-trained policy's broken mixtures as
high as the reference's stories), starting from the model DPO starts from (the warm-up where
there is one: it already reads the prompts and writes the stories), cached beside the toy artifact by its
parameters like the warm-up. `python -m dpo_lab.toy.reward_model` builds the default one and prints its held-out
accuracy (chosen scored above rejected on the toy eval pairs).
"""

import json
import logging
import random
from dataclasses import asdict
from pathlib import Path

from dpo_lab import cache
from dpo_lab.config import RewardModelConfig

log = logging.getLogger(__name__)

VERSION = "rm-v2"  # bump when the recipe changes: it is part of the cache key


def garble(text: str, other: str, rng: random.Random) -> str:
    """`text` spliced with fragments of `other` (another story, maybe in the other language): the broken mixtures an
    over-trained policy writes, which the toy pairs alone never show a reward model."""
    from dpo_lab.samples.metrics import units

    a, b = units(text), units(other)
    out, i = [], 0
    while i < len(a):
        n = rng.randint(1, 4)
        out += a[i : i + n]
        i += n + rng.randint(0, 2)  # drop a little
        if b and rng.random() < 0.5:
            j = rng.randrange(len(b))
            out += b[j : j + rng.randint(1, 3)]
    return "".join(u if len(u) == 1 and not u.isascii() else " " + u for u in out).strip()


def training_pairs(rows: list, garbled_fraction: float, seed: int) -> list:
    """The toy pairs, plus for `garbled_fraction` of them a pair (chosen, chosen garbled with another row's answer)."""
    rng = random.Random(seed)
    extra = [
        {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": garble(r["chosen"], rng.choice(rows)["chosen"], rng)}
        for r in rows
        if isinstance(r["chosen"], str) and rng.random() < garbled_fraction
    ]
    return rows + extra


def write_reward_model(
    out_dir,
    base_model: str,
    train_file: str,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    garbled_fraction: float = 0.5,
    prompt_format: str = "none",
    device: str = "cpu",
) -> None:
    """Train a sequence-classification head (and the body) of base_model on train_file's pairs into out_dir/model."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from transformers.trainer_callback import ProgressCallback
    from trl import RewardConfig, RewardTrainer

    from dpo_lab.callbacks import Progress
    from dpo_lab.data import FIELDS, format_prompts

    out_dir = Path(out_dir)
    rows = training_pairs(json.loads(Path(train_file).read_text(encoding="utf-8")), garbled_fraction, seed)
    rows = format_prompts(rows, prompt_format)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    set_seed(seed)  # the score head is new: seeded, the same reward model comes out of every build
    model = AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    # center_rewards_coefficient keeps scores near 0, so a judge's scores read alike across runs
    args = RewardConfig(
        **cache.training_args(out_dir, steps, lr, batch_size, seed, device), center_rewards_coefficient=0.01
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list([{k: r[k] for k in FIELDS} for r in rows]),
    )
    if trainer.pop_callback(ProgressCallback):
        trainer.add_callback(Progress("reward model"))
    trainer.train()
    model.save_pretrained(out_dir / "model")
    tokenizer.save_pretrained(out_dir / "model")


def ensure_reward_model(
    toy_paths: dict, base_model: str, prompt_format: str = "none", device: str = "cpu", **recipe
) -> str:
    """The toy reward model trained from base_model, built at most once into `rm-<hash>` beside the toy artifact.
    `recipe`: RewardModelConfig fields; unset ones take its defaults."""
    recipe = asdict(RewardModelConfig(**recipe))
    params, cache_dir = _key(toy_paths, base_model, prompt_format, recipe)
    kwargs = dict(
        base_model=base_model, train_file=toy_paths["train_file"], prompt_format=prompt_format, device=device, **recipe
    )
    out_dir = cache.ensure(
        "rm",
        params,
        lambda tmp: cache.write_in_child("dpo_lab.toy.reward_model:write_reward_model", tmp, kwargs),
        cache_dir=cache_dir,
    )
    return str(out_dir / "model")


def cached_reward_model(toy_paths: dict, base_model: str, prompt_format: str = "none", **recipe) -> str:
    """The path ensure_reward_model returns, built or not."""
    params, cache_dir = _key(toy_paths, base_model, prompt_format, asdict(RewardModelConfig(**recipe)))
    return str(cache.path("rm", params, cache_dir) / "model")


def _key(toy_paths: dict, base_model: str, prompt_format: str, recipe: dict):
    """(params, cache dir): the reward model's cache key, beside the toy artifact."""
    toy_dir, base = Path(toy_paths["model"]).parent, Path(base_model)
    params = {
        "version": VERSION,
        "toy": toy_dir.name,
        "base": f"{base.parent.name}/{base.name}",
        "prompt_format": prompt_format,
        **recipe,
    }
    return params, toy_dir.parent


def toy_reward_model(cfg, toy_paths: dict, device: str) -> str:
    """The toy reward model for a run's config: trained from the tiny model's warm-up (or, with sft.steps=0, from
    the tiny model itself) on the run's toy data and prompt format."""
    from omegaconf import OmegaConf

    base = toy_paths["model"]
    if cfg.sft.steps > 0:
        from dpo_lab.toy.sft import ensure_sft

        base = ensure_sft(
            toy_paths, prompt_format=cfg.data.prompt_format, device=device, **OmegaConf.to_container(cfg.sft)
        )
    device = "cuda" if device.startswith("cuda") else "cpu"
    return ensure_reward_model(
        toy_paths, base, prompt_format=cfg.data.prompt_format, device=device, **OmegaConf.to_container(cfg.reward_model)
    )


def heldout_accuracy(model_path: str, eval_file: str, prompt_format: str = "none") -> float:
    """The share of eval pairs whose chosen answer the reward model scores above the rejected one."""
    from dpo_lab.data import as_text, format_prompts
    from dpo_lab.samples.judges import RewardModelJudge

    rows = format_prompts(json.loads(Path(eval_file).read_text(encoding="utf-8")), prompt_format)
    judge = RewardModelJudge(model_path, "cpu")
    prompts = [r["prompt"] for r in rows]
    chosen = judge.scores(prompts, [as_text(r["chosen"]) for r in rows], rows)
    rejected = judge.scores(prompts, [as_text(r["rejected"]) for r in rows], rows)
    return sum(c > r for c, r in zip(chosen, rejected)) / len(rows)


if __name__ == "__main__":
    from dpo_lab.toy.sft import ensure_sft
    from dpo_lab.toy.task import ensure_toy

    logging.basicConfig(level=logging.INFO)
    toy = ensure_toy()
    path = ensure_reward_model(toy, ensure_sft(toy))
    print(f"{path}\nheld-out accuracy: {heldout_accuracy(path, toy['eval_file']):.3f} on the toy eval pairs")
