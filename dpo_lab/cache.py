"""Build-once artifacts: the toy data and model, the tiny model's warm-up, and what a sweep's jobs share (reuse.py).

An artifact is a directory whose DONE file holds the parameters it was built from. It is built in a temp dir beside
its place and renamed into place, so it is either absent or complete; in the cache (`$DPO_LAB_CACHE`, default
~/.cache/dpo-lab) it is named `<kind>-<hash of its parameters>` and built under a file lock, so the jobs of a sweep
that all need it build it once.

A finished artifact is used without a lock, so a cache mounted read-only serves what it holds. Its directory's mtime
records its last use; `entries` and `prune` (python -m dpo_lab cache) list the cache and trim it by age or size.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from dpo_lab.distributed import THREADS_BEFORE_ENV
from dpo_lab.errors import EXIT_OK, UserError

log = logging.getLogger(__name__)

Params = Dict[str, Any]

# Set by torchrun / accelerate launch; a child process without them trains alone instead of joining the job's group.
DISTRIBUTED_ENV = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


def root(cache_dir: Union[str, Path, None] = None) -> Path:
    return Path(cache_dir or os.environ.get("DPO_LAB_CACHE") or Path.home() / ".cache" / "dpo-lab")


def done_params(out_dir: Path) -> Optional[Params]:
    """The parameters `out_dir` was built from, or None if it holds no finished artifact."""
    try:
        return json.loads((out_dir / "DONE").read_text())
    except (OSError, json.JSONDecodeError):  # absent, unreadable, or a path through a file
        return None


def build(out_dir: Union[str, Path], params: Params, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` the artifact for `params` and move it to `out_dir`; at once if `out_dir` already holds it.

    Never overwrites a directory that holds something else."""
    out_dir = Path(out_dir).absolute()
    done = done_params(out_dir)
    if done == params:
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(
            f"{out_dir} exists but does not hold an artifact built with {params} (its DONE holds "
            f"{done}); remove it or choose another directory."
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        write(tmp)
        (tmp / "DONE").write_text(json.dumps(params, sort_keys=True))
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another process finished the same artifact first: use theirs
            if done_params(out_dir) != params:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def path(kind: str, params: Params, cache_dir: Union[str, Path, None] = None) -> Path:
    """Where the artifact of `kind` built from `params` lives: `<cache>/<kind>-<hash of params>`."""
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return root(cache_dir) / f"{kind}-{key}"


def ensure(kind: str, params: Params, write: Callable[[Path], None], cache_dir: Union[str, Path, None] = None) -> Path:
    """The cached artifact `<cache>/<kind>-<hash>` for `params`, built with `write` at most once. A finished one is
    returned at once, without a lock or a directory made, so a shared read-only cache serves every artifact it holds;
    one missing from a cache that cannot be written is a UserError."""
    from filelock import FileLock, Timeout

    global _said
    out_dir = path(kind, params, cache_dir)
    if done_params(out_dir) == params:
        touch(out_dir)
        return out_dir
    if not writable(out_dir.parent):
        raise missing_error([(out_dir, _what(out_dir, f"the {kind} artifact"))])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{out_dir}.lock")  # a second process waits, then finds DONE and returns
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _said = True  # the job building it said what the first run builds
        log.info("Waiting for another job or process to finish building %s into %s.", _what(out_dir, kind), out_dir)
        lock.acquire()
    try:
        if done_params(out_dir) is None:
            _say_what_is_coming()
            log.info("Building %s into %s (once: later runs with these parameters reuse it).", kind, out_dir)
            started = time.time()
            build(out_dir, params, write)
            log.info("Built %s in %.0fs.", kind, time.time() - started)
    finally:
        lock.release()
    return out_dir


def touch(out_dir: Path) -> None:
    """Record a use of the artifact: its directory's mtime is its last use (DONE's stays its build time). A cache
    this process cannot write keeps its old time."""
    try:
        os.utime(out_dir)
    except OSError:
        pass


def writable(directory: Union[str, Path, None] = None) -> bool:
    """Whether new artifacts can be made in `directory` (default: the cache): its nearest existing ancestor is a
    directory that takes new files (False on a read-only file system, also for root)."""
    d = _nearest(Path(directory or root()))
    return d.is_dir() and os.access(d, os.W_OK)


def _nearest(directory: Path) -> Path:
    """`directory`, or its nearest ancestor that exists."""
    d = directory.absolute()
    while not d.exists() and d != d.parent:
        d = d.parent
    return d


def _why_not_writable(directory: Path) -> str:
    d = _nearest(directory)
    if not d.is_dir():
        return f"{d} is a file"
    if os.statvfs(d).f_flag & os.ST_RDONLY:
        return f"{d} is on a read-only file system"
    return f"{d} refuses new files (no write permission)"


def missing_error(missing: List[Tuple[Path, str]], command: str = "") -> UserError:
    """The UserError for artifacts (dir, what it is) a run needs that a cache it cannot write does not hold: where,
    what, and the two fixes. `command`: the run's own command line with max_steps=1, when the caller knows it."""
    cache_dir = missing[0][0].parent
    names = [f"{what} ({out_dir.name})" for out_dir, what in missing]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    command = command or "python run.py <this run's overrides> max_steps=1"
    return UserError(
        f"DPO_LAB_CACHE={cache_dir} cannot be written ({_why_not_writable(cache_dir)}) and does not hold "
        f"{listed}, which this run needs. Point DPO_LAB_CACHE at a directory you can write to, or build "
        f"{'it' if len(names) == 1 else 'them'} once where the cache is writable: DPO_LAB_CACHE={cache_dir} {command} "
        "(docs/toy-task.md lists what a first run builds)."
    )


# A first run builds the toy model, its warm-up and the toy reward model: minutes of silence unless it says so. A run
# names what it will need (`expect`) and the first build says at once all that is still missing.
_expected: List[Tuple[Path, str, str]] = []  # (artifact dir, what it is, about how long it takes), in build order
_said = False


def expect(artifacts: List[Tuple[Path, str, str]]) -> None:
    """The cached artifacts this run needs, in the order it builds them, each (dir, what it is, about how long it
    takes): the first `ensure` that builds one says in one line which of them are missing. A process that waited for
    another's build says nothing: that one said it."""
    global _expected, _said
    _expected, _said = list(artifacts), False


def _say_what_is_coming() -> None:
    global _said
    missing = [
        (out_dir, f"{what} ({how_long})" if how_long else what)
        for out_dir, what, how_long in _expected
        if done_params(out_dir) is None
    ]
    if _said or not missing:
        return
    _said = True
    names = [what for _, what in missing]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    log.info(
        "First run on this machine with these settings: building %s into %s; later runs reuse %s.",
        listed,
        missing[0][0].parent,
        "it" if len(names) == 1 else "them",
    )


def _what(out_dir: Path, kind: str) -> str:
    return next((what for d, what, _ in _expected if d == out_dir), kind)


def write_in_child(function: str, out_dir: Path, kwargs: Params) -> None:
    """Call `module:function(out_dir, **kwargs)` in a child process: a model trained for the cache (the warm-up, the
    toy reward model) then leaves the job's memory (and its peak-memory figures) the DPO run's own, and, under
    torchrun / accelerate launch, stays outside the process group: in-process, its trainer would wait for the other
    ranks, which are waiting on our file lock."""
    module, name = function.split(":")
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV and not k.startswith("ACCELERATE_")}
    threads = env.pop(THREADS_BEFORE_ENV, None)  # a rank's thread share is not the model's: it trains as one job
    if threads is not None:
        env.pop("OMP_NUM_THREADS", None)
        env.update({"OMP_NUM_THREADS": threads} if threads else {})
    code = (
        f"import json, logging, sys; from {module} import {name}; logging.basicConfig(level=logging.INFO); "
        f"{name}(sys.argv[1], **json.loads(sys.argv[2]))"
    )
    subprocess.run([sys.executable, "-c", code, str(out_dir), json.dumps(kwargs)], env=env, check=True)


def training_args(out_dir: Path, steps: int, lr: float, batch_size: int, seed: int, device: str) -> Params:
    """The TrainingArguments fields the models trained into the cache share (the warm-up, the toy reward model)."""
    from dpo_lab.compat import checkpointing_arg

    return dict(
        output_dir=str(out_dir / "trainer"),
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,
        per_device_train_batch_size=batch_size,
        max_length=256,  # toy prompt + answer is ~90 tokens
        seed=seed,
        data_seed=seed,
        save_strategy="no",
        logging_steps=max(1, steps // 10),
        report_to="none",
        use_cpu=device == "cpu",  # the run's device: accelerate's process state is shared with the DPO trainer
        bf16=False,  # the tiny model trains in fp32 everywhere, so a cached model does not depend on the GPU
        fp16=False,
        **checkpointing_arg(False),  # TRL's default is on: pure overhead for a model this small (~25x slower on CPU)
        disable_tqdm=False,  # a progress bar: these are the longest waits of a first run
    )


# Listing and pruning the cache (python -m dpo_lab cache). An entry is `<kind>-<12 hex>` holding DONE; a
# `.<entry>.tmp-*` dir is a build in progress while the entry's lock is held, else one a killed build left.
ENTRY = re.compile(r"^(?P<kind>.+)-(?P<hash>[0-9a-f]{12})$")
ORPHAN = re.compile(r"^\.(?P<entry>.+-[0-9a-f]{12})\.tmp-")


@dataclass
class Entry:
    path: Path
    kind: str  # the artifact's kind, or "orphan" (a killed build's temp dir) or "lock" (a lock with no artifact)
    lock: Path  # the lock its builds hold
    size: int  # bytes
    built: float  # seconds since the epoch
    last_used: float
    params: Optional[Params] = None
    building: bool = False  # its lock is held by a live process: a build in progress, or a job waiting on one


def held(lock_file: Path) -> bool:
    """Whether a live process holds `lock_file` (a killed one's lock goes with its process). Never creates it; False
    where it cannot be opened for locking (a read-only cache, where nothing builds)."""
    from filelock import FileLock, Timeout

    if not lock_file.exists():
        return False
    lock = FileLock(str(lock_file), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    except OSError:
        return False
    lock.release()
    return False


def entries(cache_dir: Union[str, Path, None] = None) -> List[Entry]:
    """The cache's artifacts, killed builds' temp dirs and locks without an artifact, least recently used first.
    What is not dpo-lab's (any other name) is left out."""
    base = root(cache_dir)
    names = set(os.listdir(base)) if base.is_dir() else set()
    out = []
    for name in sorted(names):
        p, entry, orphan = base / name, ENTRY.match(name), ORPHAN.match(name)
        if p.is_symlink():
            continue
        if p.is_dir() and entry and (params := done_params(p)) is not None:
            built, lock = (p / "DONE").stat().st_mtime, base / f"{name}.lock"
            last = max(built, p.stat().st_mtime)
            out.append(Entry(p, entry["kind"], lock, _size(p), built, last, params, held(lock)))
        elif p.is_dir() and orphan:
            lock, mtime = base / f"{orphan['entry']}.lock", p.stat().st_mtime
            out.append(Entry(p, "orphan", lock, _size(p), mtime, mtime, building=held(lock)))
        elif name.endswith(".lock") and ENTRY.match(name[:-5]) and name[:-5] not in names:
            mtime = p.stat().st_mtime
            out.append(Entry(p, "lock", p, 0, mtime, mtime, building=held(p)))
    return sorted(out, key=lambda e: e.last_used)


def _size(directory: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, names in os.walk(directory) for f in names)


def parse_size(text: str) -> int:
    """'500MB', '20G', '1.5 GB', '0' -> bytes (1 kB = 1024 bytes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])i?)?b?\s*", text, re.IGNORECASE)
    if not m:
        raise UserError(
            f"--max-size {text}: not a size. Give a number with a unit, e.g. --max-size 500MB or --max-size 20GB."
        )
    return int(float(m[1]) * 1024 ** ("kmgt".index(m[2].lower()) + 1 if m[2] else 0))


def prune(
    cache_dir: Union[str, Path, None] = None,
    older_than_days: Optional[float] = None,
    max_size: Optional[int] = None,
    dry_run: bool = False,
) -> List[Entry]:
    """Remove killed builds' temp dirs, locks without an artifact, artifacts unused for `older_than_days`, then the
    least recently used until the rest fit in `max_size` bytes; never one whose lock a live process holds. Returns
    what was removed (with `dry_run`, what would be)."""
    from filelock import FileLock, Timeout

    base = root(cache_dir)
    if older_than_days is not None and older_than_days < 0:
        raise UserError(f"--older-than {older_than_days:g}: a number of days, 0 or more (e.g. --older-than 30).")
    if not dry_run and base.is_dir() and not writable(base):
        raise UserError(
            f"DPO_LAB_CACHE={base} cannot be pruned: {_why_not_writable(base)}. Prune it where it can be written "
            "(as its owner), or add --dry-run to see what a prune would remove."
        )
    found = [e for e in entries(base) if not e.building]
    gone = [e for e in found if e.kind in ("orphan", "lock")]
    artifacts = [e for e in found if e.kind not in ("orphan", "lock")]
    if older_than_days is not None:
        gone += [e for e in artifacts if e.last_used < time.time() - older_than_days * 86400]
    total = sum(e.size for e in artifacts if e not in gone)
    for e in artifacts:  # least recently used first
        if max_size is None or total <= max_size:
            break
        if e not in gone:
            gone.append(e)
            total -= e.size
    if dry_run:
        return gone
    removed = []
    for e in gone:
        lock = FileLock(str(e.lock), timeout=0)
        try:
            lock.acquire()  # a build that started since entries() keeps its artifact
        except Timeout:
            continue
        try:
            if e.kind != "lock":  # out of its place first, so no job finds half of it; a killed prune leaves an orphan
                trash = (
                    e.path if e.kind == "orphan" else Path(tempfile.mkdtemp(prefix=f".{e.path.name}.tmp-", dir=base))
                )
                os.replace(e.path, trash)
                shutil.rmtree(trash)
            e.lock.unlink(missing_ok=True)
        finally:
            lock.release()
        removed.append(e)
    return removed


def human_size(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} kB"


def _row(e: Entry) -> str:
    when = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t))  # noqa: E731
    name = e.path.name.rsplit("-", 1)[-1] if e.params is not None else e.path.name
    state = "building" if e.building else {"orphan": "killed build", "lock": "stale lock"}.get(e.kind, "")
    short = lambda v: isinstance(v, (int, float, bool)) or (isinstance(v, str) and len(v) <= 16 and "/" not in v)  # noqa: E731 (not hashes or paths)
    params = ", ".join(f"{k}={v}" for k, v in (e.params or {}).items() if short(v))
    params = params if len(params) <= 60 else params[:59] + "…"
    times = f"{when(e.built)}  {when(e.last_used)}"
    return f"{e.kind:<10} {name:<26} {human_size(e.size):>9}  {times}  {state:<12} {params}".rstrip()


def add_arguments(parser) -> None:
    """The `python -m dpo_lab cache` command line."""
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every entry: kind, hash, size, built, last used, params; with totals")
    p = actions.add_parser("prune", help="remove killed builds' temp dirs, stale locks, and old or surplus entries")
    p.add_argument("--older-than", type=float, metavar="DAYS", help="remove entries not used for DAYS days")
    p.add_argument("--max-size", metavar="SIZE", help="then the least recently used until the cache fits, e.g. 20GB")
    p.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")
    parser.set_defaults(run=main)


def main(args) -> int:
    """`python -m dpo_lab cache list | prune ...`: prints, returns the exit status (a UserError: the command's)."""
    base = root()
    if args.action == "list":
        found = entries(base)
        header = f"{'kind':<10} {'hash':<26} {'size':>9}  {'built':<16}  {'last used':<16}  {'state':<12} params"
        print("\n".join([f"DPO_LAB_CACHE={base}", header, *map(_row, found)]))
        artifacts = [e for e in found if e.kind not in ("orphan", "lock")]
        print(
            f"{len(artifacts)} entries, {human_size(sum(e.size for e in found))} in all; temp dirs of killed "
            f"builds: {sum(e.kind == 'orphan' and not e.building for e in found)}, stale locks: "
            f"{sum(e.kind == 'lock' and not e.building for e in found)}, builds in progress: "
            f"{sum(e.building for e in found)}."
        )
        return EXIT_OK
    max_size = parse_size(args.max_size) if args.max_size is not None else None
    gone = prune(base, args.older_than, max_size, args.dry_run)
    print("\n".join([*map(_row, gone)]) or "Nothing to remove.")
    verb = "Would remove" if args.dry_run else "Removed"
    print(f"{verb} {len(gone)} entries ({human_size(sum(e.size for e in gone))}) from DPO_LAB_CACHE={base}.")
    return EXIT_OK
