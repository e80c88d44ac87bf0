"""data=sentiment: the DPO paper's controlled sentiment generation (Rafailov et al. 2023, §6.1), offline, on a real
model.

Prompts invite an opinion (a topic under one of a few instructions, as a user turn of the model's chat template); the
run's starting model answers each prompt several times; VADER (a published lexicon scorer, no model download: the
`sentiment` judge of judges.py) scores every answer from -1 to 1; per prompt, the most positive answer is `chosen`
and the least positive `rejected` where their scores differ by at least `min_gap`. Train and eval prompts are
disjoint. Built once per (model, settings) into the cache. The same judge scores the checkpoint samples: the reward.

    python -m dpo_lab.sentiment MODEL_DIR      # build (or find) the data for that model; prints the file paths
"""

import json
import logging
import os
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Union

from dpo_lab import cache
from dpo_lab.config import SentimentConfig

log = logging.getLogger(__name__)

VERSION = "sentiment-v1"  # bump when the prompts or the recipe change: it is part of the cache key

INSTRUCTIONS = (
    "Write a short review of {topic}.",
    "What do you think of {topic}? Answer in two sentences.",
    "Describe your last experience with {topic}.",
    "Tell a friend what you honestly think about {topic}.",
    "Write a one-paragraph blog post about {topic}.",
    "Give your opinion of {topic} in a few words.",
    "How would you rate {topic}, and why?",
    "Write a customer comment about {topic}.",
)
TOPICS = (
    "a pizza place downtown",
    "the new phone you bought",
    "a rainy weekend",
    "your morning coffee",
    "a crowded train",
    "a science fiction movie",
    "a cheap hotel room",
    "a long flight",
    "a hiking trail",
    "an online course",
    "a used car",
    "a music festival",
    "a fast food burger",
    "a public library",
    "a noisy neighbour",
    "a city park",
    "a video game",
    "a birthday party",
    "a dentist visit",
    "a cooking class",
    "a new laptop",
    "a beach holiday",
    "a job interview",
    "a children's book",
    "a yoga class",
    "a traffic jam",
    "a museum",
    "a winter storm",
    "a pair of running shoes",
    "a sushi restaurant",
    "a camping trip",
    "a school play",
    "a bus ride",
    "a coffee machine",
    "a jazz concert",
    "a furniture store",
    "a gym membership",
    "a garden",
    "a horror film",
    "a bakery",
    "a mobile app",
    "a hotel breakfast",
    "a bicycle",
    "a history lesson",
    "a vegetable soup",
    "a theme park",
    "an airport",
    "a text editor",
    "a romantic comedy",
    "a zoo",
    "a pet shop",
    "a board game",
    "a hair salon",
    "a new sofa",
    "a delivery service",
    "a podcast",
    "a smartwatch",
    "a farmers market",
    "a language app",
    "a water park",
    "a painting class",
    "a taxi ride",
    "a bookshop",
    "a football match",
    "a chocolate cake",
    "a wireless headset",
    "a road trip",
    "a kitchen knife",
    "a ski resort",
    "a dance performance",
    "a cafe near work",
    "a thriller novel",
    "a cruise",
    "a charity run",
    "a pair of jeans",
    "a science museum",
    "a street market",
    "an electric scooter",
    "a wedding",
    "an apartment",
    "a car wash",
    "a hospital waiting room",
    "a comedy show",
    "a vacuum cleaner",
    "a poetry reading",
    "a train station",
    "a noodle bar",
    "a video call",
    "a garden centre",
    "a summer camp",
    "a hardware store",
    "a piano lesson",
    "a desk chair",
    "a boat tour",
    "an ice cream shop",
    "a tax office",
    "a swimming pool",
    "a cartoon series",
    "a rock concert",
    "a supermarket",
    "a science fair",
    "a tea shop",
    "a hiking backpack",
    "a sports car",
    "a dog park",
    "a sunset walk",
    "a pasta dish",
    "a spa day",
    "a power bank",
    "a shopping mall",
    "a math teacher",
    "a vintage shop",
    "a picnic",
    "a documentary",
    "a steakhouse",
    "a new haircut",
    "a snowy day",
    "a late-night diner",
    "a motel",
    "a computer mouse",
    "a ferry ride",
    "a craft fair",
    "a phone plan",
    "a lake cabin",
    "a fitness tracker",
    "a comic book",
    "a food truck",
    "a car rental",
    "a flower shop",
    "a puzzle game",
    "a tennis lesson",
    "a farm stay",
    "a pottery class",
    "a movie theatre",
    "a sandwich",
    "an e-reader",
    "a mountain village",
    "a parking garage",
    "a salad bar",
    "a rainy holiday",
    "a violin recital",
)


def prompts(seed: int) -> List[str]:
    """Every prompt (topic x instruction), shuffled by `seed`: the eval prompts are the first ones, train the next."""
    out = [i.format(topic=t) for t in TOPICS for i in INSTRUCTIONS]
    random.Random(seed).shuffle(out)
    return out


def pairs(prompt: str, answers: List[str], scores: List[float], pairs_per_prompt: int, min_gap: float) -> List[dict]:
    """The i-th most positive answer against the i-th least positive, for i < pairs_per_prompt, where the scores
    differ by at least min_gap (conversational rows: TRL applies the chat template)."""
    order = sorted(range(len(answers)), key=lambda i: (-scores[i], i))
    out = []
    for k in range(min(pairs_per_prompt, len(answers) // 2)):
        best, worst = order[k], order[-1 - k]
        if scores[best] - scores[worst] >= min_gap and answers[best] != answers[worst]:
            out.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": answers[best]}],
                    "rejected": [{"role": "assistant", "content": answers[worst]}],
                    "chosen_score": scores[best],
                    "rejected_score": scores[worst],
                }
            )
    return out


def write_sentiment(
    out_dir: Union[str, Path],
    model: str,
    device: str,
    n_train_prompts: int,
    n_eval_prompts: int,
    answers_per_prompt: int,
    pairs_per_prompt: int,
    max_new_tokens: int,
    temperature: float,
    min_gap: float,
    seed: int,
    batch_size: int,
) -> None:
    """Sample answers from `model`, score them and write train.jsonl, eval.jsonl and build.json into out_dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpo_lab.data import prompt_ids
    from dpo_lab.samples.judges import SentimentJudge
    from dpo_lab.samples.sampling import generate

    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).to(device).eval()
    texts = prompts(seed)[: n_eval_prompts + n_train_prompts]
    ids = [prompt_ids(tokenizer, [{"role": "user", "content": t}]) for t in texts]
    todo = [i for i in range(len(texts)) for _ in range(answers_per_prompt)]  # each prompt's answers side by side
    gen = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0, "max_new_tokens": max_new_tokens}
    answers = []
    log.info(
        "Sentiment data: %d prompts x %d answers of up to %d tokens from %s on %s.",
        len(texts),
        answers_per_prompt,
        max_new_tokens,
        model,
        device,
    )
    shown = 0
    for b in range(0, len(todo), batch_size):
        batch = todo[b : b + batch_size]
        out = generate(lm, tokenizer, [ids[i] for i in batch], gen, seed + b)
        answers += [tokenizer.decode(c, skip_special_tokens=True).strip() for c in out]
        done, elapsed = len(answers), time.time() - started
        if done == len(todo) or elapsed - shown >= 30:  # a line every half minute: minutes on a CPU
            shown = elapsed
            log.info(
                "Sentiment data: %d/%d answers (%.0f%%) in %.0fs, ~%.0fs left.",
                done,
                len(todo),
                100 * done / len(todo),
                elapsed,
                elapsed / done * (len(todo) - done),
            )
    scores = SentimentJudge().scores((), answers)
    rows = []
    for p, text in enumerate(texts):
        mine = range(p * answers_per_prompt, (p + 1) * answers_per_prompt)
        rows.append(pairs(text, [answers[i] for i in mine], [scores[i] for i in mine], pairs_per_prompt, min_gap))
    split = {
        "eval": [r for rs in rows[:n_eval_prompts] for r in rs],
        "train": [r for rs in rows[n_eval_prompts:] for r in rs],
    }
    for name, kept in split.items():
        if not kept:
            raise RuntimeError(
                f"no {name} pair's scores differ by min_gap={min_gap}: raise the prompt count or "
                "answers_per_prompt, or lower min_gap"
            )
        with open(Path(out_dir) / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    stats = {
        "pairs": {k: len(v) for k, v in split.items()},
        "answers": len(answers),
        "seconds": round(time.time() - started, 1),
        "mean_answer_score": mean(scores),
        "mean_chosen_score": mean([r["chosen_score"] for r in split["train"]]),
        "mean_rejected_score": mean([r["rejected_score"] for r in split["train"]]),
    }
    (Path(out_dir) / "build.json").write_text(json.dumps(stats, indent=1))
    log.info(
        "Sentiment data: %d train / %d eval pairs from %d prompts in %.0fs (mean score of an answer %.3f; chosen "
        "%.3f vs rejected %.3f).",
        len(split["train"]),
        len(split["eval"]),
        len(texts),
        stats["seconds"],
        stats["mean_answer_score"],
        stats["mean_chosen_score"],
        stats["mean_rejected_score"],
    )


def _key(model: str, recipe: dict) -> dict:
    """The cache key: the recipe and the model's identity (a cached checkpoint's dir name holds its own hash; any
    other dir: its path and its weights' size and modification time)."""
    model = os.path.abspath(model) if os.path.isdir(model) else model
    weights = sorted(Path(model).glob("*.safetensors")) if os.path.isdir(model) else []
    stamp = [(w.name, w.stat().st_size, int(w.stat().st_mtime)) for w in weights]
    return {"version": VERSION, "model": model, "weights": stamp, **recipe}


def files(out_dir: Path) -> Dict[str, str]:
    return {"train_file": str(out_dir / "train.jsonl"), "eval_file": str(out_dir / "eval.jsonl")}


def cached_sentiment(model: str, cache_dir=None, **recipe) -> Path:
    """The dir ensure_sentiment builds, built or not."""
    return cache.path("sentiment", _key(model, asdict(SentimentConfig(**recipe))), cache_dir)


def ensure_sentiment(model: str, device: str = "cpu", cache_dir=None, **recipe) -> Dict[str, str]:
    """train_file / eval_file of the data `model` answers, built at most once per cache (in a child process, so the
    job's memory stays its own). `recipe`: SentimentConfig fields; the device is not part of the key."""
    recipe = asdict(SentimentConfig(**recipe))
    write = lambda tmp: cache.write_in_child(
        "dpo_lab.sentiment:write_sentiment", tmp, dict(model=model, device=device, **recipe)
    )  # noqa: E731
    return files(cache.ensure("sentiment", _key(model, recipe), write, cache_dir))


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO)
    print(ensure_sentiment(sys.argv[1]))
