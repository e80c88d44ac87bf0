"""The supervised warm-up of the tiny model: its data, its cache, and that it gives DPO something to improve."""

import json
from pathlib import Path

import pytest
from helpers import tiny_toy

from dpo_lab.toy.sft import ensure_sft, warmup_rows
from dpo_lab.toy.task import generate_pairs


def test_warmup_rows_mix_chosen_and_rejected():
    rows = generate_pairs(400, seed=0)
    mixed = warmup_rows(rows, 0.5, seed=0)
    assert mixed == warmup_rows(rows, 0.5, seed=0) and len(mixed) == 400
    rejected = sum(m["completion"] == r["rejected"] for m, r in zip(mixed, rows))
    assert 160 < rejected < 240
    assert all(m["prompt"] == r["prompt"] for m, r in zip(mixed, rows))
    assert all(m["completion"] == r["chosen"] for m, r in zip(warmup_rows(rows, 0.0, 0), rows))


def _nll(model_dir: str, rows) -> float:
    """Mean per-token NLL of the chosen answers given their prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpo_lab.data import prompt_ids
    from dpo_lab.samples.sampling import logps

    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompts = [prompt_ids(tok, r["prompt"]) for r in rows]
    answers = [tok(r["chosen"])["input_ids"] + [tok.eos_token_id] for r in rows]
    values = [-lp / len(a) for lp, a in zip(logps(model, prompts, answers), answers)]  # NLL per token
    return sum(values) / len(values)


@pytest.mark.e2e
def test_ensure_sft_builds_once_and_learns(tmp_path):
    toy = tiny_toy(cache_dir=tmp_path)
    path = ensure_sft(toy, steps=30, batch_size=8, lr=1e-2)
    out = Path(path).parent
    assert out.parent == tmp_path and out.name.startswith("sft-") and Path(path).name == "model"
    assert (Path(path) / "config.json").exists() and (Path(path) / "tokenizer.json").exists()
    params = json.loads((out / "DONE").read_text())  # what the hash in its name stands for
    assert params["steps"] == 30 and params["toy"] == Path(toy["model"]).parent.name

    mtime = (out / "DONE").stat().st_mtime_ns
    assert ensure_sft(toy, steps=30, batch_size=8, lr=1e-2) == path  # cached: no second build
    assert (out / "DONE").stat().st_mtime_ns == mtime  # DONE untouched: nothing was rebuilt
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no temp dir left behind

    # The warm-up learned the toy answers: they became far likelier than under the random initialisation.
    rows = json.loads(Path(toy["eval_file"]).read_text(encoding="utf-8"))[:8]
    assert _nll(path, rows) < _nll(toy["model"], rows) - 0.5  # seen: 0.99 and more on CPU; 1.0 was too tight

    # Other parameters (here: the chat template, which trains on conversational rows) are another artifact.
    chat = ensure_sft(toy, steps=4, batch_size=8, lr=1e-2, prompt_format="chat")
    assert chat != path and Path(chat).exists()
