"""Build-once artifacts: the toy data and model, the tiny model's warm-up, and what a sweep's jobs share (reuse.py).

An artifact is a directory whose DONE file holds the parameters it was built from. It is built in a temp dir beside
its place and renamed into place, so it is either absent or complete; in the cache (`$DPO_LAB_CACHE`, default
~/.cache/dpo-lab) it is named `<kind>-<hash of its parameters>` and built under a file lock, so the jobs of a sweep
that all need it build it once.
"""

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

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
    except (FileNotFoundError, json.JSONDecodeError):
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
    """The cached artifact `<cache>/<kind>-<hash>` for `params`, built with `write` at most once."""
    from filelock import FileLock, Timeout

    global _said
    out_dir = path(kind, params, cache_dir)
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
