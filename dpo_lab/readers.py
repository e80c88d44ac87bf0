"""Reading a data file into rows: JSON array, JSON Lines, CSV, Parquet or Arrow, in any common text encoding, gzip,
bz2 or xz compressed or not. Every problem is a UserError naming the file and, where there is one, the line."""

import bz2
import codecs
import gzip
import io
import json
import lzma
import os
import zlib
from typing import Any, Dict, List, Tuple

from dpo_lab.errors import UserError


def one_line(e: BaseException) -> str:
    """A library's error message as one line (pandas' and transformers' span several)."""
    return " ".join(str(e).split()).rstrip(".")


def read_rows(path: str) -> List[Dict[str, Any]]:
    """Read a JSON array, JSON Lines, Parquet, Arrow or CSV file into a list of dicts: binary formats by their magic
    bytes, text ones by extension (JSON otherwise), a compressed file (.json.gz, .csv.bz2, ...) decompressed first."""
    if os.path.isdir(path):
        raise UserError(
            f"Data file {path!r} is a directory. Point data.train_file / data.eval_file at the file "
            "itself (.json, .jsonl, .parquet or .csv, optionally .gz) inside it."
        )
    if not os.path.isfile(path):
        raise UserError(
            f"Data file {path!r} does not exist. Check data.train_file / data.eval_file (paths are "
            f"relative to the directory you ran from: {os.getcwd()})."
        )
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f"Cannot read data file {path!r}: {e}.") from None
    raw, ext = _decompressed(path, raw)
    if not raw.strip():
        raise UserError(f"Data file {path!r} is empty. It needs rows with prompt, chosen and rejected.")
    if raw.startswith(b"PAR1") or ext == ".parquet":
        rows = _parse_parquet(path, raw)
    elif raw.startswith((b"ARROW1", ARROW_STREAM)):
        rows = _parse_arrow(path, raw)
    elif ext == ".csv":
        rows = _parse_csv(path, _decode(path, raw))
    else:
        rows = _parse_json(path, _decode(path, raw))
    bad = next((i for i, row in enumerate(rows, start=1) if not isinstance(row, dict)), None)
    if bad:
        raise UserError(
            f"{path!r} must hold objects with prompt, chosen and rejected (a JSON array of objects or "
            f"one object per line), but row {bad} is {kind_of(rows[bad - 1])}."
        )
    return rows


# Compressed files by their first bytes: read through the standard library's decompressors, or named (see below).
DECOMPRESS = {
    b"\x1f\x8b": ("gzip", gzip.decompress),
    b"BZh": ("bz2", bz2.decompress),
    b"\xfd7zXZ\x00": ("xz", lzma.decompress),
}
ARCHIVES = {  # several files in one, or a compression Python cannot read without another package: say how to unpack
    b"PK\x03\x04": "a zip archive: unzip it (unzip FILE)",
    b"\x28\xb5\x2f\xfd": "zstd-compressed: decompress it (zstd -d FILE)",
    b"7z\xbc\xaf\x27\x1c": "a 7-Zip archive: extract it (7z x FILE)",
}
ARROW_STREAM = b"\xff\xff\xff\xff"  # an Arrow IPC stream (how `datasets` saves its .arrow files) starts so


def _decompressed(path: str, raw: bytes) -> Tuple[bytes, str]:
    """The file's bytes decompressed if gzip, bz2 or xz, and the extension of what is inside (x.jsonl.gz: .jsonl)."""
    stem, ext = os.path.splitext(path)
    for magic, (name, decompress) in DECOMPRESS.items():
        if raw.startswith(magic):
            try:
                raw = decompress(raw)
            except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as e:  # cut short or damaged
                raise UserError(
                    f"Data file {path!r} is {name}-compressed but cannot be decompressed ({one_line(e)}): a "
                    "truncated or damaged file. Copy it again, or decompress it yourself to see what is wrong."
                ) from None
            if ext.lower() in (".gz", ".gzip", ".bz2", ".xz"):
                ext = os.path.splitext(stem)[1]
            break
    what = next((what for magic, what in ARCHIVES.items() if raw.startswith(magic)), None)
    if raw[257:262] == b"ustar":
        what = "a tar archive: extract it (tar xf FILE)"
    if what:
        raise UserError(
            f"Data file {path!r} is {what.replace('FILE', path)} and point data.train_file / data.eval_file at "
            "the .json, .jsonl, .parquet or .csv file inside."
        )
    return raw, ext.lower()


def _decode(path: str, raw: bytes) -> str:
    """The file's text: UTF-8, with or without the byte-order mark some Windows editors write."""
    head = raw[:200]
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or (
        len(head) >= 8 and max(head[0::2].count(0), head[1::2].count(0)) >= 0.9 * (len(head) // 2)
    ):  # UTF-16 without a mark: every other byte of ASCII text is zero
        raise UserError(
            f"Data file {path!r} is UTF-16 text (a byte-order mark, or every other byte zero). Save it as UTF-8."
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if b"\x00" in raw[:4096]:  # text files hold no NUL bytes: a binary format, which is not Latin-1 either
            raise UserError(
                f"Data file {path!r} is a binary file, not text (JSON, JSON Lines or CSV), nor a parquet, Arrow or "
                "gzip/bz2/xz file. Export the rows as .jsonl or .parquet and point data.train_file at that."
            ) from None
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(
            f"Data file {path!r} is not UTF-8 text: line {line} holds byte 0x{raw[e.start]:02x}, which "
            "UTF-8 does not allow there (a Latin-1 or Windows-1252 file?). Save it as UTF-8."
        ) from None


def _parse_parquet(path: str, raw: bytes) -> List[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:  # through Arrow, not pandas: messages come back as lists and dicts, not numpy arrays
        return pq.read_table(pa.BufferReader(raw)).to_pylist()
    except (ValueError, OSError, pa.ArrowException) as e:  # a damaged file: ArrowInvalid, or OSError from thrift
        raise UserError(
            f"Cannot parse {path!r} as parquet: {one_line(e)}. Check that it is a whole parquet file "
            "with prompt, chosen and rejected columns."
        ) from None


def _parse_arrow(path: str, raw: bytes) -> List[Any]:
    import pyarrow as pa

    reader = pa.ipc.open_file if raw.startswith(b"ARROW1") else pa.ipc.open_stream
    try:
        return reader(pa.BufferReader(raw)).read_all().to_pylist()
    except (ValueError, OSError, pa.ArrowException) as e:
        raise UserError(
            f"Cannot parse {path!r} as an Arrow file: {one_line(e)}. Check that it is a whole Arrow file with "
            "prompt, chosen and rejected columns, or save the rows as .jsonl or .parquet."
        ) from None


def _parse_csv(path: str, text: str) -> List[Any]:
    import pandas as pd

    try:  # CSV has no types: every cell is text, and an empty cell is "" (not NaN, not a number)
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False).to_dict(orient="records")
    except ValueError as e:  # pandas' ParserError and EmptyDataError are ValueErrors
        raise UserError(
            f"Cannot parse {path!r} as CSV: {one_line(e)}. Check that it is a CSV file with prompt, "
            "chosen and rejected columns (cells with commas or newlines in double quotes)."
        ) from None


def _parse_json(path: str, text: str) -> List[Any]:
    """A JSON array (the text starts with "[") or JSON Lines (one object per line; blank lines are skipped)."""
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path!r} is not valid JSON: {_json_where(e, f'line {e.lineno}, column {e.colno}')}. "
                "Fix that line (a JSON array of objects) or write the file as JSON Lines."
            ) from None
        except (ValueError, RecursionError) as e:
            raise UserError(f"{path!r} cannot be read as JSON: {_json_limit(e)}. Fix the file.") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path!r} line {lineno} is not valid JSON ({_json_where(e, f'column {e.colno}')}). Each line "
                "of a JSON Lines file must be one object with prompt, chosen and rejected."
            ) from None
        except (ValueError, RecursionError) as e:
            raise UserError(
                f"{path!r} line {lineno} cannot be read as JSON: {_json_limit(e)}. Fix that line."
            ) from None
    return rows


def _json_where(e: json.JSONDecodeError, where: str) -> str:
    """ "Unterminated string starting at line 14, column 5": some of Python's messages end in "at" already."""
    return f"{e.msg.removesuffix(' at')} at {where}"


def _json_limit(e: Exception) -> str:
    """Python's JSON reader fails past its limits with a RecursionError or a bare ValueError: say which limit."""
    if isinstance(e, RecursionError):
        return "it nests arrays or objects deeper than Python's JSON reader follows"
    return one_line(e)  # e.g. an integer of more than 4300 digits


def kind_of(value: Any) -> str:
    """What an unexpected value is, for a message ("a number (5)", "null", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r:.20})"
    if isinstance(value, str):
        return f"the text {value!r:.40}"
    if isinstance(value, dict):
        return f"an object with keys {sorted(map(str, value))[:8]}"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' * (len(value) != 1)}"
    return f"a {type(value).__name__}"
