"""Preference data: read files or a hub dataset, check every row, apply the prompt format, split.

Every problem a user can fix is raised as UserError naming the file, row and field. Rows that would
teach nothing (chosen == rejected, or a prompt that alone fills max_length, which TRL drops silently)
are dropped, counted and reported.
"""

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig

from dpo_lab.config import PROMPT_FORMATS
from dpo_lab.errors import UserError

log = logging.getLogger(__name__)

FIELDS = ("prompt", "chosen", "rejected")


@dataclass
class Preferences:
    """Checked, formatted rows for the trainer (extra columns such as required_words are kept)."""

    train: List[Dict[str, Any]]
    eval: List[Dict[str, Any]]


def read_rows(path: str) -> List[Dict[str, Any]]:
    """Read a JSON array, JSON Lines, Parquet or CSV file into a list of dicts."""
    if os.path.isdir(path):
        raise UserError(f"Data file {path!r} is a directory. Point data.train_file / data.eval_file at the file "
                        "itself (.json, .jsonl, .parquet or .csv) inside it.")  # fmt: skip
    if not os.path.isfile(path):
        raise UserError(f"Data file {path!r} does not exist. Check data.train_file / data.eval_file (paths are "
                        f"relative to the directory you ran from: {os.getcwd()}).")  # fmt: skip
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".parquet", ".csv"):
            import pandas as pd

            frame = pd.read_parquet(path) if ext == ".parquet" else pd.read_csv(path, keep_default_na=False)
            return frame.to_dict(orient="records")
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"Data file {path!r} is not UTF-8 text ({e}). Save it as UTF-8 JSON / JSON Lines.") from None
    except OSError as e:
        raise UserError(f"Cannot read data file {path!r}: {e}.") from None
    except Exception as e:  # pandas/pyarrow parse errors have many types
        raise UserError(f"Cannot parse {path!r} as {ext[1:]}: {e}.") from None
    if not text.strip():
        raise UserError(f"Data file {path!r} is empty. It needs rows with prompt, chosen and rejected.")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path!r} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}. "
                            "Fix that line (a JSON array of objects) or write the file as JSON Lines.") from None  # fmt: skip
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path!r} line {lineno} is not valid JSON ({e.msg}, column {e.colno}). Each line "
                                "of a JSON Lines file must be one object with prompt, chosen and rejected.") from None  # fmt: skip
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"{path!r} must hold objects with prompt, chosen and rejected (a JSON array of objects or "
                        "one object per line).")  # fmt: skip
    return rows


def _is_nonempty(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, list):  # conversational: a list of {"role", "content"} messages
        return bool(value) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    return False


def check_rows(rows: List[Dict[str, Any]], source: str) -> List[Dict[str, Any]]:
    """Fail on a missing or empty field (naming row and field); drop and count chosen == rejected pairs."""
    if not rows:
        raise UserError(f"{source} has no rows. It needs rows with prompt, chosen and rejected.")
    kept, identical = [], 0
    for i, row in enumerate(rows, start=1):
        for name in FIELDS:
            if name not in row:
                raise UserError(f"{source} row {i} has no {name!r} field (it has {sorted(row)}). Every row needs "
                                "prompt, chosen and rejected; rename the fields or fix the row.")  # fmt: skip
            if not _is_nonempty(row[name]):
                raise UserError(f"{source} row {i} field {name!r} is empty or not text ({row[name]!r:.60}). Fill it "
                                "or remove the row.")  # fmt: skip
        if row["chosen"] == row["rejected"]:
            identical += 1
            continue
        kept.append(row)
    if identical:
        log.warning("%s: dropped %d of %d rows where chosen == rejected (no preference to learn).", source, identical, len(rows))
    if not kept:
        raise UserError(f"{source}: every row has chosen == rejected; there is nothing to learn.")
    return kept


def as_text(value: Any) -> str:
    """A prompt or answer for display: plain text, or the contents of a list of chat messages."""
    return value if isinstance(value, str) else "\n".join(str(m["content"]) for m in value)


def format_prompts(rows: List[Dict[str, Any]], prompt_format: str) -> List[Dict[str, Any]]:
    """Apply the prompt format. 'chat' turns plain rows into messages so TRL applies the chat template."""
    out = []
    for row in rows:
        row = dict(row)
        if isinstance(row["prompt"], list):  # already conversational: the chat template applies as is
            out.append(row)
            continue
        if prompt_format == "chat":
            row["prompt"] = [{"role": "user", "content": row["prompt"]}]
            row["chosen"] = [{"role": "assistant", "content": row["chosen"]}]
            row["rejected"] = [{"role": "assistant", "content": row["rejected"]}]
        else:
            row["prompt"] = PROMPT_FORMATS.get(prompt_format, prompt_format).format(prompt=row["prompt"])
        out.append(row)
    return out


def prompt_ids(tokenizer, prompt: Any) -> List[int]:
    """Token ids of a prompt as TRL's DPOTrainer builds them (chat template with generation prompt for messages)."""
    if isinstance(prompt, list):
        return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])  # fmt: skip
    return tokenizer(text=prompt)["input_ids"]


def drop_long_prompts(rows, tokenizer, max_length: int, source: str):
    """Drop rows whose prompt alone reaches max_length: TRL would silently drop them anyway."""
    kept = [r for r in rows if len(prompt_ids(tokenizer, r["prompt"])) < max_length]
    dropped = len(rows) - len(kept)
    if dropped:
        log.warning("%s: dropped %d of %d rows whose prompt alone is >= trainer.max_length=%d tokens (no room left "
                    "for the answer). Raise trainer.max_length or shorten those prompts.", source, dropped, len(rows), max_length)  # fmt: skip
    if not kept:
        raise UserError(f"{source}: every prompt is at least trainer.max_length={max_length} tokens long, so no "
                        "pair is left to train on. Raise trainer.max_length.")  # fmt: skip
    return kept


def _load_hub(cfg: DictConfig):
    import datasets

    try:
        ds = datasets.load_dataset(cfg.name, cfg.subset)
    except Exception as e:
        raise UserError(f"Cannot load hub dataset {cfg.name!r}: {e}. Check the name and your internet access, "
                        "or download it and use data=json with local files.") from None  # fmt: skip
    if cfg.train_split not in ds:
        raise UserError(f"Hub dataset {cfg.name!r} has no split {cfg.train_split!r}; it has {list(ds)}.")
    train = ds[cfg.train_split].to_list()
    evals = ds[cfg.eval_split].to_list() if cfg.eval_split else None
    return train, evals


def load_preferences(cfg: DictConfig, tokenizer, max_length: int, toy_files: Optional[Dict[str, str]] = None) -> Preferences:
    """Read, check, format and split the data described by the `data` config group."""
    if cfg.source == "hub":
        train, evals = _load_hub(cfg)
        train_name, eval_name = f"hub:{cfg.name}[{cfg.train_split}]", f"hub:{cfg.name}[{cfg.eval_split}]"
    else:
        files = toy_files if cfg.source == "toy" else {"train_file": cfg.train_file, "eval_file": cfg.eval_file}
        train_name, eval_name = files["train_file"], files.get("eval_file")
        train = read_rows(train_name)
        evals = read_rows(eval_name) if eval_name else None

    train = check_rows(train, train_name)
    if evals is None:
        import random

        rng = random.Random(cfg.split_seed)
        order = list(range(len(train)))
        rng.shuffle(order)
        n_eval = max(1, int(round(len(train) * cfg.eval_fraction)))
        if len(train) - n_eval < 1:
            raise UserError(f"{train_name} has only {len(train)} usable rows: too few to hold out an eval split. "
                            "Add rows or pass data.eval_file.")  # fmt: skip
        held = set(order[:n_eval])
        evals = [train[i] for i in sorted(held)]
        train = [r for i, r in enumerate(train) if i not in held]
        eval_name = f"{train_name} (held-out {cfg.eval_fraction:.0%}, seed {cfg.split_seed})"
        log.info("No eval file: held out %d of %d train rows for evaluation.", len(evals), len(train) + len(evals))
    else:
        evals = check_rows(evals, eval_name)

    if cfg.max_train_samples:
        train = train[: cfg.max_train_samples]
    if cfg.max_eval_samples:
        evals = evals[: cfg.max_eval_samples]
    train = drop_long_prompts(format_prompts(train, cfg.prompt_format), tokenizer, max_length, train_name)
    evals = drop_long_prompts(format_prompts(evals, cfg.prompt_format), tokenizer, max_length, eval_name)
    return Preferences(train=train, eval=evals)
