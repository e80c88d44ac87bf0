"""Preference data: the rows of files (readers.py), a hub dataset or generated data (toy.py, sentiment.py), each
checked, formatted with the prompt format, and split.

Every problem a user can fix is raised as UserError naming the file, row and field. Rows that would
teach nothing (chosen == rejected, a prompt that alone fills max_length, which TRL drops silently, or a
pair that differs only past max_length) are dropped, counted and reported; so are eval rows that train
also holds. load_preferences is the one path from data to trainer rows: the run and preflight both call it.
"""

import json
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Set

from omegaconf import DictConfig

from dpo_lab.config import PROMPT_FORMATS
from dpo_lab.errors import UserError
from dpo_lab.readers import kind_of, one_line, read_rows

log = logging.getLogger(__name__)

FIELDS = ("prompt", "chosen", "rejected")
UNPAIRED = ("prompt", "completion", "label")  # one answer per row, labelled desirable or not (method=kto)
# The roles of TRL's conversational format (tool: a tool's answer in an agent transcript). A model's chat template
# may accept fewer (the toy model's knows only user and assistant): check_chat_template asks the template itself.
ROLES = ("system", "user", "assistant", "tool")
FIELD_FIX = (
    'Each field is text, or a list of messages such as [{"role": "user", "content": "..."}] (role one of '
    f"{', '.join(ROLES)}; content text). Fix the row or remove it."
)


@dataclass
class Preferences:
    """Checked, formatted rows for the trainer (extra columns such as required_words are kept)."""

    train: List[Dict[str, Any]]
    eval: List[Dict[str, Any]]
    shape: str = "paired"  # paired (prompt, chosen, rejected) | unpaired (prompt, completion, label)
    longest: int = 0  # tokens of train's longest prompt + answer (a batch pads to its longest: memory.plan)


def _text_problem(text: str) -> Optional[str]:
    """Why a string cannot reach a tokenizer (None if it can): a lone surrogate, from a \\ud800-style JSON escape."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"holds {text[e.start]!r}, half of a UTF-16 surrogate pair (a broken \\u escape) no tokenizer reads"
    return None


def _field_problem(value: Any) -> Optional[str]:
    """Why `value` cannot be a prompt, chosen or rejected, as the end of a sentence (None if it can): it must be
    non-blank text or a list of messages with a known role and text content."""
    if isinstance(value, str):
        return "is empty" if not value.strip() else _text_problem(value)
    if not isinstance(value, list):
        return f"is {kind_of(value)}, not text"
    if not value:
        return "is an empty list of messages"
    for j, message in enumerate(value, start=1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            return f'message {j} is {kind_of(message)}, not a {{"role", "content"}} object'
        role, content = message["role"], message["content"]
        if role not in ROLES:
            shown = repr(role)[:40] if isinstance(role, str) else kind_of(role)
            return f"message {j} has role {shown}, which TRL and chat templates do not know"
        if not isinstance(content, str):
            return f"message {j} has content {kind_of(content)}, not text"
        problem = _text_problem(content)
        if problem:
            return f"message {j} content {problem}"
    if not any(m["content"].strip() for m in value):
        return "is empty (every message's content is blank)"
    return None


MESSAGE_KEY_KINDS = {bool: "boolean", int: "number", float: "number", str: "text", list: "list", dict: "object"}


def _message_key_kind(value: Any) -> str:
    # Arrow stores a key of every message in one typed column: int and float mix there, other kinds do not
    return MESSAGE_KEY_KINDS.get(type(value), type(value).__name__)


def check_rows(rows: List[Dict[str, Any]], source: str) -> List[Dict[str, Any]]:
    """The rows, after failing on a missing, empty or malformed field, or on rows of mixed kinds (naming row and
    field). Pairs that teach nothing are drop_untrainable's."""
    if not rows:
        raise UserError(f"{source} has no rows. It needs rows with prompt, chosen and rejected.")
    kinds = {False: "plain text", True: "conversational (lists of messages)"}
    key_kinds, first = {}, None
    for i, row in enumerate(rows, start=1):
        for name in FIELDS:
            if name not in row:
                raise UserError(
                    f"{source} row {i} has no {name!r} field (it has {sorted(map(str, row))[:10]}). Every "
                    "row needs prompt, chosen and rejected; rename the fields or fix the row."
                )
            problem = _field_problem(row[name])
            if problem and problem.startswith("is empty"):
                raise UserError(f"{source} row {i} field {name!r} {problem}. Fill it or remove the row.")
            if problem:
                raise UserError(f"{source} row {i} field {name!r} {problem}. {FIELD_FIX}")
        conversational = [isinstance(row[name], list) for name in FIELDS]
        if len(set(conversational)) > 1:  # TRL decides per row from one field: the others would break its template
            plain = [n for n, c in zip(FIELDS, conversational) if not c]
            raise UserError(
                f"{source} row {i} mixes plain text ({', '.join(plain)}) with lists of messages. A row "
                "is one kind: make all three fields lists of messages (the prompt as "
                '[{"role": "user", "content": "..."}], chosen and rejected as the answer turns only) or '
                "all three plain text."
            )
        if first is None:
            first = conversational[0]
        elif conversational[0] != first:  # TRL reads the whole file the way its first row reads
            raise UserError(
                f"{source} row {i} is {kinds[conversational[0]]} but row 1 is {kinds[first]}. All rows "
                "of a file must be one kind: convert the rows of the other kind."
            )
        for name in FIELDS if first else ():
            for j, message in enumerate(row[name], start=1):
                for key, value in message.items():
                    if key in ("role", "content") or value is None:
                        continue
                    seen = key_kinds.setdefault(key, (_message_key_kind(value), i))
                    if seen[0] != _message_key_kind(value):
                        raise UserError(
                            f"{source} row {i} field {name!r} message {j} has {key!r} = {kind_of(value)}, "
                            f"but in row {seen[1]} {key!r} is {seen[0]}. The trainer stores every message "
                            "in one table, so a key needs one kind throughout: make them agree or drop the "
                            "key."
                        )
    return rows


def is_unpaired(rows: List[Dict[str, Any]]) -> bool:
    """Whether a file holds unpaired rows (prompt, completion, label), judged by its first row as TRL does."""
    return (
        bool(rows) and isinstance(rows[0], dict) and "chosen" not in rows[0] and {"completion", "label"} <= set(rows[0])
    )


def check_unpaired_rows(rows: List[Dict[str, Any]], source: str) -> List[Dict[str, Any]]:
    """Unpaired rows with their fields checked (naming row and field) and each label a bool."""
    out, kinds = [], set()
    for i, row in enumerate(rows, start=1):
        for name in UNPAIRED:
            if name not in row:
                raise UserError(
                    f"{source} row {i} has no {name!r} field (it has {sorted(map(str, row))[:10]}). Unpaired "
                    "rows need prompt, completion and label; fix the row."
                )
        for name in ("prompt", "completion"):
            problem = _field_problem(row[name])
            if problem:
                raise UserError(f"{source} row {i} field {name!r} {problem}. {FIELD_FIX}")
        label = row["label"].strip().lower() if isinstance(row["label"], str) else row["label"]
        if not (isinstance(label, (bool, int, float)) and label in (0, 1) or label in ("true", "false")):
            raise UserError(
                f"{source} row {i} field 'label' is {kind_of(row['label'])}: use true (a desirable answer) or "
                'false (an undesirable one); 1/0 and "true"/"false" work too.'
            )
        kinds.add((isinstance(row["prompt"], list), isinstance(row["completion"], list)))
        out.append({**row, "label": label == "true" if isinstance(label, str) else bool(label)})
    if len(kinds) > 1 or any(p != c for p, c in kinds):
        raise UserError(
            f"{source} mixes plain text with lists of messages: make every prompt and completion one kind "
            "(both lists of messages, or both text)."
        )
    labels = {r["label"] for r in out}
    if len(labels) == 1:
        log.warning(
            "%s: every row is %s; KTO learns best from both kinds.",
            source,
            "desirable" if labels == {True} else "undesirable",
        )
    return out


def format_unpaired(rows: List[Dict[str, Any]], prompt_format: str) -> List[Dict[str, Any]]:
    """format_prompts for unpaired rows: 'chat' makes prompt and completion messages, a named format the prompt."""
    out = []
    for row in rows:
        row = dict(row)
        if isinstance(row["prompt"], str) and prompt_format == "chat":
            row["prompt"] = [{"role": "user", "content": row["prompt"]}]
            row["completion"] = [{"role": "assistant", "content": row["completion"]}]
        elif isinstance(row["prompt"], str):
            row["prompt"] = PROMPT_FORMATS.get(prompt_format, prompt_format).format(prompt=row["prompt"])
        out.append(row)
    return out


def sample_rows(prefs: "Preferences") -> List[Dict[str, Any]]:
    """The eval rows checkpoint samples answer: the pairs, or one row per prompt of unpaired rows (its desirable
    completion, if any, as the ground truth `chosen`)."""
    if prefs.shape == "paired":
        return prefs.eval
    by_prompt: Dict[str, Dict[str, Any]] = {}
    for r in prefs.eval:
        key = json.dumps(r["prompt"], sort_keys=True)
        if key not in by_prompt or (r["label"] and not by_prompt[key]["label"]):
            by_prompt[key] = r
    return [{**r, "chosen": r["completion"] if r["label"] else ""} for r in by_prompt.values()]


def check_chat_template(rows: List[Dict[str, Any]], tokenizer, source: str) -> None:
    """Render every conversational row as TRL will (the prompt, prompt + chosen, prompt + rejected), so a chat
    template that refuses one (a role it lacks, turns out of order) names the row instead of raising in Jinja.
    `rows` are the file's rows as read, so the numbers are the file's."""
    if not isinstance(rows[0]["prompt"], list):
        return
    from jinja2 import TemplateError

    require_chat_template(tokenizer, source)
    for i, row in enumerate(rows, start=1):
        answers = (
            [("completion", row["completion"])]
            if "completion" in row
            else [("chosen", row["chosen"]), ("rejected", row["rejected"])]
        )
        for part, messages in [("prompt", row["prompt"])] + [(f"prompt + {k}", row["prompt"] + a) for k, a in answers]:
            try:
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=part == "prompt")
            except TemplateError as e:
                raise UserError(
                    f"{source} row {i}: the chat template of {tokenizer.name_or_path!r} refuses its "
                    f"{part} messages ({one_line(e)}). Change the row to roles and turns that template "
                    "accepts, or use a model whose template accepts them."
                ) from None


def require_chat_template(tokenizer, source: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"{source}: conversational rows (or data.prompt_format=chat) need the model's chat template, "
            f"but the tokenizer of {tokenizer.name_or_path!r} has none. Use a chat model, or plain-text "
            "rows with a data.prompt_format such as phi2 or alpaca."
        )


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
        return list(
            tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )
    return tokenizer(text=prompt)["input_ids"]


def _token_ids(tokenizer, values: List[Any], source: str, prompts: bool) -> List[List[int]]:
    """Token ids of prompts (`prompts`) or of prompt + answer sequences, as TRL's DPOTrainer tokenizes them; text in
    batches (one call per thousand is several times faster than one per row)."""
    from jinja2 import TemplateError

    if values and isinstance(values[0], str):
        return [ids for i in range(0, len(values), 1000) for ids in tokenizer(text=values[i : i + 1000])["input_ids"]]
    out = []
    for messages in values:
        try:
            out.append(
                list(
                    tokenizer.apply_chat_template(
                        messages, add_generation_prompt=prompts, tokenize=True, return_dict=True
                    )["input_ids"]
                )
            )
        except TemplateError as e:  # check_chat_template names the row; this is data.prompt_format=chat's case
            raise UserError(
                f"{source}: the chat template of {tokenizer.name_or_path!r} refuses the messages "
                f"{as_text(messages)!r:.60} ({one_line(e)}). Use another data.prompt_format, or a "
                "model whose template accepts them."
            ) from None
    return out


def _common_prefix(a: List[int], b: List[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def drop_untrainable(rows, tokenizer, max_length: int, source: str):
    """Drop, count and report in one line the rows that would train on nothing, judged on the tokens TRL's DPOTrainer
    builds: chosen == rejected (as text or as tokens), a prompt that alone reaches max_length (TRL drops it silently),
    and a pair whose answers differ only past max_length (the trainer keeps the first max_length tokens of prompt +
    answer, so both become one sequence: margin 0). Unpaired rows (method=kto) get the prompt check alone."""
    if isinstance(rows[0]["prompt"], list):
        require_chat_template(tokenizer, source)
    paired = "chosen" in rows[0]
    lengths = [len(ids) for ids in _token_ids(tokenizer, [r["prompt"] for r in rows], source, prompts=True)]
    fits = [r for r, n in zip(rows, lengths) if n < max_length]
    dropped = {"identical": 0, "long": len(rows) - len(fits), "cut": 0}
    # The least max_length any dropped row needs: past its prompt, or (a cut pair) to its first differing token.
    enough = [n + 1 for n in lengths if n >= max_length]
    kept = fits
    if paired and fits:
        # TRL appends the end-of-sequence token to plain-text answers that lack it, then tokenizes prompt + answer.
        eos = "" if isinstance(fits[0]["prompt"], list) else tokenizer.eos_token or ""
        sequences = [
            _token_ids(tokenizer, [r["prompt"] + _with_eos(r[k], eos) for r in fits], source, prompts=False)
            for k in ("chosen", "rejected")
        ]
        kept = []
        for row, chosen, rejected in zip(fits, *sequences):
            if row["chosen"] == row["rejected"] or chosen == rejected:
                dropped["identical"] += 1
            elif chosen[:max_length] == rejected[:max_length]:
                dropped["cut"] += 1
                enough.append(_common_prefix(chosen, rejected) + 1)
            else:
                kept.append(row)
    why = {
        "identical": "with chosen == rejected (as text or as tokens: no preference to learn)",
        "long": f"whose prompt alone is >= trainer.max_length={max_length} tokens (no room left for the answer)",
        "cut": f"whose chosen and rejected differ only after trainer.max_length={max_length} tokens (the trainer "
        "cuts both there, into one sequence: margin 0)",
    }
    counts = ", ".join(f"{n} {why[k]}" for k, n in dropped.items() if n)
    fix = (
        f"Raise trainer.max_length (to at least {min(enough)} for any of them to train) or shorten those rows."
        if enough
        else "Fix the rows or remove them."
    )
    if not kept:
        if dropped["long"] == len(rows):  # the commonest case, said plainly
            shortest = min(enough) - 1
            what = f"every prompt is at least trainer.max_length={max_length} tokens long (the shortest is {shortest})"
            raise UserError(f"{source}: {what}, so no row is left to train on. {fix}")
        raise UserError(f"{source}: no row is left to train on: of its {len(rows)} rows, {counts}. {fix}")
    if len(kept) < len(rows):
        log.warning(
            "%s: dropped %d of %d rows that would train on nothing: %s.%s",
            source,
            len(rows) - len(kept),
            len(rows),
            counts,
            f" {fix}" if dropped["long"] or dropped["cut"] else "",
        )
    return kept


def _with_eos(answer: Any, eos: str) -> Any:
    return answer + eos if isinstance(answer, str) and eos and not answer.endswith(eos) else answer


def _load_hub(cfg: DictConfig):
    import datasets

    try:
        ds = datasets.load_dataset(cfg.name, cfg.subset)
    except Exception as e:
        raise UserError(
            f"Cannot load hub dataset {cfg.name!r}: {one_line(e)}. Check the name and your internet access, "
            "or download it and use data=json with local files."
        ) from None
    for key in ("train_split", "eval_split"):
        if cfg[key] and cfg[key] not in ds:
            raise UserError(
                f"data.{key}={cfg[key]}: hub dataset {cfg.name!r} has no such split; it has {list(ds)}. Set "
                f"data.{key} to one of them."
            )
    train = ds[cfg.train_split].to_list()
    evals = ds[cfg.eval_split].to_list() if cfg.eval_split else None
    return train, evals


def _usable(rows: List[Dict[str, Any]], source: str, prompt_format: str, tokenizer, max_length: int):
    """A file's rows ready for the trainer: checked (errors name the file's row numbers), formatted, and without the
    pairs that teach nothing (counted)."""
    if is_unpaired(rows):
        kept = check_unpaired_rows(rows, source)
        check_chat_template(rows, tokenizer, source)
        return drop_untrainable(format_unpaired(kept, prompt_format), tokenizer, max_length, source)
    kept = check_rows(rows, source)
    check_chat_template(rows, tokenizer, source)
    return drop_untrainable(format_prompts(kept, prompt_format), tokenizer, max_length, source)


def _key(value: Any) -> str:
    """A prompt, or a row's fields, as one comparable string (messages are lists of dicts)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _row_key(row: Dict[str, Any]) -> str:
    return _key([row[k] for k in (FIELDS if "chosen" in row else UNPAIRED)])


def split_by_prompt(rows: List[Dict[str, Any]], fraction: float, seed: int, source: str):
    """(train, eval): about `fraction` of the rows held out, seeded, whole prompts at a time. DPO data often holds
    several pairs per prompt (and files repeat rows): an eval pair whose prompt train holds too measures recall. With
    one row per prompt this is a plain seeded row split (the same rows as before prompts were grouped)."""
    import random

    groups: Dict[str, List[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(_key(row["prompt"]), []).append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)  # the permutation depends only on the length: singletons split as rows did
    n_eval = max(1, int(round(len(rows) * fraction)))
    too_few = len(rows) - n_eval < 1
    if too_few or len(order) < 2:
        few = f"only {len(rows)} usable rows" if too_few else f"{len(rows)} usable rows, all with one prompt"
        raise UserError(
            f"{source} has {few}: too few to hold out an eval split (it holds out whole prompts, so that eval "
            "never scores a prompt train saw). Add rows with other prompts or pass data.eval_file."
        )
    held: Set[int] = set()
    for group in order[:-1]:  # the last group stays in train whatever the fraction
        if len(held) >= n_eval:
            break
        held.update(group)
    evals = [r for i, r in enumerate(rows) if i in held]
    train = [r for i, r in enumerate(rows) if i not in held]
    shared = sum(len(g) for g in groups.values() if len(g) > 1)
    duplicates = len(rows) - len({_row_key(r) for r in rows})
    log.info(
        "No eval file: held out %d of %d usable train rows for evaluation (data.eval_fraction=%s, seed %d)%s.",
        len(evals),
        len(rows),
        fraction,
        seed,
        f", whole prompts at a time: {shared} rows share a prompt with another ({duplicates} exact repeats) and "
        "each prompt's rows are all on one side"
        if shared
        else "",
    )
    return train, evals


def drop_seen(evals: List[Dict[str, Any]], train: List[Dict[str, Any]], eval_name: str, train_name: str):
    """The eval rows without those train holds too (same prompt and answers): eval would score pairs it trained on."""
    seen = {_row_key(r) for r in train}
    kept = [r for r in evals if _row_key(r) not in seen]
    if not kept:
        raise UserError(
            f"{eval_name}: every one of its {len(evals)} usable rows is also in {train_name} (same prompt and "
            "answers), so eval would only score rows the model trained on. Point data.eval_file at held-out "
            "rows, or leave it out to hold out data.eval_fraction of the train rows, whole prompts at a time."
        )
    if len(kept) < len(evals):
        log.warning(
            "%s: dropped %d of %d eval rows that %s holds too (same prompt and answers): eval would score rows "
            "the model trained on.",
            eval_name,
            len(evals) - len(kept),
            len(evals),
            train_name,
        )
    return kept


def load_preferences(
    cfg: DictConfig, tokenizer, max_length: int, built: Optional[Dict[str, str]] = None
) -> Preferences:
    """Read, check, format and split the data described by the `data` config group: the run's one path from data to
    trainer rows, which preflight runs too. `built`: the train_file / eval_file of generated data (toy, sentiment)."""
    if cfg.source == "hub":
        train, evals = _load_hub(cfg)
        train_name, eval_name = f"hub:{cfg.name}[{cfg.train_split}]", f"hub:{cfg.name}[{cfg.eval_split}]"
    else:
        files = (
            built if cfg.source in ("toy", "sentiment") else {"train_file": cfg.train_file, "eval_file": cfg.eval_file}
        )
        train_name, eval_name = files["train_file"], files.get("eval_file")
        train = read_rows(train_name)
        evals = read_rows(eval_name) if eval_name else None

    # Unusable rows go before the split, so the held-out rows are usable ones and max_*_samples count usable rows.
    train = _usable(train, train_name, cfg.prompt_format, tokenizer, max_length)
    own_eval = evals is not None  # a split of its own (eval_file, a hub split): it may repeat rows train holds
    if not own_eval:
        train, evals = split_by_prompt(train, cfg.eval_fraction, cfg.split_seed, train_name)
    else:
        evals = _usable(evals, eval_name, cfg.prompt_format, tokenizer, max_length)

    shapes = {"unpaired" if "completion" in rows[0] else "paired" for rows in (train, evals)}
    if len(shapes) > 1:
        raise UserError(
            f"{train_name} and {eval_name} hold different kinds of rows (one paired: prompt, chosen, "
            "rejected; the other unpaired: prompt, completion, label): give both files one kind."
        )
    if cfg.max_train_samples:
        train = train[: cfg.max_train_samples]
    if own_eval:
        evals = drop_seen(evals, train, eval_name, train_name)
    if cfg.max_eval_samples:
        evals = evals[: cfg.max_eval_samples]
    shape = shapes.pop()
    return Preferences(train, evals, shape, longest(train, tokenizer, train_name))


def longest(rows: List[Dict[str, Any]], tokenizer, source: str) -> int:
    """Tokens of the longest prompt + answer (with the end-of-sequence token TRL appends) among `rows`."""
    if not rows:
        return 0
    eos = "" if isinstance(rows[0]["prompt"], list) else tokenizer.eos_token or ""
    answers = ("chosen", "rejected") if "chosen" in rows[0] else ("completion",)
    return max(
        len(ids)
        for k in answers
        for ids in _token_ids(tokenizer, [r["prompt"] + _with_eos(r[k], eos) for r in rows], source, prompts=False)
    )
