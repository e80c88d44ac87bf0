"""Bad data end to end (issue 11): `python run.py` as a user runs it stops with one paragraph naming the file and
row, a non-zero exit and no traceback; a sweep stops at preflight before any job starts. Each takes 10-25 s
(a fresh process, the sweep's fork server), so they are `slow`: CI runs them, tests/test_data.py covers the same
checks in-process."""

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
