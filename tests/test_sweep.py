"""Real multiruns in a temporary directory: one job dir and one offline wandb run per combination."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT, TINY, WANDB, leet_records, leet_summary, png_size, run_py

pytestmark = pytest.mark.e2e  # every test runs run.py


# A few checkpoint samples judged by the toy task score: the sweep ranks by win rate, as the default job does.
JUDGED = ["samples.count=4", "samples.max_new_tokens=8", "samples.judge=task"]


def _console_table(stdout: str) -> list:
    """The lines of the results a sweep prints at its end: from `Ranked by` to the wandb commands."""
    lines = stdout.split("\nRanked by ", 1)[1].split("\n  browse all runs:")[0].splitlines()
    assert len(lines) > 3, stdout[-3000:]
    return lines


def test_loss_beta_sweep_gives_four_separate_wandb_runs_in_one_group(tmp_path):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "DPO_LAB_CACHE": str(tmp_path / "cache")}  # empty: job 0 builds the toy model
    proc = run_py(
        "-m",
        "loss=sigmoid,ipo",
        "beta=0.1,0.5",
        TINY,
        *JUDGED,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        env=env,
        check=True,
    )
    assert "4/4 jobs completed" in proc.stdout and "| ipo,0.5 " in proc.stdout
    # The sweep says once what its first job builds; the other jobs find it built.
    assert proc.stdout.count("First run on this machine") == 1 and "building the toy data and model" in proc.stdout
    # The printed table fits a terminal (issue 18: it was ~215 columns); report.md keeps every column.
    table = _console_table(proc.stdout)
    assert table[0].startswith("win_rate") and table[1].startswith("| job | loss,beta ")
    assert max(len(line) for line in table) <= 100, "\n".join(table)
    assert "Best: loss=" in "\n".join(table)
    assert png_size(next(tmp_path.glob("results/*/samples.png"))) == (1200, 900)  # four sample metrics, 2 x 2

    jobs = sorted(p.parent for p in sweep.glob("*/job.json"))
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    run_ids, groups, names = set(), set(), set()
    for job in jobs:
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"{job} should hold exactly one wandb run"
        records = leet_records(runs[0])
        run = next(r["run"] for r in records if r["type"] == "run")
        run_ids.add(run["run_id"])
        groups.add(run["run_group"])
        names.add(run["display_name"])
        summary = leet_summary(runs[0])
        assert summary["state"] == "finished"
        # the full resolved config plus the chosen group options, so dashboards can group by them
        config = summary["config"]
        assert config["choices"]["loss"] in ("sigmoid", "ipo") and config["beta"] in (0.1, 0.5)
        assert config["loss"]["loss_type"] == [config["choices"]["loss"]]
        margins = [
            r["history"]["item"]["eval/rewards/margins"]
            for r in records
            if r["type"] == "history" and "eval/rewards/margins" in r["history"]["item"]
        ]
        assert len(margins) >= 2  # step 0 and the end, at least
        assert "max" in summary["summary"]["eval/rewards/margins"]  # define_metric summary
    assert len(run_ids) == 4 and len(groups) == 1
    assert names == {"loss=sigmoid,beta=0.1", "loss=sigmoid,beta=0.5", "loss=ipo,beta=0.1", "loss=ipo,beta=0.5"}

    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert [r["status"] for r in rows] == ["completed"] * 4

    # The sweep ends with one command that browses and one that uploads all its runs; both see all four, by name:
    # wandb leet lists the folders of <sweep>/wandb/ by their names, offline-run-<time>-<run name>.
    view = sweep / "wandb"
    assert f"wandb leet {view}" in proc.stdout and f"wandb sync {view}" in proc.stdout
    folders = {p.name.split("-", 3)[3]: p for p in view.iterdir()}
    assert set(folders) == names and all(p.name.startswith("offline-run-") for p in folders.values())
    logs = {next((j / "wandb").glob("offline-run-*/run-*.wandb")).resolve() for j in jobs}
    assert {(p / f"run-{name}.wandb").resolve() for name, p in folders.items()} == logs
    for name, folder in folders.items():  # what leet reads through the folder: the run of that name
        assert next(r["run"] for r in leet_records(folder) if r["type"] == "run")["display_name"] == name
        assert (folder / "files" / "output.log").is_file()  # the files wandb sync uploads beside the log
    dry = subprocess.run([*WANDB, "sync", "--dry-run", str(view)], capture_output=True, text=True, timeout=120)
    assert "Would sync 4 run(s)" in dry.stdout + dry.stderr, dry.stdout + dry.stderr


def test_a_failing_job_does_not_stop_the_sweep(tmp_path):
    # max_length=4 passes preflight but leaves no pair to train on once prompts are tokenized: the job fails.
    sweep = tmp_path / "sweep"
    proc = run_py(
        "-m", TINY, "trainer.max_length=4,256", "wandb.mode=disabled", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "1/2 jobs completed" in proc.stdout
    rows = {r["name"]: r for r in csv.DictReader(open(sweep / "summary.csv"))}
    assert rows["trainer.max_length=4"]["status"] == "failed"
    assert "every prompt is at least trainer.max_length=4 tokens" in rows["trainer.max_length=4"]["error"]
    assert rows["trainer.max_length=256"]["status"] == "completed"


def test_preflight_rejects_a_bad_job_before_any_training(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_py(
        "-m",
        TINY,
        "loss=robust",
        "loss.label_smoothing=0.1,0.7",
        "beta=0.1,0.2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "2 of 4 jobs would fail; nothing was started" in proc.stdout
    assert "loss.label_smoothing=0.7 beta=0.1" in proc.stdout and "out of range for the robust loss" in proc.stdout
    assert not sweep.exists() or not any(p.is_dir() for p in sweep.iterdir())


def test_named_sweep_file_and_preflight_only(tmp_path):
    proc = run_py("-m", "+sweep=loss_beta_grid", TINY, "preflight_only=true", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "all 4 jobs check out" in proc.stdout and "#3: python run.py loss=ipo beta=0.5" in proc.stdout
    assert not [line for line in proc.stdout.splitlines() if line.strip().startswith("#") and "preflight_only" in line]
    assert not (tmp_path / "multirun").exists() or not list((tmp_path / "multirun").rglob("result.json"))


def test_killed_sweep_resumes_where_it_stopped(tmp_path):
    """SIGKILL the whole sweep mid-job, relaunch: the finished job is skipped, the interrupted one resumes from its
    checkpoint and continues the same (offline) wandb run."""
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        TINY,
        "seed=1,2",
        "max_steps=80",
        "trainer.save_steps=5",
        "trainer.eval_steps=80",
        "trainer.logging_steps=10",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while not list((sweep / "1" / "checkpoints").glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None and time.time() < deadline, "sweep ended before job 1 saved a checkpoint"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = json.loads((sweep / "0" / "result.json").read_text())
    assert first["status"] == "completed"
    assert json.loads((sweep / "1" / "result.json").read_text())["status"] == "running"  # it never got to finish
    run_id = json.loads((sweep / "1" / "job.json").read_text())["wandb_id"]

    again = run_py(*args, cwd=tmp_path, check=True)
    assert "2/2 jobs completed" in again.stdout
    assert json.loads((sweep / "0" / "result.json").read_text()) == first  # skipped, untouched
    log = (sweep / "1" / "train.log").read_text()
    assert "Resuming from" in log and "checkpoint-" in log
    second = json.loads((sweep / "1" / "result.json").read_text())
    assert second["status"] == "completed" and second["steps"] == 80 and second["wandb_run_id"] == run_id
    assert {p.name.rsplit("-", 1)[-1] for p in (sweep / "1" / "wandb").glob("offline-run-*")} == {run_id}


def _ranked_jobs(report_md: str) -> list:
    """Job numbers in the order of report.md's leaderboard."""
    board = report_md.split("## Leaderboard", 1)[1].split("\n\n")[1]
    return [line.split("|")[1].strip() for line in board.splitlines()[2:]]


def test_report_matches_logged_metrics(tmp_path):
    sweep = tmp_path / "sweep"
    run_py(
        "-m",
        "+sweep=loss_beta_grid",
        TINY,
        "wandb.mode=disabled",
        f"hydra.sweep.dir={sweep}",
        "results_dir=results",
        cwd=tmp_path,
        check=True,
    )
    from dpo_lab.sweeps.sweep import sweep_name

    out = tmp_path / "results" / sweep_name("loss_beta_grid", str(sweep))
    assert not list(sweep.rglob("run.log")) and all((sweep / str(i) / "train.log").read_text() for i in range(4))
    assert {"summary.csv", "report.md", "eval.png", "heatmap.png"} <= {p.name for p in out.iterdir()}
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [(r["loss"], r["beta"]) for r in rows] == [
        ("sigmoid", "0.1"),
        ("sigmoid", "0.5"),
        ("ipo", "0.1"),
        ("ipo", "0.5"),
    ]
    for row in rows:
        result = json.loads((sweep / row["job"] / "result.json").read_text())
        assert float(row["eval/rewards/margins"]) == pytest.approx(result["eval/rewards/margins"])
        assert float(row["best_eval/rewards/margins"]) == pytest.approx(
            max(h["eval/rewards/margins"] for h in result["eval_history"])
        )
        # The β-free margin is TRL's reward margin over β; it comes with standard errors, as does the accuracy.
        assert float(row["eval/logratios/margins"]) == pytest.approx(
            result["eval/rewards/margins"] / float(row["beta"])
        )
        assert float(row["eval/logratios/margins_se"]) >= 0 and float(row["eval/rewards/accuracies_se"]) >= 0
    report = (out / "report.md").read_text()
    assert "Ranked by **logratio_margin**" in report  # no samples in experiment=tiny, so no judge
    by_logratio = sorted(rows, key=lambda r: -float(r["eval/logratios/margins"]))
    assert _ranked_jobs(report) == [r["job"] for r in by_logratio]

    # Regenerated on demand, also for a partial sweep (a job dir without a result).
    (sweep / "3" / "result.json").unlink()
    again = subprocess.run(
        [sys.executable, "-m", "dpo_lab", "report", str(sweep), "--out", str(tmp_path / "r2")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "pending" in again.stdout and (tmp_path / "r2" / "report.md").is_file()


def test_default_ranking_is_not_the_reward_margin_order(tmp_path):
    """A constructed disagreement: with Adam the log-ratio gap after 4 steps follows lr, not beta, so the beta=0.5 runs
    lead by reward margin (beta x gap) while the lr=4e-4 runs lead by the gap itself. The leaderboard follows the
    gap (the objective), and says so."""
    sweep = tmp_path / "sweep"
    run_py(
        "-m",
        TINY,
        "beta=0.1,0.5",
        "lr=1e-4,4e-4",
        "wandb.mode=disabled",
        f"hydra.sweep.dir={sweep}",
        "results_dir=results",
        cwd=tmp_path,
        check=True,
    )
    results = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/result.json")}
    by = lambda key: sorted(results, key=lambda j: -results[j][key])  # noqa: E731
    assert by("eval/logratios/margins") != by("eval/rewards/margins")
    report = next((tmp_path / "results").glob("*/report.md")).read_text()
    assert _ranked_jobs(report) == by("eval/logratios/margins")


def test_seed_replicates_aggregate_into_configurations(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_py(
        "-m",
        TINY,
        "beta=0.1,0.5",
        "seed=0,1",
        "wandb.mode=disabled",
        f"hydra.sweep.dir={sweep}",
        "results_dir=results",
        cwd=tmp_path,
        check=True,
    )
    out = next((tmp_path / "results").glob("*/"))
    configs = list(csv.DictReader(open(out / "summary_by_config.csv")))
    assert sorted(c["beta"] for c in configs) == ["0.1", "0.5"] and all(c["n"] == "2" for c in configs)
    for c in configs:
        jobs = c["jobs"].split(",")
        values = [json.loads((sweep / j / "result.json").read_text())["eval/logratios/margins"] for j in jobs]
        assert float(c["eval/logratios/margins"]) == pytest.approx(sum(values) / 2)
        # Two seeds: t with 1 degree of freedom, 12.706 x the standard error of the mean.
        assert float(c["eval/logratios/margins_ci"]) == pytest.approx(12.706 * abs(values[0] - values[1]) / 2, rel=1e-3)
    assert configs[0]["vs_best"] == "best" and configs[1]["vs_best"] in ("within noise", "worse")
    report = (out / "report.md").read_text()
    assert "## Configurations (seeds aggregated)" in report and " ± " in report
    # The console gives the same verdict, on configurations (issue 18: it printed only the per-job table).
    table = "\n".join(_console_table(proc.stdout))
    assert "Configurations (seeds aggregated):\n| beta | seeds |" in table
    verdict = next(line for line in report.splitlines() if line.startswith("**Best: "))
    assert verdict.replace("**", "").split(";")[0] in table and f"Best: beta={configs[0]['beta']} " in table


def test_wandb_sweep_file_drives_run_py(tmp_path):
    """The wandb sweep file's parameters are valid run.py overrides (the agent passes them as key=value)."""
    import yaml

    spec = yaml.safe_load((ROOT / "wandb_sweeps" / "loss_beta.yaml").read_text())
    assert spec["program"] == "run.py" and "${args_no_hyphens}" in spec["command"]
    grid = [f"{k}={','.join(map(str, v['values']))}" for k, v in spec["parameters"].items()]
    proc = run_py("-m", *grid, TINY, "preflight_only=true", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and "all 4 jobs check out" in proc.stdout, proc.stdout[-2000:]


def test_relaunch_skips_a_job_saved_before_a_config_key_existed(tmp_path):
    """A job dir whose config.yaml predates a key (here `sentiment`, added with data=sentiment) holds the same job:
    relaunching the sweep skips it as completed instead of refusing the dir as another config."""
    import yaml

    sweep = tmp_path / "sweep"
    args = ["-m", TINY, "seed=1", f"hydra.sweep.dir={sweep}"]
    run_py(*args, cwd=tmp_path, check=True)
    saved = sweep / "0" / "config.yaml"
    old = yaml.safe_load(saved.read_text())
    del old["sentiment"]
    saved.write_text(yaml.safe_dump(old))
    first = json.loads((sweep / "0" / "result.json").read_text())
    again = run_py(*args, cwd=tmp_path, check=True)
    assert "1/1 jobs completed" in again.stdout
    assert json.loads((sweep / "0" / "result.json").read_text()) == first  # skipped, untouched
    old["seed"] = 2  # a config that really differs is still refused
    saved.write_text(yaml.safe_dump(old))
    refused = run_py(*args, cwd=tmp_path)
    assert refused.returncode == 2 and "different config" in refused.stdout
