"""A real language model and a real reward (issue 19): SmolLM2-135M-Instruct from its PyPI wheel, the sentiment data
it answers itself, the sentiment judge's reward, win rate and KL, and the sweep's reward-KL frontier."""

import json
import os

import pytest
from helpers import leet_summary, png_size, run_py

pytestmark = pytest.mark.e2e  # every test loads SmolLM2 (the smollm2 fixture)

# Tiny sentiment data: seconds of sampling on 2 CPU cores. min_gap 0: any two different answers make a pair.
TINY_DATA = dict(n_train_prompts=6, n_eval_prompts=4, answers_per_prompt=4, max_new_tokens=12, min_gap=0.05)


@pytest.fixture(scope="module")
def smollm2():
    """The converted checkpoint, built once into the session's cache."""
    from dpo_lab.smollm2 import ensure_smollm2

    return ensure_smollm2()


@pytest.mark.smoke
def test_smollm2_is_the_gguf_model_saved_as_a_checkpoint_that_stops_at_im_end(smollm2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpo_lab.smollm2 import gguf_file

    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(smollm2)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    # DPO appends EOS to every answer: it must be the end of turn, on transformers 5.17 as on later versions
    assert (tok.eos_token, tok.pad_token, tok.eos_token_id, tok.pad_token_id) == ("<|im_end|>", "<|im_end|>", 2, 2)
    assert model.generation_config.eos_token_id == model.config.eos_token_id == 2
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    gguf = gguf_file()
    original = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)
        answer = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1] :]
    assert "Paris" in tok.decode(answer)


def test_sentiment_pairs_are_deterministic_ranked_and_split_by_prompt(smollm2, tmp_path):
    from dpo_lab.sentiment import ensure_sentiment, prompts

    built = [ensure_sentiment(smollm2, cache_dir=tmp_path / name, **TINY_DATA) for name in ("a", "b")]
    read = lambda f: open(f, encoding="utf-8").read()  # noqa: E731
    assert all(
        read(a[k]) == read(b[k]) for a, b in [built] for k in ("train_file", "eval_file")
    )  # same seed: same bytes
    rows = {k: [json.loads(line) for line in read(built[0][f"{k}_file"]).splitlines()] for k in ("train", "eval")}
    assert rows["train"] and rows["eval"]
    for r in rows["train"] + rows["eval"]:
        assert r["chosen_score"] >= r["rejected_score"] + TINY_DATA["min_gap"]
        assert r["chosen"][0]["role"] == "assistant" and r["chosen"][0]["content"] != r["rejected"][0]["content"]
    asked = {k: {r["prompt"][0]["content"] for r in v} for k, v in rows.items()}
    assert not asked["train"] & asked["eval"]
    assert asked["eval"] <= set(prompts(0)[: TINY_DATA["n_eval_prompts"]])  # the first prompts are held out


@pytest.mark.slow
def test_two_step_sentiment_sweep_logs_reward_win_rate_and_kl_and_plots_the_frontier(smollm2, tmp_path):
    data = [f"sentiment.{k}={v}" for k, v in TINY_DATA.items()]
    proc = run_py(
        "-m",
        "model=smollm2",
        "data=sentiment",
        *data,
        "beta=0.1,0.5",
        "max_steps=2",
        "lr=1e-5",
        "samples.count=4",
        "samples.max_new_tokens=12",
        "trainer.max_length=64",
        "trainer.eval_steps=2",
        "trainer.save_steps=2",
        "trainer.per_device_train_batch_size=2",
        "trainer.per_device_eval_batch_size=4",
        f"hydra.sweep.dir={tmp_path}/sweep",
        f"results_dir={tmp_path}/results",
        cwd=tmp_path,
        check=True,
    )
    for job in ("0", "1"):
        job_dir = tmp_path / "sweep" / job
        result = json.loads((job_dir / "result.json").read_text())
        assert result["status"] == "completed" and result["samples/judge"] == "sentiment"
        for key in ("samples/reward", "samples/reward_se", "samples/win_rate", "samples/kl", "samples/kl_se"):
            assert isinstance(result[key], float), key
        samples = [json.loads(line) for line in (job_dir / "samples.jsonl").read_text().splitlines()]
        assert {r["step"] for r in samples} == {0, 2}
        start = [r for r in samples if r["step"] == 0]
        assert all(abs(r["kl"]) < 1e-3 and r["win"] == 0.5 for r in start)  # the policy is the reference at step 0
        assert all(-1 <= r["reward"] <= 1 for r in samples)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(job_dir / "final")
        assert tok.eos_token == tok.pad_token == "<|im_end|>"
        summary = leet_summary(result["wandb_dir"])["summary"]
        assert summary["samples/kl"] == pytest.approx(result["samples/kl"])
        assert summary["samples/reward"]["last"] == pytest.approx(result["samples/reward"])
    report = next((tmp_path / "results").glob("*/report.md"))
    assert png_size(report.parent / "frontier.png")[0] > 0
    assert "## Reward vs KL" in report.read_text() and "Best reward-KL frontier" in proc.stdout
    assert os.path.isfile(report.parent / "samples.png")


def test_preflight_checks_a_data_file_with_the_smollm2_tokenizer(smollm2, tmp_path):
    from helpers import compose_cfg

    from dpo_lab.errors import UserError
    from dpo_lab.sweeps.preflight import check_job

    path = tmp_path / "long.json"
    path.write_text(json.dumps([{"prompt": "word " * 600, "chosen": f"a{i}", "rejected": "b"} for i in range(4)]))
    cfg = compose_cfg(["model=smollm2", "data=json", f"data.train_file={path}"])
    with pytest.raises(UserError, match="long.json: every prompt is at least trainer.max_length=512 tokens long"):
        check_job(cfg, {})  # not "model=hf needs model.path": the tokenizer is the converted checkpoint's
