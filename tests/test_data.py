"""Data loading: every format, and every user mistake gives an error naming file, row and field."""

import json
import logging

import pandas as pd
import pytest
from helpers import TINY, run_py, tiny_toy
from omegaconf import OmegaConf

from dpo_lab.config import DataConfig
from dpo_lab.data import check_rows, drop_seen, drop_untrainable, format_prompts, load_preferences, split_by_prompt
from dpo_lab.errors import UserError
from dpo_lab.modeling import load_tokenizer
from dpo_lab.readers import read_rows

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


@pytest.mark.e2e
def test_holds_out_a_seeded_eval_split_without_eval_file(tmp_path, tokenizer):
    (tmp_path / "t.json").write_text(json.dumps(ROWS))
    cfg = data_cfg(source="files", train_file=str(tmp_path / "t.json"), eval_fraction=0.25, split_seed=3)
    a, b = load_preferences(cfg, tokenizer, 256), load_preferences(cfg, tokenizer, 256)
    assert len(a.eval) == 5 and len(a.train) == 15 and a.eval == b.eval
    assert not {r["prompt"] for r in a.eval} & {r["prompt"] for r in a.train}


@pytest.mark.e2e
def test_the_eval_split_is_held_out_from_usable_rows(tmp_path, tokenizer, caplog):
    rows = [{**r, "prompt": "word " * 300} if i % 2 else r for i, r in enumerate(ROWS)]  # every other prompt too long
    (tmp_path / "t.json").write_text(json.dumps(rows))
    cfg = data_cfg(source="files", train_file=str(tmp_path / "t.json"), eval_fraction=0.25, max_train_samples=4)
    with caplog.at_level(logging.INFO):
        prefs = load_preferences(cfg, tokenizer, 64)
    assert (
        "dropped 10 of 20 rows that would train on nothing: 10 whose prompt alone" in caplog.text
        and "held out 2 of 10 usable" in caplog.text
    )
    assert len(prefs.eval) == 2 and len(prefs.train) == 4  # max_train_samples counts usable rows
    assert all(len(r["prompt"]) < 10 for r in prefs.train + prefs.eval)


def test_a_file_without_shared_prompts_splits_as_a_seeded_row_split():
    import random

    order = list(range(20))
    random.Random(3).shuffle(order)  # the row split of earlier versions: grouping by prompt must not move a row
    train, evals = split_by_prompt(ROWS, 0.25, 3, "t.json")
    assert evals == [ROWS[i] for i in sorted(order[:5])] and train == [r for r in ROWS if r not in evals]


def test_the_held_out_split_keeps_each_prompt_and_each_repeated_row_on_one_side(caplog):
    pairs = [{"prompt": f"q{i % 7}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(21)]  # 3 per prompt
    rows = pairs + pairs[:6] + ROWS[:10]  # 6 rows repeated, 10 with prompts of their own
    for seed in range(5):
        with caplog.at_level(logging.INFO):
            train, evals = split_by_prompt(rows, 0.2, seed, "t.json")
        assert len(train) + len(evals) == len(rows) and 0 < len(evals) < len(rows) / 2
        assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}
        assert not {json.dumps(r) for r in train} & {json.dumps(r) for r in evals}
        assert (train, evals) == split_by_prompt(rows, 0.2, seed, "t.json")  # seeded
    assert "whole prompts at a time: 27 rows share a prompt with another (6 exact repeats)" in caplog.text


def test_a_file_with_one_prompt_cannot_hold_out_an_eval_split():
    rows = [{"prompt": "same", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(10)]
    with pytest.raises(UserError, match="t.json has 10 usable rows, all with one prompt: too few to hold out an eval"):
        split_by_prompt(rows, 0.2, 0, "t.json")


def test_eval_rows_that_train_holds_are_dropped_and_counted(caplog):
    evals = ROWS[:3] + [{**ROWS[3], "rejected": "other"}]  # the last one shares a prompt only: kept
    with caplog.at_level(logging.WARNING):
        assert drop_seen(evals, ROWS, "e.json", "t.json") == evals[3:]
    assert "e.json: dropped 3 of 4 eval rows that t.json holds too (same prompt and answers)" in caplog.text
    with pytest.raises(UserError, match="e.json: every one of its 3 usable rows is also in t.json"):
        drop_seen(evals[:3], ROWS, "e.json", "t.json")


def test_prompt_formats():
    row = [{"prompt": "Tell a story", "chosen": "a", "rejected": "b"}]
    assert format_prompts(row, "phi2")[0]["prompt"] == "Instruct: Tell a story\nOutput:"
    assert format_prompts(row, "Q: {prompt} A:")[0]["prompt"] == "Q: Tell a story A:"
    chat = format_prompts(row, "chat")[0]
    assert chat["prompt"] == [{"role": "user", "content": "Tell a story"}]
    assert chat["chosen"] == [{"role": "assistant", "content": "a"}]


@pytest.mark.e2e
def test_conversational_rows_pass_through(tmp_path, tokenizer):
    conv = [
        {
            "prompt": [{"role": "user", "content": f"q{i}"}],
            "chosen": [{"role": "assistant", "content": "yes"}],
            "rejected": [{"role": "assistant", "content": "no"}],
        }
        for i in range(10)
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in conv))
    prefs = load_preferences(data_cfg(source="files", train_file=str(tmp_path / "c.jsonl")), tokenizer, 256)
    assert prefs.train[0]["prompt"][0]["role"] == "user"


@pytest.mark.e2e
def test_identical_pairs_are_dropped_and_counted(tokenizer, caplog):
    eos = tokenizer.eos_token  # TRL appends it to a plain answer that lacks it: "same" and "same<eos>" are one answer
    rows = ROWS[:5] + [{"prompt": "p", "chosen": "same", "rejected": "same"}, {**ROWS[0], "chosen": "same" + eos}]
    rows[-1]["rejected"] = "same"
    with caplog.at_level(logging.WARNING):
        kept = drop_untrainable(rows, tokenizer, 64, "f.json")
    assert kept == ROWS[:5]
    assert "dropped 2 of 7 rows that would train on nothing: 2 with chosen == rejected (as text or as tokens" in (
        caplog.text
    )
    with pytest.raises(UserError, match="f.json: no row is left to train on: of its 2 rows, 2 with chosen =="):
        drop_untrainable(rows[5:], tokenizer, 64, "f.json")


@pytest.mark.e2e
def test_prompts_that_fill_max_length_are_dropped_and_counted(tokenizer, caplog):
    rows = ROWS[:3] + [{"prompt": "word " * 300, "chosen": "a", "rejected": "b"}]
    with caplog.at_level(logging.WARNING):
        kept = drop_untrainable(rows, tokenizer, 64, "f.json")
    assert len(kept) == 3 and "dropped 1 of 4 rows that would train on nothing: 1 whose prompt alone is >= " in (
        caplog.text
    )
    with pytest.raises(UserError, match="every prompt is at least trainer.max_length=64 tokens long"):
        drop_untrainable(rows[3:], tokenizer, 64, "f.json")
    # Conversational prompts are counted through the chat template, as TRL tokenizes them.
    chat = format_prompts(rows, "chat")
    assert len(drop_untrainable(chat, tokenizer, 64, "f.json")) == 3


def trl_sees_one_sequence(rows, tokenizer, max_length):
    """For each row, whether TRL 1.16's DPOTrainer makes chosen and rejected one sequence: its own dataset
    preparation (EOS, tokenizing, the prompt-length filter) and its collator's truncation, rows it drops left out."""
    import types

    from datasets import Dataset
    from trl import DPOConfig
    from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer

    args = DPOConfig(output_dir="unused", max_length=max_length, use_cpu=True, bf16=False, report_to=[])
    trainer = types.SimpleNamespace(_tokenizer=tokenizer, _is_vision_dataset=False)  # all the method reads of self
    prepared = DPOTrainer._prepare_dataset(trainer, Dataset.from_list(rows), tokenizer, args, "train")
    collate = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, max_length=max_length)
    same = []
    for example in prepared:
        batch = collate([example])
        ids, mask = batch["input_ids"], batch["completion_mask"]
        same.append(bool((ids[0] == ids[1]).all() and (mask[0] == mask[1]).all()))
    return same


@pytest.mark.e2e
@pytest.mark.parametrize("prompt_format", ["phi2", "chat"])
def test_pairs_that_differ_only_past_max_length_are_dropped_as_trl_would_train_them_with_margin_0(
    tokenizer, caplog, prompt_format
):
    shared = "the cat sat on the mat " * 12  # past 64 tokens of the tiny model's tokenizer
    rows = format_prompts(
        ROWS[:4]
        + [{"prompt": f"q{i}", "chosen": shared + f"yes {i}", "rejected": shared + f"no {i}"} for i in range(3)]
        + [{"prompt": "q", "chosen": "short " + shared, "rejected": "brief " + shared}],  # differs early: kept
        prompt_format,
    )
    assert trl_sees_one_sequence(rows, tokenizer, 64) == [False] * 4 + [True] * 3 + [False]
    with caplog.at_level(logging.WARNING):
        kept = drop_untrainable(rows, tokenizer, 64, "f.json")
    assert kept == rows[:4] + rows[7:]
    assert (
        "f.json: dropped 3 of 8 rows that would train on nothing: 3 whose chosen and rejected differ only after "
        "trainer.max_length=64 tokens" in caplog.text
    )
    assert "Raise trainer.max_length (" in caplog.text
    with pytest.raises(UserError) as err:
        drop_untrainable(rows[4:7], tokenizer, 64, "f.json")
    message = str(err.value)
    assert "f.json: no row is left to train on: of its 3 rows, 3 whose chosen and rejected differ only" in message
    needed = int(message.split("Raise trainer.max_length (to at least ")[1].split(" ")[0])
    assert trl_sees_one_sequence(rows[4:7], tokenizer, needed - 1) == [True] * 3
    assert False in trl_sees_one_sequence(rows[4:7], tokenizer, needed)  # the length the message names is enough
    assert len(drop_untrainable(rows[4:7], tokenizer, needed, "f.json")) >= 1


@pytest.mark.parametrize(
    "content, message",
    [
        (
            '{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"\n',
            "line 2 is not valid JSON",
        ),
        ('[{"prompt": "a", "chosen": "b", "rejected": "c"},\n {"prompt": "a" "chosen": "b"}]', "line 2, column"),
        (
            '[{"prompt": "a", "chosen": "b", "rejected": "c"},\n {"prompt": "a]',
            "Unterminated string starting at line 2, column 13",
        ),
        ('{"prompt": "a}\n', r"line 1 is not valid JSON \(Unterminated string starting at column 12\)"),
        (
            '[{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}]',
            "row 2 has no 'rejected'",
        ),
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


def conv(prompt="q", chosen="yes", rejected="no", **extra):
    """A conversational row: one user turn, one assistant answer each."""
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        **extra,
    }


@pytest.mark.parametrize(
    "bad_row, message",
    [
        (conv(prompt=5), "row 2 field 'prompt' message 1 has content a number (5), not text"),
        (conv(chosen=None), "row 2 field 'chosen' message 1 has content null, not text"),
        (conv(rejected={"text": "no"}), "row 2 field 'rejected' message 1 has content an object with keys ['text']"),
        ({**conv(), "prompt": [{"role": "human", "content": "q"}]}, "message 1 has role 'human', which TRL"),
        ({**conv(), "prompt": ["q"]}, "row 2 field 'prompt' message 1 is the text 'q', not a {\"role\", \"content\"}"),
        ({**conv(), "prompt": [{"role": "user"}]}, "message 1 is an object with keys ['role'], not a"),
        ({**conv(), "chosen": [{"role": "assistant", "content": " "}]}, "row 2 field 'chosen' is empty (every"),
        ({**conv(), "prompt": "q"}, "row 2 mixes plain text (prompt) with lists of messages"),
        ({"prompt": "q", "chosen": "a", "rejected": "b"}, "row 2 is plain text but row 1 is conversational"),
        ({**conv(), "prompt": [{"role": "user", "content": "q", "name": 1}]}, "but in row 1 'name' is text"),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, "row 2 field 'prompt' is a number (3), not text"),
    ],
)
def test_bad_conversational_rows_name_row_field_and_fix(tmp_path, bad_row, message):
    path = tmp_path / "conv.jsonl"
    first = conv()
    first["prompt"][0]["name"] = "x"  # an extra message key: fine while every message agrees on its kind
    path.write_text("\n".join(json.dumps(r) for r in [first, bad_row]))
    with pytest.raises(UserError) as err:
        check_rows(read_rows(str(path)), str(path))
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.e2e
def test_a_role_the_chat_template_refuses_names_the_row(tmp_path, tokenizer):
    rows = [conv(f"q{i}") for i in range(6)]
    rows[3]["prompt"].insert(0, {"role": "system", "content": "Be brief."})  # the toy template knows no system role
    (tmp_path / "c.json").write_text(json.dumps(rows))
    with pytest.raises(UserError, match=r"c.json row 4: the chat template of .* refuses its prompt messages \(the toy"):
        load_preferences(data_cfg(source="files", train_file=str(tmp_path / "c.json")), tokenizer, 256)


@pytest.mark.e2e
def test_conversational_parquet_and_extra_columns_load(tmp_path, tokenizer):
    rows = [conv(f"q{i}", required_words=["q"]) for i in range(10)]
    pd.DataFrame(rows).to_parquet(tmp_path / "c.parquet")
    assert read_rows(str(tmp_path / "c.parquet")) == rows  # lists and dicts, not numpy arrays
    prefs = load_preferences(data_cfg(source="files", train_file=str(tmp_path / "c.parquet")), tokenizer, 256)
    assert len(prefs.train) + len(prefs.eval) == 10 and prefs.train[0]["required_words"] == ["q"]


@pytest.mark.parametrize(
    "encoding, message",
    [("utf-8-sig", None), ("utf-16", "is UTF-16 text"), ("latin-1", "line 2 holds byte 0xe9, which UTF-8 does not")],
)
def test_encodings(tmp_path, encoding, message):
    path = tmp_path / "e.jsonl"
    path.write_bytes(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in [ROWS[0], {**ROWS[1], "prompt": "café"}]).encode(encoding)
    )
    if message is None:
        assert read_rows(str(path))[1]["prompt"] == "café"
    else:
        with pytest.raises(UserError, match=message):
            read_rows(str(path))


@pytest.mark.parametrize("name", ["d.jsonl.gz", "d.json.bz2", "d.jsonl.xz", "d.csv.gz", "gzip-named.json"])
def test_compressed_files_are_read_by_their_magic_bytes(tmp_path, name):
    import bz2
    import gzip
    import lzma

    text = pd.DataFrame(ROWS).to_csv(index=False) if ".csv" in name else "\n".join(json.dumps(r) for r in ROWS)
    compress = {"bz2": bz2.compress, "xz": lzma.compress}.get(name.rsplit(".", 1)[-1], gzip.compress)
    (tmp_path / name).write_bytes(compress(text.encode()))
    assert read_rows(str(tmp_path / name)) == ROWS


def test_binary_formats_under_another_extension_are_read_or_named_never_called_latin_1(tmp_path):
    import gzip
    import tarfile
    import zipfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(ROWS)
    pq.write_table(table, tmp_path / "parquet.json")
    with pa.ipc.new_stream(tmp_path / "stream.arrow", table.schema) as w:  # how `datasets` saves .arrow files
        w.write_table(table)
    assert read_rows(str(tmp_path / "parquet.json")) == ROWS and read_rows(str(tmp_path / "stream.arrow")) == ROWS

    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS))
    with zipfile.ZipFile(tmp_path / "zip.json", "w") as z:
        z.write(tmp_path / "d.jsonl", "d.jsonl")
    with tarfile.open(tmp_path / "d.tar.gz", "w:gz") as t:
        t.add(tmp_path / "d.jsonl", "d.jsonl")
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress((tmp_path / "d.jsonl").read_bytes())[:30])
    (tmp_path / "weights.json").write_bytes(bytes(range(256)) * 4)
    for name, message in [
        ("zip.json", "is a zip archive: unzip it (unzip {path}) and point data.train_file"),
        ("d.tar.gz", "is a tar archive: extract it (tar xf {path})"),
        ("cut.jsonl.gz", "is gzip-compressed but cannot be decompressed (Compressed file ended"),
        ("weights.json", "is a binary file, not text"),
    ]:
        path = str(tmp_path / name)
        with pytest.raises(UserError) as err:
            read_rows(path)
        assert message.format(path=path) in str(err.value) and "Latin-1" not in str(err.value)


@pytest.mark.e2e
def test_preflight_runs_the_data_path_with_the_jobs_tokenizer_once_per_sweep(tmp_path):
    from helpers import compose_cfg

    from dpo_lab.sweeps.preflight import check_job

    path = tmp_path / "long.json"
    path.write_text(json.dumps([{"prompt": "word " * 300, "chosen": f"a{i}", "rejected": "b"} for i in range(20)]))
    seen = {}
    for beta in (0.1, 0.2):  # two jobs of a sweep: the second is answered from the cache
        cfg = compose_cfg([TINY, "data=json", f"data.train_file={path}", f"beta={beta}"])
        with pytest.raises(
            UserError,
            match=r"long.json: every prompt is at least trainer.max_length=256 tokens long \(the shortest is 602\)",
        ):
            check_job(cfg, seen)
        path.unlink(missing_ok=True)
    assert len([k for k in seen if k[0] == "data"]) == 1


@pytest.mark.e2e
def test_preflight_reads_a_hub_dataset_as_the_run_would(tmp_path):
    from helpers import compose_cfg

    from dpo_lab.sweeps.preflight import check_job

    with pytest.raises(UserError, match="Cannot load hub dataset 'no-such/dataset': "):  # offline: which error, varies
        check_job(compose_cfg([TINY, "data=hub", "data.name=no-such/dataset"]), {})  # tests run with HF_HUB_OFFLINE
    (tmp_path / "hub").mkdir()  # a local dataset dir loads as the hub's would, offline
    (tmp_path / "hub" / "train.json").write_text(json.dumps(ROWS))
    cfg = compose_cfg([TINY, "data=hub", f"data.name={tmp_path / 'hub'}", "data.eval_split=validation"])
    with pytest.raises(
        UserError, match=r"data.eval_split=validation: hub dataset .* has no such split; it has \['train'\]"
    ):
        check_job(cfg, {})
    check_job(compose_cfg([TINY, "data=hub", f"data.name={tmp_path / 'hub'}"]), {})


@pytest.mark.e2e
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
