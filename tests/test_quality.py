"""The ranking rules on hand-made results: objectives, intervals, seed aggregation, and what counts as noise."""

import math

import pytest
from helpers import png_size

from dpo_lab import quality


def _run(job, beta, seed, win, se=0.05, margin=None):
    return {
        "job": job,
        "status": "completed",
        "beta": beta,
        "seed": seed,
        "samples/win_rate": win,
        "samples/win_rate_se": se,
        "eval/logratios/margins": 1.0,
        "eval/rewards/margins": margin or float(beta),
    }


def test_auto_objective_is_the_win_rate_where_every_run_has_one():
    assert quality.resolve("auto", [_run("0", "0.1", "0", 0.6)]) == "win_rate"
    assert quality.resolve("auto", [{"eval/logratios/margins": 1.0}]) == "logratio_margin"
    assert quality.resolve("accuracy", []) == "accuracy"
    assert quality.value(_run("0", "0.1", "0", 0.6), "auto") == 0.6
    assert math.isnan(quality.value({"status": "failed"}, "auto"))


def test_single_runs_rank_by_objective_with_their_own_interval():
    rows = [
        _run("0", "0.5", "0", 0.55, margin=2.0),
        _run("1", "0.1", "0", 0.80, margin=0.1),
        _run("2", "0.1", "0", 0.70, se=0.05),
        {"job": "3", "status": "failed"},
    ]
    ranked = quality.aggregate(rows, ["job"], "win_rate", ["samples/win_rate"])
    assert [a["job"] for a in ranked] == ["1", "2", "0"]  # not the reward margin's order (0 first)
    assert ranked[0]["samples/win_rate_ci"] == pytest.approx(1.96 * 0.05)
    # 0.80 vs 0.70: difference 0.10 < 1.96 * hypot(0.05, 0.05) = 0.139; 0.80 vs 0.55: 0.25 is beyond it.
    assert [a["vs_best"] for a in ranked] == ["best", "within noise", "worse"]


def test_seeds_fold_into_configurations_with_t_intervals():
    rows = [
        _run("0", "0.1", "0", 0.6),
        _run("1", "0.1", "1", 0.7),
        _run("2", "0.5", "0", 0.5),
        _run("3", "0.5", "1", 0.5),
    ]
    configs = quality.aggregate(rows, ["beta"], "win_rate", ["samples/win_rate"])
    assert [(c["beta"], c["n"], c["seeds"]) for c in configs] == [("0.1", 2, "0,1"), ("0.5", 2, "0,1")]
    assert configs[0]["samples/win_rate"] == pytest.approx(0.65)
    assert configs[0]["samples/win_rate_ci"] == pytest.approx(12.706 * 0.05)  # t(1 dof) x SE of the mean of 2
    assert configs[1]["samples/win_rate_ci"] == 0.0
    assert configs[1]["vs_best"] == "within noise"  # two seeds say little: 0.15 is inside 12.7 x 0.05
    assert quality.t95(None) == 1.96 and quality.t95(4) == 2.776


def test_report_says_when_even_the_best_run_is_not_above_the_starting_model():
    from dpo_lab.sweeps.report import _vs_baseline

    win = quality.OBJECTIVES["win_rate"]
    assert "includes 0.5" in _vs_baseline({"samples/win_rate": 0.5, "samples/win_rate_ci": 0.13}, win)
    assert _vs_baseline({"samples/win_rate": 0.72, "samples/win_rate_ci": 0.12}, win) == ""
    assert (
        _vs_baseline(
            {"eval/logratios/margins": 0.1, "eval/logratios/margins_ci": 1.0}, quality.OBJECTIVES["logratio_margin"]
        )
        == ""
    )


def test_console_summary_fits_100_columns_and_gives_the_seed_verdict():
    from dpo_lab.sweeps.report import CONSOLE_WIDTH, console_summary

    rows = [
        _run("0", "0.1", "0", 0.6),
        _run("1", "0.1", "1", 0.7),
        _run("2", "0.5", "0", 0.5),
        _run("3", "0.5", "1", 0.5),
    ]
    rows += [{"job": "4", "status": "interrupted", "beta": "1.0", "seed": "0"}]
    out = console_summary(rows, ["beta", "seed"])
    assert max(len(line) for line in out.splitlines()) <= CONSOLE_WIDTH, out
    assert "| 4   | 1.0,0     | interrupted |" in out  # a job that did not complete shows its status
    board, configs = out.split("Configurations (seeds aggregated):")
    assert "| 1   | 0.1,1     | ok          | 0.700 ± 0.098 | best    |" in board
    assert "| degraded |" in board and "time" not in board  # the last column is left out rather than overflow
    assert (
        "| 0.1  | 2     | 0.65 ± 0.64 | best    |" in configs and "| 0.5  | 2     | 0.5 ± 0     | ≈ best  |" in configs
    )
    assert "Best: beta=0.1 (win_rate 0.65 ± 0.64); 1 other(s) within noise of it." in configs
    alone = console_summary(rows[:4], ["beta"])  # no seeds swept: no configurations, the verdict is about jobs
    assert "Configurations" not in alone and "Best: " in alone and "status" not in alone


def test_console_rounds_a_value_to_its_interval():
    from dpo_lab.quality import rounded_pm

    pm = lambda v, ci: rounded_pm({"m": v, "m_ci": ci}, "m")  # noqa: E731
    assert pm(0.71875, 0.1234) == "0.72 ± 0.12" and pm(3.0712, 0.316) == "3.07 ± 0.32"
    assert pm(0.01334, 0.004) == "0.0133 ± 0.0040" and pm(3.2, 12.7) == "3 ± 13"
    assert pm(1.0, 0.0) == "1 ± 0" and pm(0.5, None) == "0.5" and pm(None, None) == ""


def test_heatmap_lays_out_any_two_swept_keys_with_seeds_averaged(tmp_path):
    from dpo_lab.sweeps.plots import heatmap_keys, plot_heatmap

    rows, job = [], 0
    for lr in ("1e-4", "4e-4", "1e-3"):
        for epochs in ("1", "2"):
            for seed in ("0", "1"):
                win = 0.55 + (0.1 if lr == "4e-4" else 0) + (0.02 if seed == "1" else 0)
                rows.append({**_run(str(job), "0.1", seed, win), "lr": lr, "epochs": epochs})
                job += 1
    rows[-1]["status"] = "failed"
    assert heatmap_keys(rows, ["lr", "epochs", "seed"]) == ["lr", "epochs"]
    assert plot_heatmap(rows, str(tmp_path / "two.png"), "win_rate", ["lr", "epochs", "seed"])
    width, height = png_size(tmp_path / "two.png")
    assert 500 < width < 1000 and 300 < height < 700
    assert plot_heatmap(rows, str(tmp_path / "one.png"), "win_rate", ["lr", "seed"])  # one key: a single column
    assert not plot_heatmap(rows, str(tmp_path / "none.png"), "win_rate", ["seed"])  # nothing but seeds
    assert not (tmp_path / "none.png").exists()
