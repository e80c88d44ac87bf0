"""Bad data end to end (issue 11): `python run.py` as a user runs it stops with one paragraph naming the file and
row, a non-zero exit and no traceback; a sweep stops at preflight before any job starts. Each takes 10-25 s
(a fresh process, the sweep's fork server), so they are `slow`: CI runs them, tests/test_data.py covers the same
checks in-process. Issue 25's: rows that would train on nothing are dropped and counted as a run reads them, and a
single run whose every row would is refused at preflight."""

import json

import pytest
from helpers import TINY, run_py


def conversational(i, content=None):
    return {
        "prompt": [{"role": "user", "content": f"question {i}" if content is None else content}],
        "chosen": [{"role": "assistant", "content": "yes"}],
        "rejected": [{"role": "assistant", "content": "no"}],
    }


@pytest.mark.slow
def test_a_bad_conversational_row_stops_the_run_naming_it(tmp_path):
    rows = [conversational(i) for i in range(20)]
    rows[6] = conversational(6, content=7)  # a number where the message text goes: an Arrow error naming no row before
    (tmp_path / "conv.json").write_text(json.dumps(rows))
    proc = run_py(TINY, "data=json", "data.train_file=conv.json", "wandb.mode=disabled", cwd=tmp_path, timeout=300)
    assert proc.returncode != 0
    assert "conv.json row 7 field 'prompt' message 1 has content a number (7), not text" in proc.stdout, proc.stdout[
        -3000:
    ]
    assert "Traceback" not in proc.stdout
    assert not list(tmp_path.rglob("checkpoint-*"))


@pytest.mark.slow
def test_a_sweep_on_prompts_longer_than_max_length_stops_at_preflight(tmp_path):
    rows = [{"prompt": "word " * 300, "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(20)]
    (tmp_path / "long.json").write_text(json.dumps(rows))
    sweep = tmp_path / "sweep"
    proc = run_py(
        "-m",
        TINY,
        "data=json",
        "data.train_file=long.json",
        "beta=0.1,0.2",
        "wandb.mode=disabled",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "2 of 2 jobs would fail; nothing was started" in proc.stdout
    assert "long.json: every prompt is at least trainer.max_length=256 tokens long" in proc.stdout
    assert "Traceback" not in proc.stdout
    assert not sweep.exists()  # no job dir, nothing trained


# Pairs that differ only past 64 tokens of the tiny model's tokenizer: the trainer cuts both into one sequence.
SHARED = "the cat sat on the mat " * 12


def cut_pair(i):
    return {"prompt": f"tell me {i}", "chosen": SHARED + f"yes {i}", "rejected": SHARED + f"no {i}"}


@pytest.mark.e2e
def test_a_gzip_file_trains_without_its_cut_pairs_and_holds_out_repeated_rows_on_one_side(tmp_path):
    import gzip

    rows = [{"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(16)]
    rows += [cut_pair(i) for i in range(4)] + rows[:4]  # 4 cut pairs, 4 rows repeated
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress("\n".join(json.dumps(r) for r in rows).encode()))
    proc = run_py(
        TINY,
        "data=json",
        "data.train_file=d.jsonl.gz",
        "data.eval_fraction=0.25",
        "trainer.max_length=64",
        "max_steps=2",
        "wandb.mode=disabled",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (
        "d.jsonl.gz: dropped 4 of 24 rows that would train on nothing: 4 whose chosen and rejected differ only after "
        "trainer.max_length=64 tokens" in proc.stdout
    )
    assert "held out 5 of 20 usable train rows" in proc.stdout and "Data: 15 train / 5 eval pairs" in proc.stdout
    assert "whole prompts at a time: 8 rows share a prompt with another (4 exact repeats)" in proc.stdout


@pytest.mark.e2e
def test_a_single_run_on_pairs_all_cut_by_max_length_stops_at_preflight(tmp_path):
    (tmp_path / "cut.json").write_text(json.dumps([cut_pair(i) for i in range(8)]))
    proc = run_py(TINY, "data=json", "data.train_file=cut.json", "trainer.max_length=64", cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert (
        "Preflight: cut.json: no row is left to train on: of its 8 rows, 8 whose chosen and rejected differ only "
        "after trainer.max_length=64 tokens" in proc.stdout
    )
    assert "Raise trainer.max_length (" in proc.stdout and "Traceback" not in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.json"]  # no run dir, nothing trained


@pytest.mark.e2e
def test_eval_file_rows_that_train_holds_are_dropped_at_preflight_and_counted(tmp_path):
    train = [{"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(12)]
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "eval.json").write_text(json.dumps(train[:3] + [{**train[0], "prompt": "new"}]))
    args = (TINY, "data=json", "data.train_file=train.json", "data.eval_file=eval.json", "preflight_only=true")
    proc = run_py(*args, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "eval.json: dropped 3 of 4 eval rows that train.json holds too (same prompt and answers)" in proc.stdout
    (tmp_path / "eval.json").write_text(json.dumps(train[5:7]))
    proc = run_py(*args, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    assert "eval.json: every one of its 2 usable rows is also in train.json" in proc.stdout
