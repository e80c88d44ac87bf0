import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_lab.config import ToyConfig
from dpo_lab.samples.metrics import task_score
from dpo_lab.toy import task as toy
from dpo_lab.toy.task import build_model, build_tokenizer, ensure_toy, generate_pairs, write_toy

ROOT = Path(__file__).resolve().parents[1]
# A degenerate text ends in one phrase repeated (space-separated in English, back to back in Chinese).
REPETITIVE = re.compile(r"(.+?)(?: ?\1){3,}$")


def is_repetitive(text: str) -> bool:
    return REPETITIVE.search(text) is not None


@pytest.fixture(scope="module")
def rows():
    return generate_pairs(400, seed=0)


@pytest.fixture(scope="module")
def tokenizer(rows):
    return build_tokenizer([r[k] for r in rows for k in ("prompt", "chosen", "rejected")], vocab_size=1024)


def test_generate_pairs_deterministic():
    assert generate_pairs(50, seed=3) == generate_pairs(50, seed=3)
    assert generate_pairs(50, seed=3) != generate_pairs(50, seed=4)
    assert generate_pairs(20, seed=0, zh_fraction=0.0)[0]["lang"] == "en"
    assert {r["lang"] for r in generate_pairs(20, seed=0, zh_fraction=1.0)} == {"zh"}


def test_rows_well_formed(rows):
    assert len(rows) == 400
    assert {r["lang"] for r in rows} == {"en", "zh"}
    for r in rows:
        assert set(r) == {"prompt", "chosen", "rejected", "required_words", "lang"}
        assert all(isinstance(r[k], str) and r[k] for k in ("prompt", "chosen", "rejected"))
        assert r["chosen"] != r["rejected"]
        assert 2 <= len(r["required_words"]) <= 3
        assert all(w in r["prompt"] for w in r["required_words"])
        assert task_score(r["chosen"], r["required_words"]) == 1.0
        assert not is_repetitive(r["chosen"])
        if r["lang"] == "en":
            assert r["prompt"].startswith("Write a short story using the words: ")
            assert 30 <= len(r["chosen"].split()) <= 60
        else:
            assert r["prompt"].startswith("写一个短故事")
            assert 40 <= len(r["chosen"]) <= 90


def test_rejected_is_wrong(rows):
    missing = [task_score(r["rejected"], r["required_words"]) < 1 for r in rows]
    repetitive = [is_repetitive(r["rejected"]) for r in rows]
    # Every rejected text is bad in a checkable way, and both kinds of bad are common.
    assert all(m or rep for m, rep in zip(missing, repetitive))
    assert 0.35 < sum(repetitive) / len(rows) < 0.65
    assert sum(missing) / len(rows) > 0.5


def test_word_lists_do_not_collide():
    """Substring scoring is exact only if no task word hides inside another word or inside template text."""
    for words, texts in [
        (
            toy.EN_CHARACTERS + toy.EN_OBJECTS + list(toy.EN_PLACES),
            [t for s, stories in toy.EN_PLOTS for t in (s, *(x for st in stories for x in st))]
            + toy.EN_LOOPS
            + [toy.PROMPTS["en"]],
        ),
        (
            toy.ZH_CHARACTERS + list(toy.ZH_OBJECTS) + list(toy.ZH_PLACES),
            [t for s, stories in toy.ZH_PLOTS for t in (s, *(x for st in stories for x in st))]
            + toy.ZH_LOOPS
            + [toy.PROMPTS["zh"]],
        ),
    ]:
        assert len(set(words)) == len(words) >= 30
        fragments = [f.lower() for t in texts for f in re.split(r"\{\w+\}", t)]
        for w in words:
            assert not [v for v in words if v != w and w in v], w
            assert not [f for f in fragments if w in f], w


def test_eval_disjoint_from_train():
    train = generate_pairs(100, seed=0)
    held_out = generate_pairs(100, seed=1, exclude_prompts={r["prompt"] for r in train})
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}


def test_task_score():
    assert task_score("The Cat sat by the river.", ["cat", "river"]) == 1.0
    assert task_score("The cat sat.", ["cat", "river"]) == 0.5
    assert task_score("", ["cat", "river", "lamp"]) == 0.0
    assert task_score("小猫在河边找到一盏灯笼。", ["小猫", "灯笼", "森林"]) == pytest.approx(2 / 3)
    assert task_score("anything", []) == 1.0


def test_tokenizer_round_trip(tokenizer):
    for text in ["Hello world.  The cat sat.\n ok", "小狗在河边找到一盏灯笼。", "mixed 中文 and 😀 ünïcode，「你好」"]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.eos_token == "<|eos|>" and tokenizer.bos_token == "<|bos|>"
    assert len({tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id}) == 3
    assert tokenizer.model_max_length == 1024
    # Chinese is tokenized per character, so a task word is the same tokens in any context.
    assert len(tokenizer("小猫")["input_ids"]) == 2
    assert (
        build_tokenizer(["a b c", "小猫"] * 5, 300).get_vocab()
        == build_tokenizer(["a b c", "小猫"] * 5, 300).get_vocab()
    )


def test_chat_template(tokenizer):
    messages = [{"role": "user", "content": "hi"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|user|>\nhi\n<|assistant|>\n"
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": "yo"}], tokenize=False)
    assert full == prompt + "yo<|eos|>"  # prompt is a prefix of prompt + answer, as TRL requires
    assert tokenizer(prompt)["input_ids"][0] == tokenizer.convert_tokens_to_ids("<|user|>")


def test_build_model_deterministic(tokenizer):
    a, b = build_model(tokenizer, ToyConfig(seed=1)), build_model(tokenizer, ToyConfig(seed=1))
    assert a.config.vocab_size == len(tokenizer)
    assert a.config.pad_token_id == tokenizer.pad_token_id == a.generation_config.pad_token_id
    assert sum(p.numel() for p in a.parameters()) < 5_000_000
    assert all((p == q).all() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.e2e
def test_write_toy_loads_offline(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "toy"
    paths = write_toy(out, n_train=64, n_eval=16)
    assert paths == {
        "model": str(out / "model"),
        "train_file": str(out / "train.json"),
        "eval_file": str(out / "eval.json"),
    }
    train, eval_ = (json.loads(Path(paths[k]).read_text(encoding="utf-8")) for k in ("train_file", "eval_file"))
    assert len(train) == 64 and len(eval_) == 16
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in eval_}
    assert [p.name for p in tmp_path.iterdir()] == ["toy"]  # no temp dir left behind

    tok = AutoTokenizer.from_pretrained(paths["model"])
    model = AutoModelForCausalLM.from_pretrained(paths["model"])
    assert model.dtype == torch.float32 and tok.pad_token == "<|pad|>" and tok.chat_template
    enc = tok([train[0]["prompt"]], return_tensors="pt")
    assert model(**enc).logits.shape == (1, enc["input_ids"].shape[1], len(tok))
    gen = model.generate(**enc, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert gen.shape[1] == enc["input_ids"].shape[1] + 5

    mtime = (out / "DONE").stat().st_mtime_ns
    assert write_toy(out, n_train=64, n_eval=16) == paths  # DONE marker: returns without rebuilding
    assert (out / "DONE").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError):  # different parameters never overwrite an existing dir
        write_toy(out, n_train=32, n_eval=16)


@pytest.mark.e2e
def test_ensure_toy_caches(tmp_path):
    a = ensure_toy(cache_dir=tmp_path, n_train=32, n_eval=8, hidden_size=64, intermediate_size=128)
    b = ensure_toy(cache_dir=str(tmp_path), n_train=32, n_eval=8, hidden_size=64, intermediate_size=128)
    assert a == b and Path(a["model"]).parent.parent == tmp_path
    assert Path(a["model"]).parent.name.startswith("toy-")
    # Defaults spelled out or not are the same artifact; other parameters are another one.
    assert ensure_toy(cache_dir=tmp_path, n_train=32, n_eval=8, seed=0, hidden_size=64, intermediate_size=128) == a
    assert ensure_toy(cache_dir=tmp_path, n_train=32, n_eval=8, seed=1, hidden_size=64, intermediate_size=128) != a
    with pytest.raises(TypeError):
        ensure_toy(cache_dir=tmp_path, n_train=32, hidden=64)


@pytest.mark.e2e
def test_cli_writes_what_the_default_run_uses(tmp_path):
    """`python -m dpo_lab.toy.task --out DIR` with no flags builds the artifact the default run trains on
    (ToyConfig)."""
    from dataclasses import asdict

    from dpo_lab.toy.task import VERSION

    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "dpo_lab.toy.task", "--out", str(out)]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("train.json", "eval.json", "model/config.json", "model/tokenizer.json", "DONE"):
        assert (out / name).exists(), name
    assert str(out / "train.json") in proc.stdout
    assert json.loads((out / "DONE").read_text()) == {"version": VERSION, **asdict(ToyConfig())}
    assert len(json.loads((out / "train.json").read_text(encoding="utf-8"))) == ToyConfig().n_train


def _file_bytes(folder: Path) -> dict:
    """Every file under `folder` (relative path -> bytes), leaving out the trainers' scratch output (trainer/)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "trainer" not in p.relative_to(folder).parts
    }


@pytest.mark.e2e
def test_build_once_artifacts_are_the_same_bytes_from_two_fresh_caches(tmp_path):
    """The toy data and model, the warm-up and the toy reward model are built once per machine, so a figure that
    depends on them (the judged win rate) must not depend on which machine built them: two fresh caches give
    byte-identical weights. (The reward model's new score head was once initialised unseeded.)"""
    from helpers import tiny_toy

    from dpo_lab.toy.reward_model import ensure_reward_model
    from dpo_lab.toy.sft import ensure_sft

    built = []
    for cache_dir in (tmp_path / "a", tmp_path / "b"):
        toy = tiny_toy(cache_dir=cache_dir)
        sft = ensure_sft(toy, steps=4, batch_size=8)
        rm = ensure_reward_model(toy, sft, steps=4, batch_size=8)
        built.append(
            {name: _file_bytes(Path(p)) for name, p in (("toy", Path(toy["model"]).parent), ("sft", sft), ("rm", rm))}
        )
    for name in ("toy", "sft", "rm"):
        a, b = built[0][name], built[1][name]
        assert any(f.endswith(".safetensors") for f in a), (name, list(a))
        assert a.keys() == b.keys(), name
        assert [f for f in a if a[f] != b[f]] == [], name
