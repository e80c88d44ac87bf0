"""Data fuzzer (issue 11): several hundred seeded data files through the run's own loading path, in-process.

Each file goes through data.load_preferences (read_rows, check_rows, check_chat_template, format_prompts,
drop_long_prompts, the split) with a `data=json` config composed as run.py composes it and the tiny model's
tokenizer, then into the trainer's table as train.py builds it. Every case must end in exactly one of:
- a UserError, one paragraph naming the file (and the row or line where one row is at fault), or
- a load with a non-empty train and eval set (rows dropped on the way are counted in the log);
never another exception, a hang, or an empty set. The generator is seeded, so every run tries the same files.

    python -m pytest -q -s tests/reliability/test_data_fuzz.py    # prints the tally docs/reliability.md quotes
"""

import io
import json
import logging
import random
import re
import signal
import traceback
from dataclasses import dataclass
from typing import Iterator, List, Optional

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import TINY, compose_cfg, tiny_toy
from omegaconf import OmegaConf

from dpo_lab import data
from dpo_lab.errors import UserError
from dpo_lab.modeling import load_tokenizer

SECONDS_PER_CASE = 20  # far above any case's real time (the 1 MB rows take ~1 s): past it, a case counts as a hang
SNIPPETS = [
    "café",
    "日本語の文",
    "🙂 emoji",
    "{braces} and {prompt}",
    "tab\there",
    "nul\x00byte",
    'a "quote"',
    "back\\slash",
    "<|user|> special",
    "line\nbreak",
    "  padded  ",
    "Ünïcödé",
    "\u200bzero-width",
]
WORDS = "the cat sat on a warm mat while rain fell over quiet hills and bright rivers".split()


@dataclass
class Case:
    """One generated file: `expect` is "ok" (must load), "error" (must be refused) or "any" (either, but cleanly);
    `row`, where set, is the row or line an error must name."""

    name: str
    suffix: str
    content: bytes
    expect: str
    row: Optional[int] = None
    as_eval: bool = False  # given as data.eval_file next to a good train file
    prompt_format: str = "none"


def text(rng: random.Random, words: int = 6) -> str:
    out = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, words)))
    return out + " " + rng.choice(SNIPPETS) if rng.random() < 0.3 else out


def plain_rows(rng: random.Random, n: int) -> List[dict]:
    rows = [
        {"prompt": f"{text(rng)} {i}", "chosen": f"good {text(rng)}", "rejected": f"bad {text(rng)}"} for i in range(n)
    ]
    if rng.random() < 0.3:  # extra columns (the toy data's required_words) travel along
        for row in rows:
            row["required_words"] = [rng.choice(WORDS)]
    return rows


def conv_rows(rng: random.Random, n: int) -> List[dict]:
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"{text(rng)} {i}"}]
        if rng.random() < 0.3:  # a multi-turn prompt
            prompt += [{"role": "assistant", "content": text(rng)}, {"role": "user", "content": text(rng)}]
        rows.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": f"good {text(rng)}"}],
                "rejected": [{"role": "assistant", "content": f"bad {text(rng)}"}],
            }
        )
    return rows


def dumps(value, rng: random.Random, **kw) -> str:
    """JSON text, escaped to ASCII or not (a lone surrogate can only be written escaped)."""
    try:
        return json.dumps(value, ensure_ascii=rng.random() < 0.5, **kw).encode().decode()
    except UnicodeEncodeError:
        return json.dumps(value, **kw)


def encode(rows, suffix: str, rng: random.Random) -> bytes:
    """`rows` as a file of that format (any JSON values for .json/.jsonl; consistent types for .parquet)."""
    if suffix == ".jsonl":
        return "\n".join(dumps(r, rng) for r in rows).encode()
    if suffix == ".parquet":
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        return sink.getvalue()
    if suffix == ".csv":
        import pandas as pd

        return pd.DataFrame(rows).to_csv(index=False).encode()
    return dumps(rows, rng, indent=rng.choice([None, 2])).encode()


def good_file(rng: random.Random, suffix: str, n: int = 20) -> bytes:
    rows = conv_rows(rng, n) if suffix != ".csv" and rng.random() < 0.4 else plain_rows(rng, n)
    if suffix == ".csv":
        for row in rows:
            row.pop("required_words", None)
    return encode(rows, suffix, rng)


def bad_values(rng: random.Random) -> list:
    """Values that are not a prompt, chosen or rejected."""
    return [
        rng.randint(-5, 10**6),
        rng.random(),
        True,
        False,
        None,
        {"text": text(rng)},
        [text(rng)],
        [],
        [1, 2],
        {},
        "",
        "   ",
        "\n\t",
        [[{"role": "user", "content": "x"}]],
    ]


def cases(seed: int = 11) -> Iterator[Case]:
    rng = random.Random(seed)
    formats = [".json", ".jsonl", ".parquet", ".csv"]
    for i in range(40):  # well-formed files of every format, sometimes as the eval file, in several prompt formats
        suffix = formats[i % 4]
        yield Case(
            f"good{suffix}",
            suffix,
            good_file(rng, suffix),
            "ok",
            as_eval=i % 5 == 0,
            prompt_format=rng.choice(["none", "none", "chat", "phi2", "Q: {prompt}\nA:"]),
        )
    for i in range(40):  # random bytes under every extension
        blob = bytes(rng.randrange(256) for _ in range(rng.choice([1, 10, 200, 5000])))
        yield Case("random bytes", formats[i % 4], blob, "error")
    for i in range(60):  # a good file with bytes flipped, inserted or cut
        suffix = formats[i % 4]
        blob = bytearray(good_file(rng, suffix))
        for _ in range(rng.randint(1, 5)):
            at = rng.randrange(len(blob))
            choice = rng.random()
            if choice < 0.4:
                blob[at] = rng.randrange(256)
            elif choice < 0.7:
                blob[at:at] = bytes([rng.randrange(256)])
            else:
                del blob[at : at + rng.randint(1, 20)]
        yield Case("mutated", suffix, bytes(blob), "any", as_eval=i % 6 == 0)
    for _ in range(30):  # JSON cut short
        suffix = rng.choice([".json", ".jsonl"])
        blob = good_file(rng, suffix)
        yield Case("truncated", suffix, blob[: rng.randrange(1, len(blob))], "any")
    for i, encoding in enumerate(["latin-1", "cp1252", "utf-16", "utf-16-le", "utf-16-be", "utf-8-sig"] * 3):
        rows = plain_rows(rng, 10)
        rows[rng.randrange(10)]["prompt"] = "café crème " + text(rng)
        suffix = [".json", ".jsonl", ".csv"][i % 3]
        # utf-16 writes a byte-order mark, -le/-be do not; a UTF-8 BOM is accepted everywhere
        expect = "ok" if encoding == "utf-8-sig" else "error"
        if suffix == ".csv":
            content = encode(rows, suffix, rng).decode()
        else:  # unescaped, so the bytes differ from UTF-8
            content = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
            content = content if suffix == ".jsonl" else "[" + content.replace("\n", ",") + "]"
        yield Case(f"encoding {encoding}", suffix, content.encode(encoding, "replace"), expect)
    for depth in [10, 100, 1000, 10_000, 100_000]:  # nesting
        yield Case("deep array", ".json", b"[" * depth + b"]" * depth, "error")
        yield Case("deep object", ".jsonl", b'{"prompt": ' * depth + b"1" + b"}" * depth, "error")
        value = (
            json.dumps([{"prompt": "p", "chosen": "c", "rejected": "r"}])
            .encode()
            .replace(b'"c"', b"[" * depth + b"]" * depth)
        )
        yield Case(
            "deep value", ".json", value, "error", row=1 if depth <= 100 else None
        )  # deeper: past the JSON reader
    for payload in ['{"data": %s}', '{"rows": %s}', "[%s]"]:  # a wrapper around the rows
        yield Case("wrapped", ".json", (payload % json.dumps(plain_rows(rng, 5))).encode(), "error", row=1)
    for scalar in [
        "5",
        "null",
        '"text"',
        "true",
        "-1.5e999",
        "[1, 2]",
        "[null]",
        '["a", "b"]',
        "[[]]",
        "{}",
        "[]",
        " \n\t ",
        "1" * 5000,
        '[{"prompt": ' + "9" * 5000 + "}]",
    ]:
        yield Case("scalar", rng.choice([".json", ".jsonl"]), scalar.encode(), "error")
    for _ in range(10):  # one non-object among the rows
        rows = plain_rows(rng, 12)
        at = rng.randrange(12)
        rows[at] = rng.choice([5, None, "row", [rows[at]], True])
        suffix = rng.choice([".json", ".jsonl"])
        yield Case("non-object row", suffix, encode(rows, suffix, rng), "error", row=at + 1)
    for i in range(4):  # huge rows: a 1 MB answer is fine, a 1 MB prompt is dropped as too long (counted)
        rows = plain_rows(rng, 20)
        rows[i]["chosen" if i % 2 else "prompt"] = "word " * 200_000
        suffix = [".json", ".jsonl"][i % 2]
        yield Case("huge row", suffix, encode(rows, suffix, rng), "ok")
    for i in range(60):  # a wrong type or an empty value in one field of one row
        rows = plain_rows(rng, 15) if i % 2 else conv_rows(rng, 15)
        at, field = rng.randrange(15), rng.choice(data.FIELDS)
        rows[at][field] = rng.choice(bad_values(rng))
        suffix = rng.choice([".json", ".jsonl"])
        yield Case(f"bad value in {field}", suffix, encode(rows, suffix, rng), "error", row=at + 1, as_eval=i % 7 == 0)
    for i in range(20):  # a missing field
        rows = plain_rows(rng, 15) if i % 2 else conv_rows(rng, 15)
        at = rng.randrange(15)
        del rows[at][rng.choice(data.FIELDS)]
        suffix = rng.choice([".json", ".jsonl", ".parquet"]) if at else ".jsonl"
        # parquet stores a missing field as null in that row
        yield Case("missing field", suffix, encode(rows, suffix, rng), "error", row=at + 1)
    for i in range(50):  # conversational rows gone wrong
        rows = conv_rows(rng, 15)
        at, field = rng.randrange(1, 15), rng.choice(data.FIELDS)
        message = rows[at][field][0]
        kind = i % 10
        if kind == 0:
            message["content"] = rng.choice([5, None, 2.5, True, {"text": "x"}, [{"type": "text", "text": "x"}]])
        elif kind == 1:
            message["role"] = rng.choice(["human", "bot", "", None, 3, "USER", "gpt"])
        elif kind == 2:
            message["role"] = rng.choice(["system", "tool"])  # known to TRL, refused by the toy template
        elif kind == 3:
            rows[at][field][0] = rng.choice(["just text", 5, None, ["user", "hi"]])
        elif kind == 4:
            del message[rng.choice(["role", "content"])]
        elif kind == 5:
            rows[at][field] = []
        elif kind == 6:
            rows[at] = {k: data.as_text(v) for k, v in rows[at].items()}  # a plain row in a conversational file
        elif kind == 7:
            rows[at][field] = data.as_text(rows[at][field])  # one field plain within a row
        elif kind == 8:  # a blank field (one blank turn among others is allowed)
            for m in rows[at][field]:
                m["content"] = rng.choice(["", "   ", "\n"])
        else:
            message["content"] = "broken \ud800 escape"
        suffix = rng.choice([".json", ".jsonl"])
        yield Case(f"conversational {kind}", suffix, encode(rows, suffix, rng), "error", row=at + 1)
    for _ in range(5):  # a conversational file whose first row is plain
        rows = conv_rows(rng, 10)
        rows[0] = {k: data.as_text(v) for k, v in rows[0].items()}
        yield Case("plain then conversational", ".jsonl", encode(rows, ".jsonl", rng), "error", row=2)
    for i in range(20):  # CSV quirks
        rows = [{k: r[k].replace("\n", " ") for k in data.FIELDS} for r in plain_rows(rng, 12)]  # one line per row
        kind, at = i % 5, rng.randrange(1, 13)
        if kind == 0:  # an empty cell
            rows[at - 1]["chosen"] = ""
            yield Case("csv empty cell", ".csv", encode(rows, ".csv", rng), "error", row=at)
        elif kind == 1:  # a missing column
            rows = [{k: r[k] for k in ("prompt", "chosen")} for r in rows]
            yield Case("csv no column", ".csv", encode(rows, ".csv", rng), "error", row=1)
        elif kind == 2:  # a row with more cells than the header
            lines = encode(rows, ".csv", rng).decode().splitlines()
            lines[at] += ",extra,cells"
            yield Case("csv ragged", ".csv", "\n".join(lines).encode(), "error")
        elif kind == 3:  # header only
            yield Case("csv header only", ".csv", b"prompt,chosen,rejected\n", "error")
        else:  # CRLF line ends and a quoted newline
            rows[0]["prompt"] = "two\nlines, with a comma"
            yield Case("csv crlf", ".csv", encode(rows, ".csv", rng).replace(b"\n", b"\r\n"), "ok")
    for i in range(10):  # parquet with a wrong column type, or nulls
        rows = plain_rows(rng, 10)
        for row in rows:
            row["prompt"] = rng.choice([7, None]) if i % 2 else row["prompt"]
            row["chosen"] = row["chosen"] if i % 2 else None
        yield Case("parquet types", ".parquet", encode(rows, ".parquet", rng), "error", row=1)
    for _ in range(10):  # JSON Lines with blank lines, whitespace lines, CRLF, a trailing newline
        rows = plain_rows(rng, 15)
        lines = [json.dumps(r) for r in rows]
        for _ in range(5):
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(["", "   ", "\t"]))
        yield Case("jsonl blank lines", ".jsonl", (rng.choice(["\n", "\r\n"]).join(lines) + "\n").encode(), "ok")
    for i in range(12):  # chosen == rejected: some rows are dropped and counted, all rows are refused
        rows = plain_rows(rng, 20) if i % 2 else conv_rows(rng, 20)
        same = 20 if i % 3 == 0 else rng.randint(1, 10)
        for row in rows[:same]:
            row["rejected"] = row["chosen"]
        suffix = rng.choice([".json", ".jsonl"])
        yield Case(f"{same} identical", suffix, encode(rows, suffix, rng), "error" if same == 20 else "ok")
    for i in range(12):  # prompts past max_length: some are dropped and counted, all is refused
        rows = plain_rows(rng, 20) if i % 2 else conv_rows(rng, 20)
        long = 20 if i % 3 == 0 else rng.randint(1, 15)
        for row in rows[:long]:
            if isinstance(row["prompt"], list):
                row["prompt"][0]["content"] = "word " * 300
            else:
                row["prompt"] = "word " * 300
        suffix = rng.choice([".json", ".jsonl"])
        yield Case(f"{long} long prompts", suffix, encode(rows, suffix, rng), "error" if long == 20 else "ok")
    for n in [1, 2, 3]:  # too few rows to hold out an eval split (1), just enough (2, 3)
        yield Case(f"{n} rows", ".json", encode(plain_rows(rng, n), ".json", rng), "error" if n == 1 else "ok")
    yield Case("empty", ".json", b"", "error")
    yield Case("empty", ".parquet", b"", "error")
    yield Case("empty", ".csv", b"", "error")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(tiny_toy()["model"])


class Drops(logging.Handler):
    """Counts the rows data.py reports dropping (its warnings carry source, dropped, total)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.rows = 0

    def emit(self, record):
        if "dropped" in record.msg:
            self.rows += record.args[1]


def _hang(signum, frame):
    raise TimeoutError(f"no outcome after {SECONDS_PER_CASE} s")


@pytest.mark.e2e
def test_every_generated_file_ends_in_a_clear_error_or_a_usable_load(tmp_path, tokenizer):
    from datasets import Dataset
    from transformers.utils import logging as hf_logging

    good = tmp_path / "good_train.json"
    good.write_text(json.dumps(plain_rows(random.Random(0), 20)))
    base = compose_cfg([TINY, "data=json", f"data.train_file={good}"])
    max_length = base.trainer.max_length
    drops = Drops()
    logging.getLogger(data.__name__).addHandler(drops)
    previous = signal.signal(signal.SIGALRM, _hang)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers warns about each 1 MB prompt; data.py's own warnings are counted
    n = errors = ok = 0
    problems = []
    try:
        for i, case in enumerate(cases()):
            path = tmp_path / f"case{i:03d}{case.suffix}"
            path.write_bytes(case.content)
            files = {"eval_file": str(path)} if case.as_eval else {"train_file": str(path)}
            cfg = OmegaConf.merge(base.data, files, {"prompt_format": case.prompt_format})
            n += 1
            signal.alarm(SECONDS_PER_CASE)
            try:
                prefs = data.load_preferences(cfg, tokenizer, max_length)
                for rows in (prefs.train, prefs.eval):  # the trainer's tables, as train.py builds them
                    Dataset.from_list([{k: r[k] for k in data.FIELDS} for r in rows])
            except UserError as e:
                errors += 1
                message = str(e)
                if str(path) not in message:
                    problems.append(f"{case.name} {path.name}: the error does not name the file: {message}")
                elif "\n" in message:
                    problems.append(f"{case.name} {path.name}: the error is not one paragraph: {message!r}")
                elif case.row and not re.search(rf"\b(row|line) {case.row}\b", message):
                    problems.append(f"{case.name} {path.name}: the error does not name row {case.row}: {message}")
                elif case.expect == "ok":
                    problems.append(f"{case.name} {path.name}: a usable file was refused: {message}")
            except Exception:  # anything but a UserError is what the fuzzer hunts
                problems.append(f"{case.name} {path.name}: {traceback.format_exc()}")
            else:
                ok += 1
                if not prefs.train or not prefs.eval:
                    problems.append(
                        f"{case.name} {path.name}: loaded an empty set ({len(prefs.train)}, {len(prefs.eval)})"
                    )
                elif case.expect == "error":
                    problems.append(f"{case.name} {path.name}: a bad file loaded ({len(prefs.train)} train rows)")
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, previous)
        hf_logging.set_verbosity(verbosity)
        logging.getLogger(data.__name__).removeHandler(drops)
    print(
        f"\ndata fuzz: {n} inputs, {errors} clear errors, {ok} loaded, {drops.rows} rows dropped, "
        f"{len(problems)} problems"
    )
    assert not problems, f"{len(problems)} of {n} cases went wrong:\n" + "\n".join(problems[:20])
    assert n >= 400
