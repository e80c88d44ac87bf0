"""A job directory is the unit of work: what it saves (files.py) is enough to run it, rerun it, and report on it.
`prepare` writes a job's files; its lock says which process trains in it."""

import logging
import os
import secrets
import string
import sys
import time
from contextlib import contextmanager
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from dpo_lab import files, provenance
from dpo_lab.config import Config
from dpo_lab.errors import UserError

log = logging.getLogger(__name__)


def load_config(path: str, overrides: List[str] = ()) -> DictConfig:
    """Load a saved config into the typed schema, then apply `key=value` overrides."""
    try:
        cfg = OmegaConf.merge(
            OmegaConf.structured(Config), OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides))
        )
    except Exception as e:  # omegaconf's errors name the key; keep that, drop the traceback
        raise UserError(f"Config {path} with overrides {list(overrides)} is invalid: {e}") from None
    return cfg


def same_config(saved: str, cfg: Dict[str, Any]) -> bool:
    """Whether the config saved at `saved` is `cfg` (resolved, without the hydra node). Both are read through the
    schema, so a key added since the job was saved, at its default, makes no difference."""
    try:
        before = OmegaConf.to_container(load_config(saved), resolve=True)
    except UserError:  # it no longer fits the schema: not this config
        return False
    return before == OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(Config), cfg), resolve=True)


def completed_result(cfg: DictConfig, job_dir: str, elsewhere: str) -> Optional[Dict[str, Any]]:
    """The saved result if `job_dir` already completed this exact config; UserError if it holds another config, whose
    last sentence, `elsewhere`, says how to launch into another directory (the key differs: hydra.run.dir for a single
    run, hydra.sweep.dir for a sweep, --out for a rerun)."""
    saved = os.path.join(job_dir, files.CONFIG)
    if not os.path.isfile(saved):
        return None
    if not same_config(saved, OmegaConf.to_container(cfg, resolve=True)):
        raise UserError(
            f"{job_dir} already holds {held(job_dir)} with a different config, so it can neither be skipped nor "
            f"resumed; nothing in it was changed. {elsewhere}"
        )
    result = files.read_json(os.path.join(job_dir, files.RESULT)) or {}
    return result if result.get("status") == "completed" else None


def held(job_dir: str) -> str:
    """What a job dir holds, in words: `the job "loss=ipo,beta=0.5" (completed)`."""
    name = (files.read_json(os.path.join(job_dir, files.JOB)) or {}).get("name")
    status = (files.read_json(os.path.join(job_dir, files.RESULT)) or {}).get("status", "not finished")
    return f'the job "{name}" ({status})' if name else f"a job ({status})"


def prepare(
    cfg: DictConfig,
    job_dir: str,
    name: str,
    group: Optional[str],
    overrides: List[str],
    choices: Dict[str, str],
    sweep_dir: Optional[str] = None,
) -> Dict[str, Any]:
    """Write what runs and reruns this job into `job_dir`. A relaunched job keeps its wandb run id."""
    os.makedirs(job_dir, exist_ok=True)
    if files.is_main_rank():
        OmegaConf.save(cfg, os.path.join(job_dir, files.CONFIG), resolve=True)
    previous = files.read_json(os.path.join(job_dir, files.JOB)) or {}
    wandb_id = previous.get("wandb_id") or "".join(
        secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8)
    )
    meta = {
        "name": name,
        "group": group,
        "overrides": list(overrides),
        "choices": dict(choices),
        "wandb_id": wandb_id,
        "sweep_dir": sweep_dir,
    }
    files.write_json(os.path.join(job_dir, files.JOB), meta)
    info = {
        "seed": cfg.seed,
        "versions": provenance.versions(),
        "git": provenance.git_commit(),
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    files.write_json(os.path.join(job_dir, files.RUN_INFO), info)
    return meta


class JobBusy(UserError):
    """Another process is training in this job dir."""


LOCK = ".lock"  # held (flock) by the process training in a job dir; released by the OS however that process ends


def _held_by(job_dir: str) -> Optional[str]:
    """What the lock file of a job dir says about its holder ("pid 1234 since ..."), or None if nobody holds it."""
    import fcntl

    path = os.path.join(job_dir, LOCK)
    if not os.path.exists(path):
        return None
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            for _ in range(20):  # a holder that has just locked writes its name at once
                f.seek(0)
                holder = f.read().strip()
                if holder:
                    return holder
                time.sleep(0.05)
            return "another process"
        return None


def check_free(job_dir: str) -> None:
    """JobBusy if a process is training in `job_dir`: a relaunch must not start a second trainer there. The lock
    belongs to the whole launch: the other ranks of the launch whose rank 0 holds it find the dir free."""
    holder = _held_by(job_dir)
    ours = files.launch_id()
    if holder and not (ours and holder.endswith(f"launch {ours}")):
        raise JobBusy(
            f"{job_dir} is in use: {holder.split(' launch ')[0]} is training in it. Wait for it to finish, or stop "
            "it (kill "
            "PID: it records `interrupted` and keeps its last checkpoint), then relaunch to resume."
        )


@contextmanager
def locked(job_dir: str):
    """Hold the job dir's lock while training in it, for the whole launch: rank 0 takes it and names its launch
    (files.launch_id) in it. Emptied before it is released, so a finished job's lock names nobody."""
    if not files.is_main_rank():
        yield
        return
    import fcntl

    with open(os.path.join(job_dir, LOCK), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            check_free(job_dir)  # names the holder
            raise JobBusy(f"{job_dir} is in use by another process.") from None
        launch = files.launch_id()
        f.truncate(0)
        f.write(
            f"pid {os.getpid()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})"
            + (f" launch {launch}" if launch else "")
            + "\n"
        )
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
