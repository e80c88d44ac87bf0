"""Checkpoint samples: metrics on hand-made text, the summary rules, and real tiny runs read back from
samples.jsonl, the offline wandb log and the `samples` command."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, TINY, compose_cfg, leet_records, leet_summary, run_py

from dpo_lab import files
from dpo_lab.samples import judges, sampling, viewer
from dpo_lab.samples.metrics import distinct, means, summarize, text_metrics, units
from dpo_lab.samples.viewer import wrap

# On top of experiment=tiny: a short warm-up, so the tiny model's answers are stories, 3 prompts per checkpoint, and
# a short toy reward model for the default judge.
SAMPLED = [
    TINY,
    "sft.steps=40",
    "sft.batch_size=8",
    "max_steps=6",
    "trainer.save_steps=3",
    "trainer.eval_steps=3",
    "samples.count=3",
    "samples.max_new_tokens=24",
    "reward_model.steps=40",
    "reward_model.batch_size=8",
]


def read_samples(job) -> list:
    return files.read_jsonl(os.path.join(job, files.SAMPLES))


def test_units_split_cjk_by_character():
    assert units("The cat sat.  小猫在河边，hello 世界") == [
        "The",
        "cat",
        "sat.",
        "小",
        "猫",
        "在",
        "河",
        "边",
        "，",
        "hello",
        "世",
        "界",
    ]
    assert units("") == [] and units("  \n ") == []


def test_metrics_on_hand_made_text():
    looped = text_metrics("the cat " * 50)
    assert looped["length"] == 100
    assert looped["repetition"] > 0.95  # 97 four-grams, 2 distinct
    assert looped["distinct_1"] == pytest.approx(2 / 100) and looped["distinct_2"] == pytest.approx(2 / 99)

    fresh = text_metrics("one two three four five six seven eight")
    assert fresh == {"length": 8, "distinct_1": 1.0, "distinct_2": 1.0, "repetition": 0.0}

    zh = text_metrics("小狗带着一只风筝去山顶上玩。", ["小狗", "山顶", "森林"])
    assert zh["length"] == 14 and zh["repetition"] == 0.0 and zh["distinct_1"] == 1.0
    assert zh["task_score"] == pytest.approx(2 / 3)
    zh_looped = text_metrics("走啊走" * 30)
    assert (
        zh_looped["length"] == 90
        and zh_looped["repetition"] > 0.95
        and zh_looped["distinct_1"] == pytest.approx(2 / 90)
    )

    empty = text_metrics("", ["cat"])
    assert empty == {"length": 0, "distinct_1": 0.0, "distinct_2": 0.0, "repetition": 0.0, "task_score": 0.0}
    assert distinct(["a", "b"], 3) == 0.0


def test_toy_answers_separate_by_repetition():
    from dpo_lab.toy.task import generate_pairs

    rows = generate_pairs(200, seed=0)
    chosen = [text_metrics(r["chosen"])["repetition"] for r in rows]
    looped = [
        text_metrics(r["rejected"])["repetition"] for r in rows if re.search(r"(.+?)(?: ?\1){3,}$", r["rejected"])
    ]
    assert max(chosen) < 0.05 and min(looped) > 0.1 and len(looped) > 50


def test_means_skip_metrics_missing_anywhere_and_carry_standard_errors():
    rows = [{"length": 4, "repetition": 0.5, "ref_nll": None}, {"length": 6, "repetition": 0.0, "ref_nll": 1.0}]
    assert means(rows) == {"mean_length": 5.0, "mean_length_se": 1.0, "repetition": 0.25, "repetition_se": 0.25}
    wins = means([{"win": w} for w in (1.0, 0.5, 0.0, 1.0)])  # the judge's verdicts: win, tie, loss, win
    assert wins["win_rate"] == 0.625 and wins["win_rate_se"] == pytest.approx(0.4787135 / 2)


def test_reward_model_pairs_add_garbled_mixtures():
    from dpo_lab.toy.reward_model import training_pairs
    from dpo_lab.toy.task import generate_pairs

    rows = generate_pairs(200, seed=0)
    pairs = training_pairs(rows, 0.5, seed=0)
    extra = pairs[len(rows) :]
    assert pairs[: len(rows)] == rows and 70 < len(extra) < 130
    for p in extra:  # the chosen story against a splice of it with another: fragments of both, neither whole
        assert p["rejected"] != p["chosen"] and p["chosen"] in {r["chosen"] for r in rows}
    assert training_pairs(rows, 0.5, seed=0) == pairs  # seeded


def test_task_judge_calls_ties_and_wins():
    rows = [{"required_words": ["cat", "lamp"]}] * 3
    verdicts = judges.TaskJudge().compare(
        ["p"] * 3, ["a cat and a lamp", "a cat", "a cat"], ["a cat", "a cat", "a lamp and a cat"], rows
    )
    assert [v["win"] for v in verdicts] == [1.0, 0.5, 0.0]
    assert [v["judge_policy"] for v in verdicts] == [1.0, 0.5, 0.5]
    assert judges.resolve("auto", None, "toy") == "reward_model" and judges.resolve("auto", None, "files") == "none"
    assert judges.resolve("auto", "/rm", "files") == "reward_model" and judges.resolve("task", None, "toy") == "task"


def test_summarize_best_and_degradation():
    history = {0: {"task_score": 0.5}, 3: {"task_score": 0.9}, 6: {"task_score": 0.6}}
    assert summarize(history, "task_score", 0.1) == {
        "best_checkpoint_step": 3,
        "best_checkpoint_metric": "samples/task_score",
        "best_checkpoint_value": 0.9,
        "degraded_after_step": 3,
    }
    history[6]["task_score"] = 0.85  # within the margin: not degraded
    assert summarize(history, "task_score", 0.1)["degraded_after_step"] is None
    # Lower is better for repetition; ties go to the earliest checkpoint, as load_best_model_at_end does.
    rep = {0: {"repetition": 0.1}, 3: {"repetition": 0.1}, 6: {"repetition": 0.4}}
    assert summarize(rep, "repetition", 0.1)["best_checkpoint_step"] == 0
    assert summarize(rep, "repetition", 0.1)["degraded_after_step"] == 0
    assert summarize({0: {"repetition": 0.1}}, "task_score", 0.1) == {}


def test_summarize_does_not_flag_sampling_noise():
    """A 0.3 drop in the mean is degradation when every prompt fell, noise when one prompt swung from 1 to 0."""
    history = {0: {"task_score": 0.5}, 3: {"task_score": 0.9}, 6: {"task_score": 0.6}}
    steady = {0: [0.5] * 4, 3: [0.9] * 4, 6: [0.6] * 4}  # every prompt lost 0.3: standard error 0
    assert summarize(history, "task_score", 0.1, steady)["degraded_after_step"] == 3
    noisy = {0: [0.5] * 4, 3: [1.0, 1.0, 1.0, 0.6], 6: [1.0, 1.0, 0.0, 0.4]}  # means 0.9 -> 0.6, one prompt swung
    assert summarize(history, "task_score", 0.1, noisy)["degraded_after_step"] is None


def test_wrap_respects_display_width():
    lines = wrap("小猫在河边找到了一盏灯笼。" * 3 + " and then a rather long English sentence follows here", 20)
    assert all(viewer._width(line) <= 20 for line in lines)
    assert "".join(lines).replace(" ", "") == (
        "小猫在河边找到了一盏灯笼。" * 3 + "andthenaratherlongEnglishsentencefollowshere"
    )
    assert wrap("", 10) == [""]


def test_pick_is_fixed_and_sorted():
    assert sampling.pick(list(range(100)), 8, 0) == sampling.pick(list(range(100)), 8, 0)
    assert sampling.pick(list(range(100)), 8, 0) == sorted(sampling.pick(list(range(100)), 8, 0))
    assert sampling.pick(list(range(5)), 8, 0) == [0, 1, 2, 3, 4]


# --- real runs ------------------------------------------------------------------------------------------------------


def _run(tmp_path: Path, name: str, *overrides: str) -> Path:
    """A SAMPLED job with its own cache (the warm-up is built here and reused by the next job of the module)."""
    job = tmp_path / name
    env = {**os.environ, "DPO_LAB_CACHE": str(tmp_path / "cache")}
    run_py(*SAMPLED, *overrides, f"hydra.run.dir={job}", cwd=tmp_path, env=env, check=True, timeout=300)
    return job


@pytest.fixture(scope="module")
def full_ft_job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("samples")
    return tmp, _run(tmp, "full")


@pytest.mark.e2e
def test_jsonl_has_every_checkpoint(full_ft_job):
    _, job = full_ft_job
    rows = read_samples(job)
    assert sorted({r["step"] for r in rows}) == [0, 3, 6]
    by_step = {s: [r for r in rows if r["step"] == s] for s in (0, 3, 6)}
    assert all(len(v) == 3 for v in by_step.values())
    for r in rows:
        assert set(r) == set(sampling.COLUMNS)
        assert all(isinstance(r[k], str) and r[k] for k in ("prompt", "policy", "reference", "ground_truth"))
        assert r["ref_nll"] > 0 and 0 <= r["task_score"] <= 1 and r["length"] > 0
    # The same prompts, and one reference answer per prompt for the whole run.
    for s in (3, 6):
        assert [(r["index"], r["prompt"], r["reference"]) for r in by_step[s]] == [
            (r["index"], r["prompt"], r["reference"]) for r in by_step[0]
        ]
    # Before any update the policy is the reference: same weights, same seed, same answers.
    assert [r["policy"] for r in by_step[0]] == [r["reference"] for r in by_step[0]]
    eval_rows = json.loads(next((job.parent / "cache").glob("toy-*/eval.json")).read_text(encoding="utf-8"))
    for r in rows:
        assert r["ground_truth"] == eval_rows[r["index"]]["chosen"] and r["prompt"] == eval_rows[r["index"]]["prompt"]

    result = json.loads((job / "result.json").read_text())
    assert result["status"] == "completed"
    assert result["best_checkpoint_step"] in (0, 3, 6) and result["best_checkpoint_metric"] == "samples/win_rate"
    assert "degraded_after_step" in result and result["samples/seconds"] > 0
    assert result["samples/task_score"] == pytest.approx(means(by_step[6])["task_score"])
    # The default judge on toy data is the toy reward model: equal answers tie, so step 0 is exactly 0.5.
    assert result["samples/judge"] == "reward_model"
    assert all(r["win"] == 0.5 and r["judge_policy"] == r["judge_reference"] for r in by_step[0])
    assert all(
        r["win"] in (0.0, 0.5, 1.0)
        and r["win"]
        == 0.5 + 0.5 * ((r["judge_policy"] > r["judge_reference"]) - (r["judge_policy"] < r["judge_reference"]))
        for r in rows
        if r["policy"] != r["reference"]
    )
    assert (
        result["samples/win_rate"] == pytest.approx(means(by_step[6])["win_rate"]) and "samples/win_rate_se" in result
    )


@pytest.mark.e2e
def test_wandb_table_matches_jsonl(full_ft_job):
    _, job = full_ft_job
    run_dir = next((job / "wandb").glob("offline-run-*"))
    # A logged Table is a history record holding a reference to the table file under the run's files/.
    logged = [
        r["history"]["item"]
        for r in leet_records(run_dir)
        if r["type"] == "history" and "samples/table.path" in r["history"]["item"]
    ]
    assert [h["train/global_step"] for h in logged] == [0, 3, 6]
    rows = read_samples(job)
    for h in logged:
        step = h["train/global_step"]
        table = json.loads((run_dir / "files" / h["samples/table.path"]).read_text(encoding="utf-8"))
        assert table["columns"] == list(sampling.COLUMNS)
        mine = [r for r in rows if r["step"] == step]
        assert table["data"] == [[r[k] for k in sampling.COLUMNS] for r in mine]
        assert h["samples/task_score"] == pytest.approx(means(mine)["task_score"])
        assert h["samples/repetition"] == pytest.approx(means(mine)["repetition"])
        assert h["samples/seconds"] > 0 and "samples/ref_nll" in h and "samples/distinct_2" in h
        assert h["samples/win_rate"] == pytest.approx(means(mine)["win_rate"]) and "samples/win_rate_se" in h
    summary = leet_summary(run_dir)
    summary = summary.get("summary", summary)
    result = json.loads((job / "result.json").read_text())
    assert summary["best_checkpoint_step"] == result["best_checkpoint_step"]
    assert summary["samples/task_score"] == pytest.approx(result["samples/task_score"])
    assert "max" in summary["samples/win_rate"]  # define_metric summary: the best checkpoint's win rate


@pytest.mark.e2e
def test_first_run_says_what_it_builds_once(full_ft_job, monkeypatch):
    """The module's first job, on an empty cache, says once what it builds (and what step 0's samples are doing);
    with everything built there is nothing to say: `first_use` names the dirs the job built."""
    from dpo_lab import cache, train

    tmp, job = full_ft_job
    log = (job / "train.log").read_text()
    (notice,) = [line for line in log.splitlines() if "First run on this machine" in line]
    assert "the toy data and model" in notice and "warm-up" in notice and "toy reward model" in notice
    assert str(tmp / "cache") in notice
    assert "Samples at step 0: the policy answers 3 eval prompts" in log and "reward_model judge compares" in log
    monkeypatch.setenv("DPO_LAB_CACHE", str(tmp / "cache"))
    planned = train.first_use(compose_cfg(SAMPLED), "cpu")
    assert [what for _, what, _ in planned] == [
        "the toy data and model",
        "the tiny model's warm-up",
        "the toy reward model",
    ]
    assert all(cache.done_params(out_dir) is not None for out_dir, _, _ in planned)


@pytest.mark.e2e
def test_samples_command_prints_side_by_side(full_ft_job):
    _, job = full_ft_job
    proc = subprocess.run(
        [sys.executable, "-m", "dpo_lab", "samples", str(job), "--step", "3", "--width", "120"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    rows = [r for r in read_samples(job) if r["step"] == 3]
    assert "policy" in out and "reference" in out and "ground truth" in out and "best checkpoint: step" in out
    assert out.count("step 3  prompt") == 3
    assert rows[0]["prompt"].split()[0] in out
    assert max(viewer._width(line) for line in out.splitlines()) <= 120
    bad = subprocess.run(
        [sys.executable, "-m", "dpo_lab", "samples", str(job), "--step", "4"], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "sampled steps: 0, 3, 6" in bad.stderr


@pytest.mark.e2e
def test_lora_greedy_keep_best_reuses_warmup(full_ft_job):
    tmp, _ = full_ft_job
    (done,) = (tmp / "cache").glob("sft-*/DONE")
    built = done.stat().st_mtime_ns
    job = _run(
        tmp,
        "lora",
        "peft=lora",
        "samples=greedy",
        "samples.count=2",
        "samples.max_new_tokens=16",
        "samples.keep_best=true",
        "wandb.mode=disabled",
    )
    assert [p.stat().st_mtime_ns for p in (tmp / "cache").glob("sft-*/DONE")] == [built]  # the warm-up came from cache
    assert "First run on this machine" not in (job / "train.log").read_text()  # nothing built, nothing to announce
    rows = read_samples(job)
    by_step = {s: [r for r in rows if r["step"] == s] for s in sorted({r["step"] for r in rows})}
    assert list(by_step) == [0, 3, 6]
    assert [r["policy"] for r in by_step[0]] == [r["reference"] for r in by_step[0]]  # adapter off == adapter at init
    # Every row has the reference's answer (greedy answers of a tiny model may be empty) and, where the policy
    # said something, the reference's NLL of it.
    assert all(r["reference"] is not None and (r["ref_nll"] is not None or not r["policy"]) for r in rows), rows
    result = json.loads((job / "result.json").read_text())
    assert result["status"] == "completed" and result["best_checkpoint_step"] in (0, 3, 6)


# --- the default model: DPO helps, over-training hurts, and the numbers show both --------------------------------


def _default_run(tmp_path: Path, name: str, *overrides: str):
    """A run of the default tiny model (with its SFT warm-up, shared through the session cache) on the default toy
    data; returns (per-step rows of samples.jsonl, result.json)."""
    job = tmp_path / name
    run_py("wandb.mode=disabled", *overrides, f"hydra.run.dir={job}", cwd=tmp_path, check=True, timeout=900)
    rows = read_samples(job)
    by_step = {s: [r for r in rows if r["step"] == s] for s in sorted({r["step"] for r in rows})}
    return by_step, json.loads((job / "result.json").read_text())


@pytest.mark.slow
def test_toy_reward_model_prefers_chosen_on_heldout_pairs():
    """The default judge's reward model (trained on the toy train pairs from the default warm-up, cached for the
    session) scores chosen above rejected on the 128 held-out eval pairs far above chance (0.5)."""
    from dpo_lab.toy.reward_model import ensure_reward_model, heldout_accuracy
    from dpo_lab.toy.sft import ensure_sft
    from dpo_lab.toy.task import ensure_toy

    toy = ensure_toy()
    assert heldout_accuracy(ensure_reward_model(toy, ensure_sft(toy)), toy["eval_file"]) > 0.75


@pytest.mark.slow
def test_default_dpo_run_raises_task_score(tmp_path):
    """The default run moves the toy task score the preferred way on 128 fixed eval prompts, and the repetition down.
    Seeded and CPU-deterministic; seen on 2 cores: task score 0.832 -> 0.896, repetition 0.138 -> 0.063."""
    by_step, result = _default_run(tmp_path, "default", "samples.count=128")
    first, last = by_step[0], by_step[max(by_step)]
    assert max(by_step) == result["steps"] == 128
    before, after = means(first), means(last)
    assert after["task_score"] > before["task_score"] + 0.03, (before, after)
    assert after["repetition"] < before["repetition"] - 0.03, (before, after)
    assert before["task_score"] > 0.7  # the warm-up writes stories that mostly use the required words
    assert result["degraded_after_step"] is None
    # The judge (the toy reward model) prefers the trained policy's answers to the reference's: seen 0.5 -> 0.555
    # (standard error 0.031 over the 128 prompts; a modest gain, and the report says so).
    assert before["win_rate"] == 0.5 and after["win_rate"] > 0.5, after


@pytest.mark.slow
def test_over_trained_run_is_flagged_as_degraded(tmp_path):
    """lr 1e-3 (20x the default) wrecks the warmed-up model within 100 steps: the reference's NLL of its answers
    rises, fewer answers stop at EOS, the task score falls, and the run says "degraded after step N".
    Seen on 2 cores: ref_nll 0.18 -> 3.31, stopped 1.00 -> 0.23, task score 0.84 -> 0.59, degraded after step 0."""
    by_step, result = _default_run(
        tmp_path,
        "over",
        "samples.count=64",
        "lr=1e-3",
        "max_steps=100",
        "trainer.save_steps=25",
        "trainer.eval_steps=25",
    )
    before, after = means(by_step[0]), means(by_step[100])
    assert after["ref_nll"] > before["ref_nll"] + 1.0, (before, after)
    assert after["stopped"] < before["stopped"] - 0.3, (before, after)
    assert after["task_score"] < before["task_score"] - 0.1, (before, after)
    # The judge now prefers the reference's answers, well beyond the noise (seen: 0.5 -> 0.203, standard error 0.051).
    assert after["win_rate"] < 0.5 - 1.96 * after["win_rate_se"], after
    assert result["degraded_after_step"] == result["best_checkpoint_step"] < 100


@pytest.mark.e2e
def test_pairwise_judge_asks_both_orders(tmp_path):
    """pairwise_lm's mechanics with the tiny toy model standing in for an instruction model: equal answers tie,
    and a win is the mean of the two orders' probabilities, so swapping the answers gives 1 - win."""
    from helpers import tiny_toy

    judge = judges.load("pairwise_lm", tiny_toy()["model"], "cpu")
    rows = [{"prompt": "Write a story about a cat."}] * 2
    a, b = "The cat found a lamp.", "the the the the"
    forward = judge.compare([r["prompt"] for r in rows], [a, a], [b, a], rows)
    backward = judge.compare([rows[0]["prompt"]], [b], [a], rows[:1])
    assert forward[1]["win"] == 0.5 and 0.0 < forward[0]["win"] < 1.0
    assert backward[0]["win"] == pytest.approx(1 - forward[0]["win"])
