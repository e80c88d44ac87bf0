"""What a job directory holds, and the JSON helpers every module reads and writes it with.

    <job dir>/config.yaml     the fully resolved config (what `python -m dpo_lab rerun` reads)
    <job dir>/job.json        run name, wandb group, overrides, chosen group options, wandb run id
    <job dir>/run_info.json   seed, package versions, git commit, command line
    <job dir>/result.json     status, error, final eval metrics, timings, wandb run id
    <job dir>/samples.jsonl   checkpoint samples, one row per prompt and step
    <job dir>/train.log       the job's log; wandb/, checkpoints/ and final/ beside it

The lowest module of the package: it imports nothing of dpo_lab, so anything may import it.
"""

import contextlib
import json
import logging
import os
import tempfile
from typing import Any, Dict, Iterator, List, Optional

log = logging.getLogger(__name__)
_UMASK = os.umask(0o22)  # read once, at import: os.umask can only be read by setting it, which races with threads
os.umask(_UMASK)

CONFIG, JOB, RUN_INFO, RESULT, SAMPLES, LOG = (
    "config.yaml",
    "job.json",
    "run_info.json",
    "result.json",
    "samples.jsonl",
    "train.log",
)


def is_main_rank() -> bool:
    """Under `accelerate launch` / torchrun every rank runs the job; only rank 0 writes its files and logs to wandb."""
    return int(os.environ.get("RANK", "0")) == 0


def launch_id() -> Optional[str]:
    """What the ranks of one torchrun / accelerate launch share and no other running launch has (its rendezvous
    address), or None outside such a launch: a job dir locked by rank 0 is not busy for ranks 1..N of its launch."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return (
        f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}/{os.environ.get('TORCHELASTIC_RUN_ID', '')}"
    )


@contextlib.contextmanager
def atomic_write(path: str, mode: Optional[str] = "w", **open_kwargs) -> Iterator[Any]:
    """Write `path` all at once or not at all: yields a file object on a temp file beside `path`, then fsyncs it
    and renames it over `path`. A kill or error midway leaves the previous file whole (the temp file is removed on
    error); each writer gets its own temp name, so processes writing the same file at once never clash on it (the
    last rename wins). The temp name keeps `path`'s extension (`.x.png.tmp1a2b.png`) for writers that go by it.
    With mode=None, yields the temp path instead of a file, for writers that open files themselves (savefig)."""
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp", suffix=os.path.splitext(name)[1], dir=folder)
    try:
        if mode is None:
            os.close(fd)
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            with os.fdopen(fd, mode, **open_kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; open() would have made it readable
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_json(path: str, obj: Any) -> None:
    """Write `obj` atomically (rank 0 only): a killed job never leaves half a file."""
    if not is_main_rank():
        return
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, default=str)


def read_json(path: str) -> Optional[Dict[str, Any]]:
    """The object in `path`, or None if it is missing or not (yet) valid JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def unreadable(path: str) -> Optional[str]:
    """Why the JSON object file `path` cannot be read (`cut off or not JSON: ...`, `empty`), or None if it reads or
    does not exist. Our JSON files are written whole (write_json), so one that is there and does not read is damaged."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        return e.strerror or str(e)
    if not data.strip():
        return "empty"
    try:
        obj = json.loads(data.decode("utf-8"))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        return f"cut off or not JSON: {e}"
    return None if isinstance(obj, dict) else f"a JSON {type(obj).__name__}, not an object"


def read_jsonl(path: str) -> List[Dict[str, Any]]:
    """The rows of a JSON Lines file (samples.jsonl); empty if the file does not exist.

    The file is append-only, so a kill during an append can leave a partial last line: that line is skipped with a
    warning (its checkpoint is sampled again on resume). A bad line before the last is damage, not a cut:
    ValueError naming the file and line."""
    if not os.path.isfile(path):
        return []
    with open(path, "rb") as f:  # bytes: a cut can split a multi-byte character as well as a row
        lines = [(n, line) for n, line in enumerate(f.read().split(b"\n"), 1) if line.strip()]
    rows = []
    for n, line in lines:
        try:
            rows.append(json.loads(line.decode("utf-8")))
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            if n == lines[-1][0]:
                log.warning("%s: ignoring line %d, cut short (%s), presumably by a kill during an append.", path, n, e)
                break
            raise ValueError(
                f"{path}, line {n}: not a JSON row ({e}); the file is damaged there. Repair or delete "
                "that line, or move the file aside (a resumed run then samples its checkpoints again)."
            ) from None
    return rows
