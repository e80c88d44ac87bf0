"""Data loading: every format, and every user mistake gives an error naming file, row and field."""

import json
import logging

import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import TINY, run_py, tiny_toy
from dpo_lab.config import DataConfig
from dpo_lab.data import check_rows, drop_long_prompts, format_prompts, load_preferences, read_rows
from dpo_lab.errors import UserError
from dpo_lab.modeling import load_tokenizer

ROWS = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(20)]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(tiny_toy()["model"])


def data_cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(DataConfig), kw)


@pytest.mark.parametrize("ext", [".json", ".jsonl", ".parquet", ".csv"])
def test_reads_every_format(tmp_path, ext):
    path = tmp_path / f"d{ext}"
    if ext == ".json":
        path.write_text(json.dumps(ROWS))
    elif ext == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ROWS))
    else:
        getattr(pd.DataFrame(ROWS), "to_parquet" if ext == ".parquet" else "to_csv")(path, index=False)
    assert read_rows(str(path)) == ROWS


def test_holds_out_a_seeded_eval_split_without_eval_file(tmp_path, tokenizer):
    (tmp_path / "t.json").write_text(json.dumps(ROWS))
    cfg = data_cfg(source="files", train_file=str(tmp_path / "t.json"), eval_fraction=0.25, split_seed=3)
    a, b = load_preferences(cfg, tokenizer, 256), load_preferences(cfg, tokenizer, 256)
    assert len(a.eval) == 5 and len(a.train) == 15 and a.eval == b.eval
    assert not {r["prompt"] for r in a.eval} & {r["prompt"] for r in a.train}


def test_prompt_formats():
    row = [{"prompt": "Tell a story", "chosen": "a", "rejected": "b"}]
    assert format_prompts(row, "phi2")[0]["prompt"] == "Instruct: Tell a story\nOutput:"
    assert format_prompts(row, "Q: {prompt} A:")[0]["prompt"] == "Q: Tell a story A:"
    chat = format_prompts(row, "chat")[0]
    assert chat["prompt"] == [{"role": "user", "content": "Tell a story"}]
    assert chat["chosen"] == [{"role": "assistant", "content": "a"}]


def test_conversational_rows_pass_through(tmp_path, tokenizer):
    conv = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "yes"}],
             "rejected": [{"role": "assistant", "content": "no"}]} for i in range(10)]  # fmt: skip
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in conv))
    prefs = load_preferences(data_cfg(source="files", train_file=str(tmp_path / "c.jsonl")), tokenizer, 256)
    assert prefs.train[0]["prompt"][0]["role"] == "user"


def test_identical_pairs_are_dropped_and_counted(caplog):
    rows = ROWS[:5] + [{"prompt": "p", "chosen": "same", "rejected": "same"}] * 2
    with caplog.at_level(logging.WARNING):
        kept = check_rows(rows, "f.json")
    assert len(kept) == 5 and "dropped 2 of 7 rows where chosen == rejected" in caplog.text


def test_prompts_that_fill_max_length_are_dropped_and_counted(tokenizer, caplog):
    rows = ROWS[:3] + [{"prompt": "word " * 300, "chosen": "a", "rejected": "b"}]
    with caplog.at_level(logging.WARNING):
        kept = drop_long_prompts(rows, tokenizer, 64, "f.json")
    assert len(kept) == 3 and "dropped 1 of 4 rows whose prompt alone is >= trainer.max_length=64" in caplog.text
    with pytest.raises(UserError, match="every prompt"):
        drop_long_prompts(rows[3:], tokenizer, 64, "f.json")
    # Conversational prompts are counted through the chat template, as TRL tokenizes them.
    chat = format_prompts(rows, "chat")
    assert len(drop_long_prompts(chat, tokenizer, 64, "f.json")) == 3


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"\n', "line 2 is not valid JSON"),
        ('[{"prompt": "a", "chosen": "b", "rejected": "c"},\n {"prompt": "a" "chosen": "b"}]', "line 2, column"),
        ('[{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}]', "row 2 has no 'rejected'"),
        ('[{"prompt": "a", "chosen": "", "rejected": "c"}]', "row 1 field 'chosen' is empty"),
        ("", "is empty"),
        ("[1, 2]", "must hold objects"),
        ('{"rows": 1}', "row 1 has no 'prompt' field"),
    ],
)
def test_bad_files_name_line_row_and_field(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as err:
        check_rows(read_rows(str(path)), str(path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "args, message",
    [
        (["data=json", "data.train_file=missing.json"], "Data file 'missing.json' does not exist"),
        (["data=json", "data.train_file=."], "Data file '.' is a directory"),
        (["data=json", "data.train_file=null"], "data=json needs data.train_file"),
        (["data=json", "data.train_file=bad.json"], "row 1 has no 'rejected'"),
        (["model=hf", "model.path=/no/such/checkpoint"], "model.path='/no/such/checkpoint' does not exist"),
        (["loss=robust", "loss.label_smoothing=0.9"], "label_smoothing=0.9 is out of range"),
    ],
)
def test_user_mistakes_exit_nonzero_without_traceback(tmp_path, args, message):
    (tmp_path / "bad.json").write_text('[{"prompt": "a", "chosen": "b"}]')
    proc = run_py(*args, TINY, "wandb.mode=disabled", cwd=tmp_path, timeout=300)
    assert proc.returncode != 0
    assert message in proc.stdout, proc.stdout[-2000:]
    assert "Traceback" not in proc.stdout
    assert not list(tmp_path.rglob("checkpoints"))  # nothing trained
