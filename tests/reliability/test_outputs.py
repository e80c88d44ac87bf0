"""Outputs never overwrite each other (issue 25): a rerun's --out, two sweeps with one basename, a name that would
leave its directory, a mistyped report path, a damaged result.json, and the advice of a refused relaunch."""

import csv
import json

import pytest
from helpers import ROOT, TINY, leet_records, run_dpo_lab, run_py, train_job
from omegaconf import OmegaConf
from test_mistakes import assert_refused  # tests/reliability/ is on sys.path, as for every test file here

from dpo_lab.config import Config, folder_name_problems
from dpo_lab.files import unreadable
from dpo_lab.sweeps.sweep import sweep_name


def _snapshot(folder, skip=()):
    """Every file under `folder` with its bytes, but those under a name in `skip`: equal snapshots mean nothing in it
    changed."""
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and not set(skip) & set(p.parts)}


# --- pure functions (fast tier) ---


def test_sweep_name_is_unique_per_sweep_dir_and_stable_for_a_relaunch(tmp_path, monkeypatch):
    a, b = sweep_name("dpo", str(tmp_path / "a" / "sweep")), sweep_name("dpo", str(tmp_path / "b" / "sweep"))
    assert a != b and a.startswith("dpo-sweep-") and b.startswith("dpo-sweep-")
    monkeypatch.chdir(tmp_path)  # the same dir however it is spelt: relative, with ./ or a trailing slash
    assert {sweep_name("dpo", p) for p in ("a/sweep", "./a/sweep/", str(tmp_path / "a" / "sweep"))} == {a}


@pytest.mark.parametrize("name", ["../escaped", "a/b", "", "..", ".", "a\\b"])
def test_a_name_that_is_not_one_folder_is_a_problem(name):
    cfg = OmegaConf.structured(Config)
    cfg.name = name
    problems = Config.problems(cfg)
    assert len(problems) == 1 and problems[0].startswith(f"name={name!r} names the run's folder"), problems


def test_a_plain_name_and_project_pass_and_a_bad_project_is_a_problem():
    cfg = OmegaConf.structured(Config)
    cfg.name = "loss=ipo,beta=0.5"  # what a run name looks like
    assert folder_name_problems(cfg) == []
    cfg.wandb.project = "team/dpo"
    assert folder_name_problems(cfg) == [
        "wandb.project='team/dpo' is not a wandb project name: 1 to 128 characters, "
        "none of / \\ # ? % :. Use e.g. wandb.project=dpo-lab."
    ]


def test_unreadable_says_why_a_json_file_does_not_read(tmp_path):
    path = tmp_path / "result.json"
    assert unreadable(str(path)) is None  # missing: not damage
    path.write_text('{"status": "completed"}')
    assert unreadable(str(path)) is None
    path.write_text('{"status": "compl')
    assert unreadable(str(path)).startswith("cut off or not JSON: Unterminated string")
    path.write_text("")
    assert unreadable(str(path)) == "empty"
    path.write_text("[1]")
    assert unreadable(str(path)) == "a JSON list, not an object"


def test_report_refuses_what_is_not_a_sweep_dir(tmp_path):
    from dpo_lab.errors import UserError
    from dpo_lab.sweeps.report import write_report

    with pytest.raises(UserError, match="does not exist, so there is no sweep to report on"):
        write_report(str(tmp_path / "typo"))
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "job.json").write_text("{}")
    with pytest.raises(
        UserError, match=f"is not a sweep directory.*It is one job's directory; its sweep is {tmp_path}"
    ):
        write_report(str(tmp_path / "job"))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["job", "job.json"]  # no lock file, no report


# --- commands ---


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two completed tiny jobs with different betas: the rerun's original, and another job's dir."""
    root = tmp_path_factory.mktemp("jobs")
    for name, beta in (("job0", 0.1), ("job1", 0.5)):
        result = train_job(root / name, ["wandb.mode=disabled", "max_steps=2", f"beta={beta}"])
        assert result["status"] == "completed", result.get("error")
    return root


@pytest.mark.e2e
def test_rerun_out_into_another_jobs_dir_or_a_full_dir_is_refused_and_changes_nothing(trained, tmp_path):
    other = trained / "job1"
    before = _snapshot(other)
    proc = run_dpo_lab("rerun", trained / "job0", "lr=1e-3", "--out", other, cwd=ROOT)
    assert_refused(
        proc,
        f'{other} already holds the job "test" (completed) with a different config',
        "nothing in it was changed",
        "Give the rerun another --out DIR, or leave --out out (the rerun then goes to JOB_DIR/reruns/<time>/).",
    )
    assert proc.returncode == 2 and _snapshot(other) == before

    full = tmp_path / "notes"
    full.mkdir()
    (full / "notes.txt").write_text("mine\n")
    proc = run_dpo_lab("rerun", trained / "job0", "--out", full, cwd=ROOT)
    assert_refused(proc, f"--out {full} is not empty (notes.txt) and holds no dpo-lab job", "another --out DIR")
    assert proc.returncode == 2 and _snapshot(full) == {full / "notes.txt": b"mine\n"}


@pytest.mark.e2e
def test_rerun_out_into_an_empty_dir_runs_and_again_finds_it_done(trained, tmp_path):
    out = tmp_path / "again"
    out.mkdir()
    proc = run_dpo_lab("rerun", trained / "job0", "--out", out, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:]
    done = json.loads((out / "result.json").read_text())
    assert done["status"] == "completed" and done["steps"] == 2
    before = _snapshot(out)
    again = run_dpo_lab("rerun", trained / "job0", "--out", out, cwd=ROOT)  # this very rerun: done, not run again
    assert again.returncode == 0 and f"{out} already holds this rerun, completed" in again.stdout, again.stdout[-3000:]
    assert _snapshot(out) == before


@pytest.mark.e2e
def test_two_sweeps_with_one_basename_get_their_own_report_and_wandb_group(tmp_path):
    results, names = tmp_path / "results", []
    for parent in ("a", "b"):
        sweep = tmp_path / parent / "sweep"
        run_py(
            "-m", TINY, "max_steps=2", "beta=0.1", "isolate=never", f"hydra.sweep.dir={sweep}",
            f"results_dir={results}", cwd=tmp_path, check=True,
        )  # fmt: skip
        recorded = json.loads((sweep / "sweep.json").read_text())
        assert recorded["name"] == sweep_name("dpo", str(sweep)) and recorded["results_dir"] == str(
            results / recorded["name"]
        )
        assert json.loads((sweep / "0" / "job.json").read_text())["group"] == recorded["name"]
        run = next(r["run"] for r in leet_records(next((sweep / "0" / "wandb").glob("offline-run-*"))) if "run" in r)
        assert run["run_group"] == recorded["name"]
        names.append(recorded["name"])
    assert names[0] != names[1]
    assert sorted(p.name for p in results.iterdir()) == sorted(names)
    for name, parent in zip(names, ("a", "b")):  # each report is its own sweep's
        assert f"`{tmp_path / parent / 'sweep'}`: 1/1 jobs completed" in (results / name / "report.md").read_text()


@pytest.mark.e2e
@pytest.mark.parametrize("mode, name", [("single", "../escaped"), ("sweep", "a/b")])
def test_a_name_that_leaves_its_folder_is_refused_at_preflight(tmp_path, mode, name):
    sweep = ["-m", "beta=0.1,0.2"] if mode == "sweep" else []
    cwd = tmp_path / "work"
    cwd.mkdir()
    proc = run_py(*sweep, TINY, "wandb.mode=disabled", f"name={name}", cwd=cwd, timeout=300)
    assert_refused(proc, f"name={name!r} names the run's folder", "Use e.g. name=my_sweep")
    assert proc.returncode == 2 and list(tmp_path.rglob("*")) == [cwd]  # nothing written, inside or outside


@pytest.mark.e2e
def test_report_on_a_missing_path_is_refused_and_creates_nothing(tmp_path):
    proc = run_dpo_lab("report", tmp_path / "multirun" / "typo", cwd=tmp_path)
    assert_refused(proc, f"{tmp_path / 'multirun' / 'typo'} does not exist, so there is no sweep to report on")
    assert proc.returncode == 2 and list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_report_names_a_job_whose_result_json_is_cut_off(tmp_path):
    sweep, out = tmp_path / "sweep", tmp_path / "report"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"name": "t", "swept_keys": ["beta"], "objective": "auto"}))
    for job, result in (("0", '{"status": "completed", "eval/logratios/margins": 0.5}'), ("1", '{"status": "comp')):
        (sweep / job).mkdir()
        (sweep / job / "job.json").write_text(json.dumps({"name": f"beta=0.{job}", "overrides": [f"beta=0.{job}"]}))
        (sweep / job / "result.json").write_text(result)
    proc = run_dpo_lab("report", sweep, "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    why = "result.json cannot be read (cut off or not JSON: Unterminated string"
    assert f"Could not read: job 1: {why}" in proc.stdout and "| damaged " in proc.stdout
    assert f"## Damaged job files\n\n- job 1: {why}" in (out / "report.md").read_text()
    rows = {r["job"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows["0"]["status"] == "completed" and rows["1"]["status"] == "damaged"
    assert rows["1"]["error"].startswith(f"damaged: {why}")


@pytest.mark.e2e
def test_a_single_run_retried_into_its_dir_with_another_config_is_told_hydra_run_dir(tmp_path):
    job = tmp_path / "job"
    first = run_py(  # diverges at step 3 (tests/reliability/test_faults.py): a run that failed in its job
        TINY, "wandb.mode=disabled", "lr=1e30", "max_steps=4", f"hydra.run.dir={job}", cwd=tmp_path, timeout=300
    )  # fmt: skip
    assert first.returncode == 1 and json.loads((job / "result.json").read_text())["status"] == "diverged"
    hydra = ("train.log", ".hydra")  # Hydra logs and writes .hydra/ there before the job starts
    before = _snapshot(job, hydra)
    again = run_py(TINY, "wandb.mode=disabled", f"hydra.run.dir={job}", cwd=tmp_path, timeout=300)
    assert_refused(
        again, f"{job} already holds the job", "(diverged) with a different config", "hydra.run.dir=outputs/NEW_NAME"
    )
    assert again.returncode == 2 and "hydra.sweep.dir" not in again.stdout
    assert _snapshot(job, hydra) == before
