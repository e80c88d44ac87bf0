"""The reward-KL frontier (DPO paper, Fig. 2) on a hand-made sweep dir: which checkpoints are Pareto-optimal, which
run is on the best frontier, and what frontier.png, report.md and the console say; a sweep without a reward or a
KL gets none of it."""

import csv
import json

import pytest
from helpers import png_size

from dpo_lab import quality
from dpo_lab.samples.metrics import means_by_step
from dpo_lab.sweeps import plots, report

# Per job: (name, status, {step: (mean KL, mean reward)}). Step 0 is the start: KL 0, the same reward for every run.
# beta=0.1 gets more reward for less KL than beta=0.5 at both checkpoints, and than beta=1.0's last one; beta=1.0's
# first checkpoint has the least KL of all, so it is on the frontier too. Job 3 has not finished: left out, though
# its points would beat every other.
RUNS = {
    "0": ("beta=0.1", "completed", {2: (2.0, 0.5), 4: (4.0, 0.8)}),
    "1": ("beta=0.5", "completed", {2: (3.0, 0.3), 4: (6.0, 0.6)}),
    "2": ("beta=1.0", "completed", {2: (1.0, 0.1), 4: (5.0, 0.75)}),
    "3": ("beta=2.0", "running", {2: (0.5, 0.9), 4: (0.6, 0.95)}),
}
SPREAD = (-0.1, -0.05, 0.05, 0.1)  # four prompts around each mean, so every checkpoint has a standard error


def _samples(points, scored=True):
    """samples.jsonl rows as the sampler writes them, steps 0, 2, 4 (`scored`: with the reward and KL columns)."""
    rows = []
    for step, (kl, reward) in {0: (0.0, 0.0), **points}.items():
        for i, d in enumerate(SPREAD):
            row = {
                "step": step,
                "index": i,
                "prompt": f"review {i}:",
                "policy": "a fine film",
                "reference": "a film",
                "length": 3,
                "repetition": 0.0,
                "judge_policy": reward + d,
                "judge_reference": 0.6,
                "win": float(reward + d > 0.6),
            }
            if scored:
                row.update(reward=reward + d, kl=kl + 10 * d if step else 0.0)
            rows.append(row)
    return rows


def _sweep(tmp_path, scored=True):
    """A sweep dir as run.py leaves it: sweep.json, and per job job.json, samples.jsonl and (once done) result.json
    with the last checkpoint's means as samples/ keys."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"name": "sentiment", "swept_keys": ["beta"], "objective": "auto"}))
    for job, (name, status, points) in RUNS.items():
        d = sweep / job
        d.mkdir()
        (d / "job.json").write_text(json.dumps({"name": name, "overrides": [name]}))
        rows = _samples(points, scored)
        (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if status == "completed":
            last = means_by_step(rows)[4]
            result = {
                "status": "completed",
                "steps": 4,
                "samples/judge": "sentiment",
                **{f"samples/{k}": v for k, v in last.items()},
            }
            (d / "result.json").write_text(json.dumps(result))
    return sweep


def test_frontier_names_the_run_with_more_reward_for_the_same_kl(tmp_path):
    front = quality.frontier(report.collect(str(_sweep(tmp_path))))
    assert (front["job"], front["name"], front["owned"]) == ("0", "beta=0.1", 2)
    # Low KL first; step 0 (KL 0, every run's) is left out, as are beta=0.5's checkpoints and beta=1.0's last one.
    assert [(p["job"], p["step"]) for p in front["points"]] == [("2", 2), ("0", 2), ("0", 4)]
    expected = [(1.0, 0.1), (2.0, 0.5), (4.0, 0.8)]
    assert [(p["kl"], p["reward"]) for p in front["points"]] == [pytest.approx(v) for v in expected]
    assert front["points"][0]["reward_se"] > 0 and front["points"][0]["kl_se"] > 0


def test_frontier_ties_go_to_the_run_with_the_higher_best_reward():
    def run(job, points):
        history = [{"step": 0, "kl": 0.0, "reward": 0.0}] + [{"step": s, "kl": k, "reward": r} for s, (k, r) in points]
        return {"job": job, "name": f"run {job}", "status": "completed", "sample_history": history}

    rows = [run("0", [(2, (2.0, 0.5)), (4, (4.0, 0.8))]), run("1", [(2, (1.0, 0.1)), (4, (5.0, 0.85))])]
    front = quality.frontier(rows)
    assert (front["job"], front["owned"], len(front["points"])) == ("1", 2, 4)  # two each; 0.85 beats 0.8
    assert quality.frontier([{**rows[0], "status": "failed"}]) is None
    unscored = {"job": "0", "status": "completed", "sample_history": [{"step": 2, "win_rate": 0.6}]}
    assert quality.frontier([unscored]) is None


def test_report_plots_the_frontier_and_names_the_best_run(tmp_path):
    sweep = _sweep(tmp_path)
    out = tmp_path / "out"
    report.write_report(str(sweep), str(out))
    width, height = png_size(out / "frontier.png")
    assert (width, height) == (1000, 650)
    assert png_size(out / "samples.png") == (1200, 450)  # win rate and repetition: reward and KL are frontier.png's
    text = (out / "report.md").read_text()
    assert "## Reward vs KL" in text and "![frontier.png](frontier.png)" in text
    assert "Best reward-KL frontier: **beta=0.1** (job 0): 2 of the 3 Pareto-optimal checkpoints." in text
    section = text.split("## Reward vs KL")[1]
    # Each value ± 1.96 standard errors over the four prompts (KL: 10 x SPREAD, SE 0.456).
    assert "| 0   | beta=0.1 | 4    | 4.00 ± 0.89 | 0.800 ± 0.089 |" in section
    assert "| reward " in text.split("## Leaderboard")[1] and "| KL " in text.split("## Leaderboard")[1]
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert float(rows[0]["samples/kl"]) == pytest.approx(4.0) and float(rows[0]["samples/reward_se"]) > 0
    console = report.sweep_summary(str(sweep), report.collect(str(sweep)))
    assert max(len(line) for line in console.splitlines()) <= report.CONSOLE_WIDTH, console
    last = console.splitlines()[-1]
    assert last == "Best reward-KL frontier: beta=0.1 (job 0): 2 of the 3 Pareto-optimal checkpoints."
    assert "| reward " in console  # the headline column after the objective (win rate) is the reward


def test_a_sweep_without_reward_or_kl_has_no_frontier(tmp_path):
    sweep = _sweep(tmp_path, scored=False)
    rows = report.collect(str(sweep))
    assert quality.frontier(rows) is None and not plots.plot_frontier(rows, str(tmp_path / "f.png"))
    out = tmp_path / "out"
    report.write_report(str(sweep), str(out))
    assert not (out / "frontier.png").exists()
    assert png_size(out / "samples.png") == (1200, 450)  # win rate and repetition only
    text = (out / "report.md").read_text()
    assert "Reward vs KL" not in text and "frontier" not in text and "| KL " not in text
    header = next(csv.reader(open(out / "summary.csv")))
    assert not {"samples/reward", "samples/reward_se", "samples/kl", "samples/kl_se"} & set(header)
    assert "samples/win_rate" in header and "eval/logratios/margins" in header  # the columns it always had
    console = report.console_summary(rows, ["beta"])
    assert "frontier" not in console and "| reward" not in console
