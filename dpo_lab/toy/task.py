"""Offline toy task: a checkable English + Chinese preference dataset and a tiny Llama with a locally trained tokenizer.

The task: the prompt names 2-3 required words and a one-line summary; `chosen` is a template story that uses every
required word, `rejected` is the same story with some required words swapped out, or a text that degenerates into
repetition. `metrics.task_score` measures the property DPO should improve, so a run can be checked end to end
without the hub.

    python -m dpo_lab.toy.task --out /tmp/toy        # what the default run uses (ToyConfig); --help lists the knobs
"""

import argparse
import json
import random
from dataclasses import asdict, fields
from pathlib import Path
from typing import Optional

from dpo_lab import cache
from dpo_lab.config import ToyConfig
from dpo_lab.samples.metrics import CJK

VERSION = "toy-v1"  # bump when the data, tokenizer or model recipe changes: it is part of the cache key
MAX_POSITIONS = 1024

BOS, EOS, PAD, USER, ASSISTANT = "<|bos|>", "<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, USER, ASSISTANT]
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>\n{{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}<|assistant|>\n{{ m['content'] }}<|eos|>"
    "{% else %}{{ raise_exception('the toy chat template knows only user and assistant roles') }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Word lists are small so a tiny model sees every word many times. No word is a substring of another word or of the
# template text (tests check this), so substring scoring is exact: a swapped-out word really is absent.
# English: no vowel-initial nouns, so "a {x}" is always right.
EN_CHARACTERS = ["cat", "dog", "fox", "bird", "girl", "boy", "bear", "rabbit", "duck", "frog", "queen", "baker"]
EN_OBJECTS = ["lamp", "key", "ball", "book", "kite", "box", "cake", "bell", "coin", "drum", "shell", "cup"]
EN_PLACES = {  # word -> phrase used in the story
    "river": "by the river",
    "forest": "in the forest",
    "garden": "in the garden",
    "beach": "on the beach",
    "hill": "on the hill",
    "market": "at the market",
    "bridge": "on the bridge",
    "castle": "in the castle",
    "farm": "on the farm",
    "cave": "in the cave",
    "lake": "by the lake",
    "village": "in the village",
}
ZH_CHARACTERS = ["小猫", "小狗", "狐狸", "小鸟", "女孩", "男孩", "小熊", "兔子", "鸭子", "青蛙", "国王", "老奶奶"]
ZH_OBJECTS = {  # word -> measure word, for "一{m}{o}"
    "灯笼": "盏",
    "钥匙": "把",
    "皮球": "个",
    "故事书": "本",
    "帽子": "顶",
    "盒子": "个",
    "蛋糕": "块",
    "地图": "张",
    "铜钱": "枚",
    "风筝": "只",
    "小鼓": "面",
    "贝壳": "个",
}
ZH_PLACES = {  # word -> locative suffix, for "在{p}{loc}"
    "河边": "",
    "森林": "里",
    "花园": "里",
    "海滩": "上",
    "山顶": "上",
    "市场": "里",
    "小桥": "上",
    "城堡": "里",
    "农场": "里",
    "山洞": "里",
    "湖边": "",
    "村子": "里",
}

# Slots: {c} character, {o} object, {p} place word, {at} English place phrase, {m} measure word, {loc} locative.
# Each plot: a summary and story variants of 4 sentences (EN ~35-50 words, ZH ~55-75 characters).
EN_PLOTS = [
    (
        "A {c} finds a {o} {at}.",
        [
            (
                "One sunny morning a little {c} went for a walk {at}.",
                "Under an old tree the {c} saw a small {o} lying in the grass.",
                "The {c} picked up the {o} and smiled.",
                "That night the {c} kept the {o} close and slept well.",
            ),
            (
                "There was a curious {c} who loved the {p}.",
                "One day the {c} was digging {at} and found an old {o}.",
                "Nobody knew where the {o} came from.",
                "The {c} was proud of the {o} and showed it to everyone.",
            ),
        ],
    ),
    (
        "A {c} loses a {o} {at}.",
        [
            (
                "A happy {c} took a {o} to the {p} to play.",
                "The {c} played all day {at} and forgot about the {o}.",
                "When the sun went down, the {o} was gone.",
                "The {c} felt sad and walked home slowly.",
            ),
            (
                "Every day the {c} carried a {o} everywhere.",
                "One windy afternoon {at}, the {o} slipped away.",
                "The {c} looked behind every stone but could not find it.",
                "Now the {c} is more careful with the things it loves.",
            ),
        ],
    ),
    (
        "A {c} gives a {o} to a friend {at}.",
        [
            (
                "The {c} had a bright new {o}.",
                "One afternoon {at}, the {c} met a friend who looked very sad.",
                "The {c} gave the {o} to the friend.",
                "Soon they were both laughing together.",
            ),
            (
                "A kind {c} lived near the {p}.",
                "The {c} found out that a friend wanted a {o}.",
                "So the {c} made a {o} and gave it away {at}.",
                "The friend was so happy that the {c} felt happy too.",
            ),
        ],
    ),
]
ZH_PLOTS = [
    (
        "{c}在{p}{loc}找到了一{m}{o}。",
        [
            (
                "一天早上，{c}去{p}{loc}散步。",
                "在一棵老树下面，{c}看见了一{m}{o}。",
                "{c}高兴地把{o}捡起来，带回了家。",
                "晚上，{c}抱着{o}睡得很香。",
            ),
            (
                "从前，{c}最喜欢去{p}{loc}玩。",
                "有一天，{c}在地上挖呀挖，挖出了一{m}{o}。",
                "没有人知道这{m}{o}是从哪里来的。",
                "{c}把{o}拿给大家看，非常骄傲。",
            ),
        ],
    ),
    (
        "{c}在{p}{loc}弄丢了一{m}{o}。",
        [
            (
                "{c}带着一{m}{o}去{p}{loc}玩。",
                "{c}玩了一整天，忘记了{o}。",
                "太阳下山的时候，{o}已经不见了。",
                "{c}很难过，慢慢地走回了家。",
            ),
            (
                "{c}每天都带着心爱的{o}。",
                "一个刮风的下午，{c}在{p}{loc}休息，{o}被风吹走了。",
                "{c}找遍了每一块石头，也没有找到。",
                "从此以后，{c}变得更加细心了。",
            ),
        ],
    ),
    (
        "{c}在{p}{loc}把一{m}{o}送给了朋友。",
        [
            (
                "{c}有一{m}漂亮的新{o}。",
                "一天下午，{c}在{p}{loc}遇到了一个很难过的朋友。",
                "{c}把{o}送给了朋友。",
                "很快，他们就一起开心地笑了起来。",
            ),
            (
                "善良的{c}住在{p}附近。",
                "{c}听说朋友很想要一{m}{o}。",
                "于是{c}做了一{m}{o}，在{p}{loc}送给了朋友。",
                "朋友非常高兴，{c}也觉得很快乐。",
            ),
        ],
    ),
]
# Phrases a degenerate `rejected` loops on after a good start.
EN_LOOPS = ["the {c}", "{o}", "and the {c} went to the {p}", "very very", "the {o} and the {o}", "and then"]
ZH_LOOPS = ["{c}", "{o}", "然后", "{c}和{o}", "走啊走", "{c}去了{p}"]
PROMPTS = {
    "en": "Write a short story using the words: {words}. Summary: {summary}",
    "zh": "写一个短故事，必须用到这些词：{words}。概要：{summary}",
}
WORD_SEP = {"en": ", ", "zh": "、"}
SENTENCE_SEP = {"en": " ", "zh": ""}


def _slots(lang: str, c: str, o: str, p: str) -> dict:
    if lang == "en":
        return {"c": c, "o": o, "p": p, "at": EN_PLACES[p]}
    return {"c": c, "o": o, "p": p, "m": ZH_OBJECTS[o], "loc": ZH_PLACES[p]}


def _pair(rng: random.Random, lang: str) -> dict:
    if lang == "en":
        pools = {"c": EN_CHARACTERS, "o": EN_OBJECTS, "p": list(EN_PLACES)}
    else:
        pools = {"c": ZH_CHARACTERS, "o": list(ZH_OBJECTS), "p": list(ZH_PLACES)}
    words = {k: rng.choice(pool) for k, pool in pools.items()}
    # Required: 2 or 3 of (character, object, place), in that order.
    required_keys = ["c", "o", "p"] if rng.random() < 0.5 else sorted(rng.sample(["c", "o", "p"], 2), key="cop".index)
    summary_t, stories = rng.choice(EN_PLOTS if lang == "en" else ZH_PLOTS)
    sentences = rng.choice(stories)
    sep = SENTENCE_SEP[lang]
    story_t = sep.join(sentences)
    slots = _slots(lang, **words)
    summary = summary_t.format(**slots)
    chosen = story_t.format(**slots)
    if rng.random() < 0.5:  # fluent but wrong: the same story with 1+ required words swapped for others
        swapped = dict(words)
        for k in rng.sample(required_keys, rng.randint(1, len(required_keys))):
            swapped[k] = rng.choice([w for w in pools[k] if w != words[k]])
        rejected = story_t.format(**_slots(lang, **swapped))
    else:  # degenerate: a good start, then a phrase repeated over and over
        start = "".join(t + sep for t in sentences[: rng.randint(1, 2)]).format(**slots)
        loop = rng.choice(EN_LOOPS if lang == "en" else ZH_LOOPS).format(**slots)
        if lang == "en":
            reps = max(4, (rng.randint(35, 55) - len(start.split())) // len(loop.split()))
            rejected = start + " ".join([loop] * reps)
        else:
            reps = max(4, (rng.randint(50, 80) - len(start)) // len(loop))
            rejected = start + loop * reps
    required = [words[k] for k in required_keys]
    prompt = PROMPTS[lang].format(words=WORD_SEP[lang].join(required), summary=summary)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "required_words": required, "lang": lang}


def generate_pairs(n: int, seed: int, zh_fraction: float = 0.5, exclude_prompts=()) -> list[dict]:
    """n preference rows, deterministic in (n, seed). Rows whose prompt is in `exclude_prompts` are redrawn
    (keeps an eval split disjoint from train)."""
    rng = random.Random(seed)
    exclude = set(exclude_prompts)
    rows = []
    while len(rows) < n:
        row = _pair(rng, "zh" if rng.random() < zh_fraction else "en")
        if row["prompt"] not in exclude:
            rows.append(row)
    return rows


def build_tokenizer(texts: list[str], vocab_size: int = 2048):
    """Byte-level BPE trained on texts (any unicode round-trips), with bos/eos/pad and a minimal chat template.

    vocab_size is an upper bound: BPE stops once every word is one token (~970 on the default toy data)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # CJK characters are split one by one first: otherwise a whole Chinese clause is one pre-token, BPE memorises
    # clauses and the words of the task stop being separate tokens the model can copy from the prompt.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CJK), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, so unseen text still encodes
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=[USER, ASSISTANT],
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,  # cleanup rewrites " ." etc.; decoding must round-trip
    )


def build_model(tokenizer, cfg: Optional[ToyConfig] = None):
    """A tiny fp32 Llama sized to the tokenizer (cfg: default ToyConfig), initialised deterministically from
    cfg.seed."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = cfg or ToyConfig()
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        **ids,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    for k, v in ids.items():
        setattr(model.generation_config, k, v)
    return model


def _paths(out_dir: Path) -> dict:
    return {
        "model": str(out_dir / "model"),
        "train_file": str(out_dir / "train.json"),
        "eval_file": str(out_dir / "eval.json"),
    }


def _params(cfg: ToyConfig) -> dict:
    """What identifies one artifact (written to DONE, hashed for the cache)."""
    return {"version": VERSION, **asdict(cfg)}


def _writer(cfg: ToyConfig):
    def write(out: Path) -> None:
        train = generate_pairs(cfg.n_train, cfg.seed, cfg.zh_fraction)
        eval_ = generate_pairs(cfg.n_eval, cfg.seed + 1, cfg.zh_fraction, exclude_prompts={r["prompt"] for r in train})
        tokenizer = build_tokenizer([r[k] for r in train for k in ("prompt", "chosen", "rejected")], cfg.vocab_size)
        for name, rows in (("train.json", train), ("eval.json", eval_)):
            (out / name).write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
        build_model(tokenizer, cfg).save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")

    return write


def write_toy(out_dir, **params) -> dict:
    """Write train.json, eval.json and model/ (tokenizer + tiny model) to out_dir; returns their paths.

    `params`: ToyConfig fields; unset ones take its defaults (what the default run uses). Returns at once if out_dir
    already holds this artifact; never overwrites a directory that holds something else."""
    cfg = ToyConfig(**params)
    return _paths(cache.build(out_dir, _params(cfg), _writer(cfg)))


def cached_toy(cache_dir=None, **params) -> dict:
    """The paths ensure_toy returns, built or not (what comes next is cached by them)."""
    return _paths(cache.path("toy", _params(ToyConfig(**params)), cache_dir))


def ensure_toy(cache_dir=None, **params) -> dict:
    """write_toy into the cache (`<cache>/toy-<hash>`), building at most once; `params`: ToyConfig fields."""
    cfg = ToyConfig(**params)
    return _paths(cache.ensure("toy", _params(cfg), _writer(cfg), cache_dir))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description="Write the offline toy preference dataset and tiny model (defaults: the "
        "default run's, from dpo_lab.config.ToyConfig)."
    )
    ap.add_argument("--out", required=True, help="output directory (must not exist, or hold the same artifact)")
    for f in fields(ToyConfig):
        ap.add_argument(
            f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default, help=f"(default: {f.default})"
        )
    args = vars(ap.parse_args(argv))
    paths = write_toy(args.pop("out"), **args)
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
