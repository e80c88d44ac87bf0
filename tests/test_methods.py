"""Preference methods (issue 20): DPO's trainer arguments stay what they were before methods existed."""

import json

import pytest
from helpers import ROOT, TINY, compose_cfg

GOLDEN = ROOT / "tests" / "data" / "dpo_kwargs_golden.json"
CASES = {
    "tiny": [TINY],
    "ipo": [TINY, "loss=ipo"],
    "mpo": [TINY, "loss=mpo"],
    "lora": [TINY, "peft=lora"],
    "seed_run": ["experiment=seed_run"],
    "samples_keep_best": [TINY, "samples.count=4", "samples.keep_best=true"],
}


def dpo_kwargs(overrides) -> dict:
    """The DPOConfig fields a job of these overrides gets on the CPU, without paths or version-named keys."""
    from dpo_lab.precision import resolve
    from dpo_lab.memory import fixed_batch
    from dpo_lab.trainer_args import trainer_kwargs

    cfg = compose_cfg(overrides)
    kw = trainer_kwargs(cfg, "/job", "cpu", resolve("auto", "cpu"), False, fixed_batch(cfg.trainer))
    kw["checkpointing"] = kw.pop("activation_checkpointing", kw.pop("gradient_checkpointing", None))
    return json.loads(json.dumps(kw, sort_keys=True, default=str))


@pytest.mark.smoke
@pytest.mark.parametrize("case", sorted(CASES))
def test_dpo_trainer_arguments_are_unchanged(case):
    assert dpo_kwargs(CASES[case]) == json.loads(GOLDEN.read_text())[case]


if __name__ == "__main__":  # python tests/test_methods.py: rewrite the golden file (only for an intended change)
    GOLDEN.write_text(json.dumps({c: dpo_kwargs(o) for c, o in sorted(CASES.items())}, indent=1, sort_keys=True) + "\n")


@pytest.mark.e2e
def test_simpo_trains_without_a_reference_and_samples_against_the_starting_model(tmp_path):
    from helpers import train_job

    result = train_job(
        tmp_path / "job", ["method=simpo", "samples.count=2", "samples.judge=task", "samples.max_new_tokens=16"]
    )
    assert result["status"] == "completed"
    assert (
        result["reference_logps"] == "none" and result["reference_batches"] == 0 and result["reference_dtype"] is None
    )
    assert isinstance(result["eval/logps/margins"], float) and "eval/logratios/margins" not in result  # β-free, SimPO's
    rows = [json.loads(line) for line in (tmp_path / "job" / "samples.jsonl").read_text().splitlines()]
    start = [r for r in rows if r["step"] == 0]
    assert start and all(r["kl"] == 0 and r["win"] == 0.5 for r in start)  # the starting model, loaded for the samples
    assert result["method_settings"] == "beta=2.0 loss=simpo simpo_gamma=1.0"  # the report's settings column
    assert (
        result["train_tokens"] > 0
        and result["train_tokens"] == _checkpoint_state(tmp_path / "job")["num_input_tokens_seen"]
    )
    config = (tmp_path / "job" / "config.yaml").read_text()
    assert "name: simpo" in config and "simpo_gamma: 1.0" in config and "beta: 2.0" in config


@pytest.mark.e2e
@pytest.mark.parametrize(
    "method, settings",
    [("cpo", "beta=0.1 loss=sigmoid cpo_alpha=1.0"), ("alphapo", "beta=2.0 loss=alphapo alpha=0.25 simpo_gamma=1.0")],
)
def test_cpo_and_alphapo_train_on_the_default_without_a_reference(method, settings, tmp_path):
    from helpers import train_job

    result = train_job(tmp_path / "job", [f"method={method}"])
    assert result["status"] == "completed" and result["reference_logps"] == "none" and result["reference_batches"] == 0
    assert result["method_settings"] == settings and isinstance(result["eval/logps/margins"], float)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method=simpo", "method.simpo_gamma=-1"], "method.simpo_gamma=-1.0 must be >= 0"),
        (["method=simpo", "loss=ipo"], "method=simpo has one loss"),
        (["method.name=nope"], "method.name='nope': use one of dpo, simpo"),
    ],
)
def test_a_wrong_method_setting_is_refused_at_preflight(overrides, message):
    from dpo_lab.errors import UserError
    from dpo_lab.validate import validate

    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate(compose_cfg([TINY, *overrides]))


@pytest.mark.e2e
def test_orpo_trains_with_lora_and_logs_its_odds_ratio(tmp_path):
    from helpers import train_job

    result = train_job(tmp_path / "job", ["method=orpo", "peft=lora", "lr=1e-3"])
    assert result["status"] == "completed" and result["reference_logps"] == "none"
    assert isinstance(result["eval/log_odds_ratio"], float) and isinstance(result["eval/logps/margins"], float)


def test_a_setting_of_another_method_is_refused():
    from dpo_lab.errors import UserError
    from dpo_lab.validate import validate

    with pytest.raises(UserError, match="method.simpo_gamma=1.0 is not a setting of method=orpo"):
        validate(compose_cfg([TINY, "method=orpo", "method.simpo_gamma=1.0"]))


@pytest.mark.e2e
def test_kto_trains_on_pairs_as_desirable_and_undesirable_rows(tmp_path):
    from helpers import train_job

    result = train_job(tmp_path / "job", ["method=kto"])
    assert result["status"] == "completed" and result["reference_batches"] > 0  # a reference model: precomputed
    assert isinstance(result["eval/kl"], float) and isinstance(result["eval/logratios/margins"], float)
    assert "eval/rewards/accuracies" not in result  # KTO's rows are unpaired: no pair to rank
    assert result["train_tokens"] == _trl_num_tokens(tmp_path / "job")  # our count is TRL's where TRL counts
    from dpo_lab.methods.kto import rows

    pairs = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(8)]
    out = rows(pairs, seed=1)
    assert sorted((r["completion"], r["label"]) for r in out) == sorted(
        [(f"c{i}", True) for i in range(8)] + [(f"r{i}", False) for i in range(8)]
    )
    assert out == rows(pairs, seed=1) and [r["label"] for r in out] != [True, False] * 8  # seeded shuffle


def test_kto_refuses_a_per_device_batch_of_one():
    from dpo_lab.errors import UserError
    from dpo_lab.validate import validate

    with pytest.raises(UserError, match="per_device_train_batch_size=1: KTO estimates its KL term"):
        validate(compose_cfg([TINY, "method=kto", "trainer.per_device_train_batch_size=1"]))


@pytest.mark.slow
def test_a_sweep_over_methods_ranks_them_on_one_objective(tmp_path):
    from helpers import run_py

    proc = run_py(
        "-m",
        TINY,
        "method=dpo,simpo,orpo,kto",
        "samples.count=4",
        "samples.max_new_tokens=8",
        "samples.judge=task",
        f"hydra.sweep.dir={tmp_path}/sweep",
        f"results_dir={tmp_path}/results",
        cwd=tmp_path,
        check=True,
    )
    assert "4/4 jobs completed" in proc.stdout and "Ranked by win_rate" in proc.stdout
    results = [json.loads((tmp_path / "sweep" / str(j) / "result.json").read_text()) for j in range(4)]
    # DPO's reference log-probs may come from the session's cache (an earlier test computed the same ones)
    assert [r["reference_logps"] for r in results][1:] == ["none", "none", "computed"]
    assert results[0]["reference_logps"] in ("computed", "reused")
    assert all(isinstance(r["samples/win_rate"], float) for r in results)
    dpo, simpo, orpo, kto = results  # the cost columns: the same pairs, so about the same tokens; KTO a row per answer
    assert simpo["reference_batches"] == orpo["reference_batches"] == 0 < kto["reference_batches"]
    assert (
        simpo["train_tokens"] == pytest.approx(dpo["train_tokens"], rel=0.05)
        and kto["train_tokens"] < dpo["train_tokens"]
    )
    report = next((tmp_path / "results").glob("*/report.md")).read_text()
    assert "| reference batches |" in report and "beta=2.0 loss=simpo simpo_gamma=1.0" in report


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["simpo", "cpo", "alphapo", "orpo", "kto"])
def test_a_method_trains_on_a_user_json_file_and_reruns_from_its_job_dir_and_its_wandb_config(method, tmp_path):
    import subprocess
    import sys

    from helpers import leet_records, leet_summary, tiny_toy, train_job

    from dpo_lab.files import read_json
    from dpo_lab.rerun import write_logged_config

    toy = tiny_toy()  # the toy pairs as the user's own JSON files
    for split in ("train", "eval"):
        (tmp_path / f"{split}.json").write_text(open(toy[f"{split}_file"], encoding="utf-8").read(), encoding="utf-8")
    user_data = ["data=json", f"data.train_file={tmp_path / 'train.json'}", f"data.eval_file={tmp_path / 'eval.json'}"]
    original = train_job(tmp_path / "job", [f"method={method}", *user_data])
    assert original["status"] == "completed", original.get("error")
    run = next(r["run"] for r in leet_records(original["wandb_dir"]) if r["type"] == "run")
    assert run["job_type"] == method and f"method:{method}" in run["tags"], run
    write_logged_config(leet_summary(original["wandb_dir"])["config"], str(tmp_path / "from-wandb"))
    for source in ("job", "from-wandb"):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "dpo_lab",
                "rerun",
                str(tmp_path / source),
                "wandb.mode=disabled",
                "--out",
                str(tmp_path / f"again-{source}"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        again = read_json(tmp_path / f"again-{source}" / "result.json")
        assert again["method"] == method and again["method_settings"] == original["method_settings"], source
        for key in ("eval/loss", "eval/rewards/margins"):
            assert again[key] == pytest.approx(original[key], rel=1e-5, abs=1e-6), (source, key)


@pytest.mark.e2e
def test_a_dpo_job_dir_saved_before_methods_existed_reruns_as_dpo(tmp_path):
    import subprocess
    import sys

    import yaml
    from helpers import train_job

    from dpo_lab.files import read_json

    original = train_job(tmp_path / "job", ["wandb.mode=disabled"])
    saved = tmp_path / "job" / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    del config["method"]  # what a job saved before methods existed holds
    saved.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "dpo_lab", "rerun", str(tmp_path / "job"), "--out", str(tmp_path / "again")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = read_json(tmp_path / "again" / "result.json")
    assert again["method"] == original["method"] == "dpo"
    assert original["train_tokens"] == _trl_num_tokens(tmp_path / "job") > 0  # our count is TRL's where TRL counts
    for key in ("eval/loss", "eval/rewards/margins", "eval/logratios/margins"):
        assert again[key] == pytest.approx(original[key], rel=1e-5, abs=1e-6), key


@pytest.mark.e2e
def test_a_sweep_over_methods_without_a_judge_is_refused_at_preflight(tmp_path):
    from helpers import run_py

    proc = run_py(
        "-m", TINY, "method=dpo,simpo", "preflight_only=true", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path
    )
    assert proc.returncode == 2 and "their eval metrics are not comparable" in proc.stdout, proc.stdout[-2000:]
    judged = run_py(
        "-m",
        TINY,
        "method=dpo,simpo",
        "samples.count=2",
        "samples.judge=task",
        "preflight_only=true",
        f"hydra.sweep.dir={tmp_path}/sweep2",
        cwd=tmp_path,
    )
    assert judged.returncode == 0 and "all 2 jobs check out" in judged.stdout, judged.stdout[-2000:]


def test_a_trl_without_the_methods_trainer_is_a_clear_error():
    from dataclasses import replace

    from dpo_lab import methods
    from dpo_lab.errors import UserError

    gone = replace(methods.get("orpo"), trl_module="trl.experimental.orpo_moved")  # as a later TRL might have it
    with pytest.raises(
        UserError, match=r"method=orpo needs trl\.experimental\.orpo_moved\.ORPOTrainer, which trl .* lacks"
    ):
        methods.trl_classes(gone)


def test_the_methods_sweep_gives_each_method_its_own_beta_range():
    betas = {
        (m, p): compose_cfg([TINY, "+sweep=methods", f"method={m}", f"method.point={p}"]).beta
        for m in ("dpo", "simpo", "orpo", "kto")
        for p in ("low", "high")
    }
    assert betas == {
        ("dpo", "low"): 0.05,
        ("dpo", "high"): 0.5,
        ("simpo", "low"): 2.0,
        ("simpo", "high"): 10.0,
        ("orpo", "low"): 0.1,
        ("orpo", "high"): 1.0,
        ("kto", "low"): 0.01,
        ("kto", "high"): 0.5,
    }


@pytest.mark.e2e
def test_the_methods_sweep_preflights_twelve_jobs_each_with_its_own_beta(tmp_path):
    from helpers import run_py

    proc = run_py(
        "-m",
        TINY,
        "+sweep=methods",
        "samples.count=2",
        "samples.judge=task",
        "preflight_only=true",
        f"hydra.sweep.dir={tmp_path}/sweep",
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and "all 12 jobs check out" in proc.stdout, proc.stdout[-3000:]
    assert "#5: python run.py method=simpo method.point=high" in proc.stdout  # 4 methods x 3 points of their own grid


def _checkpoint_state(job) -> dict:
    """The last checkpoint's trainer_state.json: transformers' own record of the run, saved for resuming."""
    states = sorted(job.glob("checkpoints/*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[-1]))
    return json.loads(states[-1].read_text())


def _trl_num_tokens(job) -> int:
    """The tokens TRL's DPO and KTO trainers count themselves (`num_tokens` in their training logs)."""
    return int([h["num_tokens"] for h in _checkpoint_state(job)["log_history"] if "num_tokens" in h][-1])


def _unpaired_files(tmp_path):
    """The tiny toy pairs as unpaired rows: a JSONL train file, a CSV eval file with "true"/"false" labels."""
    import csv

    from helpers import tiny_toy

    toy = tiny_toy()
    train = json.loads(open(toy["train_file"], encoding="utf-8").read())
    evals = json.loads(open(toy["eval_file"], encoding="utf-8").read())
    with open(tmp_path / "train.jsonl", "w", encoding="utf-8") as f:
        for i, r in enumerate(train):
            key = "chosen" if i % 3 else "rejected"  # 2 desirable : 1 undesirable, answers of different prompts
            f.write(json.dumps({"prompt": r["prompt"], "completion": r[key], "label": key == "chosen"}) + "\n")
    with open(tmp_path / "eval.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "completion", "label"])
        for r in evals:
            w.writerows([[r["prompt"], r["chosen"], "true"], [r["prompt"], r["rejected"], "false"]])
    return [f"data.train_file={tmp_path / 'train.jsonl'}", f"data.eval_file={tmp_path / 'eval.csv'}"]


@pytest.mark.e2e
def test_kto_trains_on_unpaired_files_and_dpo_refuses_them(tmp_path):
    from helpers import run_py, train_job

    files = _unpaired_files(tmp_path)
    result = train_job(
        tmp_path / "job", ["method=kto", "data=json", *files, "samples.count=2", "samples.max_new_tokens=8"]
    )
    assert result["status"] == "completed", result.get("error")
    assert isinstance(result["eval/kl"], float)
    samples = [json.loads(line) for line in (tmp_path / "job" / "samples.jsonl").read_text().splitlines()]
    assert len({r["prompt"] for r in samples if r["step"] == 0}) == 2  # one row per eval prompt, not per answer
    refused = run_py(TINY, "data=json", *files, "preflight_only=true", cwd=tmp_path)
    assert refused.returncode == 2 and "method=dpo trains on pairs" in refused.stdout and "method=kto" in refused.stdout


def test_an_unpaired_row_with_a_bad_label_is_named():
    from dpo_lab.data import check_unpaired_rows
    from dpo_lab.errors import UserError

    rows = [{"prompt": "p", "completion": "a", "label": 1}, {"prompt": "p", "completion": "b", "label": "maybe"}]
    with pytest.raises(UserError, match="f row 2 field 'label' is the text 'maybe': use true"):
        check_unpaired_rows(rows, "f")
    assert [r["label"] for r in check_unpaired_rows(rows[:1] + [{**rows[1], "label": " False "}], "f")] == [True, False]
