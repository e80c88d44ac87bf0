"""A job directory is the unit of work: what it saves (files.py) is enough to run it, rerun it, and report on it.

`prepare` writes a job's files, `execute` runs it under one wrapper that owns its status, timing, result.json and
wandb run (lightning-hydra-template's task_wrapper), and `launch` does that in this process or in a fresh one. A
fresh process per job is how a sweep stays clean: no memory, CUDA context, wandb run or cache survives from one job
to the next; forking it from a server that already imported the stack makes it start in about a second. The task itself (train.train) is handed in by the entry point, so this module never imports it.
"""

import importlib
import logging
import os
import secrets
import string
import sys
import time
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Dict, List, Optional, Union

from omegaconf import DictConfig, OmegaConf

from dpo_lab import checkpoints, faults, files, provenance, tracking
from dpo_lab.config import START_METHODS, Config
from dpo_lab.errors import EXIT_BUSY, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UserError

log = logging.getLogger(__name__)

Task = Callable[[DictConfig, str, Any], Dict[str, Any]]  # (config, job dir, wandb run or None) -> result
TRAIN = "dpo_lab.train:train"  # the task of every training job, imported by name in the process that runs it


def task_function(task: Union[str, Task]) -> Task:
    """`task`, or the function a "module:function" name points at (imported now: the training stack is imported
    only by the process that trains)."""
    if not isinstance(task, str):
        return task
    module, name = task.split(":")
    return getattr(importlib.import_module(module), name)


def load_config(path: str, overrides: List[str] = ()) -> DictConfig:
    """Load a saved config into the typed schema, then apply `key=value` overrides."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides)))
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


def completed_result(cfg: DictConfig, job_dir: str) -> Optional[Dict[str, Any]]:
    """The saved result if `job_dir` already completed this exact config; UserError if it holds another config."""
    saved = os.path.join(job_dir, files.CONFIG)
    if not os.path.isfile(saved):
        return None
    if not same_config(saved, OmegaConf.to_container(cfg, resolve=True)):
        raise UserError(f"{job_dir} already holds a job with a different config, so it can neither be skipped nor "
                        "resumed. Launch the sweep into a new directory (hydra.sweep.dir=...).")  # fmt: skip
    result = files.read_json(os.path.join(job_dir, files.RESULT)) or {}
    return result if result.get("status") == "completed" else None


def prepare(cfg: DictConfig, job_dir: str, name: str, group: Optional[str], overrides: List[str], choices: Dict[str, str],
            sweep_dir: Optional[str] = None) -> Dict[str, Any]:  # fmt: skip
    """Write what runs and reruns this job into `job_dir`. A relaunched job keeps its wandb run id."""
    os.makedirs(job_dir, exist_ok=True)
    if files.is_main_rank():
        OmegaConf.save(cfg, os.path.join(job_dir, files.CONFIG), resolve=True)
    previous = files.read_json(os.path.join(job_dir, files.JOB)) or {}
    wandb_id = previous.get("wandb_id") or "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    meta = {"name": name, "group": group, "overrides": list(overrides), "choices": dict(choices), "wandb_id": wandb_id,
            "sweep_dir": sweep_dir}  # fmt: skip
    files.write_json(os.path.join(job_dir, files.JOB), meta)
    info = {"seed": cfg.seed, "versions": provenance.versions(), "git": provenance.git_commit(), "argv": sys.argv,
            "cwd": os.getcwd(), "created": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
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
        raise JobBusy(f"{job_dir} is in use: {holder.split(' launch ')[0]} is training in it. Wait for it to finish, or stop it (kill "
                      "PID: it records `interrupted` and keeps its last checkpoint), then relaunch to resume.")  # fmt: skip


@contextmanager
def _locked(job_dir: str):
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
        f.write(f"pid {os.getpid()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})" + (f" launch {launch}" if launch else "") + "\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)


def execute(job_dir: str, task: Union[str, Task], cfg: Optional[DictConfig] = None, meta: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run a prepared job in this process, holding its dir's lock (JobBusy if another process holds it); always
    writes result.json (status: faults.STATUSES) and closes the wandb run; raises only KeyboardInterrupt (after
    recording `interrupted`). `cfg` and `meta` default to what prepare() saved in `job_dir`."""
    meta = meta or files.read_json(os.path.join(job_dir, files.JOB))
    path = os.path.join(job_dir, files.RESULT)
    with _locked(job_dir):
        result: Dict[str, Any] = {"status": "running", "name": meta["name"], "job_dir": job_dir,
                                  "overrides": meta["overrides"], "pid": os.getpid()}  # fmt: skip
        files.write_json(path, result)
        started, run = time.time(), None
        try:
            with faults.sigterm_interrupts():  # `kill PID` ends like Ctrl-C: recorded, wandb closed
                cfg = cfg if cfg is not None else load_config(os.path.join(job_dir, files.CONFIG))
                run = tracking.start_run(cfg, job_dir, meta)
                if run is not None:  # recorded whatever the outcome: where to look
                    result.update(wandb_run_id=run.id, wandb_dir=run.settings.sync_dir)
                result.update(task_function(task)(cfg, job_dir, run))
            result["status"] = "completed"
        except UserError as e:
            log.error("%s", e)
            result.update(status="failed", error=str(e))
        except KeyboardInterrupt as e:
            result.update(status="interrupted", error=f"stopped by {e or 'Ctrl-C'}. {faults.RESUME}")
            log.error("Job %s", result["error"])
            raise
        except Exception as e:
            result.update(faults.classify(e))
            if result.pop("bug", False):
                log.error("Job failed:\n%s\nThis is a bug in dpo-lab or a library under it, not a problem with your "
                          "config or data: please report it with the traceback above and %s.", traceback.format_exc(),
                          os.path.join(job_dir, files.LOG))  # fmt: skip
            else:
                log.error("Job %s: %s", result["status"], result["error"])
        finally:
            result["seconds"] = round(time.time() - started, 1)
            if result["status"] != "completed":  # what a relaunch resumes from
                result["last_checkpoint"] = checkpoints.latest(os.path.join(job_dir, "checkpoints"))
            tracking.finish_run(run, result, in_sweep=bool(meta.get("sweep_dir")))
            files.write_json(path, result)
    return result


# What every job imports. A fork server (multiprocessing's forkserver) imports them once, before anything touches
# CUDA, and forks each job's process from itself: a fresh process per job without paying ~7 s of imports each time.
PRELOAD = ["torch", "transformers", "datasets", "peft", "accelerate", "wandb", "trl.trainer.dpo_trainer",
           "dpo_lab.train"]  # fmt: skip


def cpu_threads(concurrent: int) -> Optional[int]:
    """torch threads for each of `concurrent` jobs sharing this machine's cores (None: one job, torch's default;
    `concurrent` <= 0, joblib's n_jobs=-1: one job per core)."""
    cores = len(os.sched_getaffinity(0))
    concurrent = concurrent if concurrent > 0 else cores
    return None if concurrent == 1 else max(1, cores // concurrent)


def _context(start_method: str):
    import multiprocessing

    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        # torch's CUDA check through NVML creates no CUDA context, so the server stays safe to fork from.
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _start(proc, start_method: str) -> None:
    """Start `proc` with this process's default start method set to `start_method` meanwhile: the child is told
    the parent's default, and under Hydra's joblib launcher that is loky's, which a plain child cannot set up."""
    import multiprocessing

    current = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method(start_method, force=True)
    try:
        proc.start()
    finally:
        multiprocessing.set_start_method(current, force=True)


def start_server(start_method: str) -> None:
    """Start the fork server now: it imports PRELOAD in the background, ready for the first job (no-op for spawn)."""
    if start_method == "forkserver":
        from multiprocessing import forkserver

        _context(start_method)
        forkserver.ensure_running()


def _child(job_dir: str, task: Union[str, Task], env: Dict[str, str], threads: Optional[int], parent: int) -> None:
    """A job's process: this job's environment, log file and CPU threads, then `execute`; exit 0 if it completed."""
    os.environ.clear()
    os.environ.update(env)
    from dpo_lab import console

    console.setup_logging(job_dir)
    import torch

    if torch.cuda._is_in_bad_fork():  # CUDA was initialised before the fork: it would fail at the first CUDA call
        log.error("This job was forked from a process that had initialised CUDA. Run the sweep with "
                  "start_method=spawn.")  # fmt: skip
        sys.exit(EXIT_FAILED)
    _stop_with(parent)
    _use_threads(threads)
    try:
        sys.exit(EXIT_OK if execute(job_dir, task)["status"] == "completed" else EXIT_FAILED)
    except KeyboardInterrupt:  # recorded as `interrupted` by execute
        sys.exit(EXIT_INTERRUPTED)
    except JobBusy as e:
        log.error("%s", e)
        sys.exit(EXIT_BUSY)


def _stop_with(parent: int) -> None:
    """Stop this job (SIGTERM to itself: `interrupted`, checkpoints kept) when the sweep process `parent` is gone,
    e.g. killed with -9: a job must not train on as an orphan in a dir a relaunch will want. A watcher thread, as
    the kernel's parent-death signal would fire on the fork server's death, which the job itself keeps alive."""
    import signal
    import threading

    import psutil

    def watch():
        while True:
            try:
                if psutil.Process(parent).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(1)
        log.error("The sweep process (pid %d) is gone; stopping this job.", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-sweep", daemon=True).start()


def _use_threads(threads: Optional[int]) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def launch(job_dir: str, task: Union[str, Task], isolate: bool, cfg: Optional[DictConfig] = None, meta: Optional[Dict[str, Any]] = None,
           start_method: str = "forkserver", threads: Optional[int] = None, jobs_per_gpu: int = 1) -> Dict[str, Any]:  # fmt: skip
    """Run a prepared job and return its result: here, or (`isolate`) in a process of its own, started by
    `start_method` (forkserver: forked from a server that preloaded PRELOAD; spawn: a fresh interpreter), with
    `threads` CPU threads for torch (None: torch's default), on a GPU of its own or shared by `jobs_per_gpu` jobs."""
    if not isolate:
        _use_threads(threads)
        try:
            return execute(job_dir, task, cfg, meta)
        except JobBusy as e:
            log.error("%s", e)
            return {"status": "failed", "error": str(e), "job_dir": job_dir}
    assert start_method in START_METHODS, start_method  # validate() checked the config
    from dpo_lab.gpus import gpu_env

    with gpu_env(os.path.join(os.path.dirname(os.path.abspath(job_dir)), ".gpu-locks"), jobs_per_gpu) as env:
        # WANDB_SERVICE would attach the job to a wandb service an earlier wandb user in this process tree started,
        # whose runs outlive their jobs: a job relaunched after a kill then finds its run id "in use". Own service.
        env = {k: v for k, v in (env or os.environ).items() if k != "WANDB_SERVICE"}
        proc = _context(start_method).Process(target=_child, args=(job_dir, task, env, threads, os.getpid()), name=f"job {job_dir}")
        with faults.sigterm_interrupts():  # `kill` on the sweep stops its job through the same path as Ctrl-C
            _start(proc, start_method)
            try:
                proc.join()
            except KeyboardInterrupt:
                proc.terminate()  # SIGTERM: the job records `interrupted`, closes its wandb run, keeps its checkpoints
                proc.join()
                raise
    if proc.exitcode == EXIT_BUSY:
        return {"status": "failed", "error": f"{job_dir} is in use by another process; not started.", "job_dir": job_dir}
    path = os.path.join(job_dir, files.RESULT)
    result = files.read_json(path) or {}
    if result.get("status") in (None, "running"):  # killed (OOM killer, kill -9) before it could record anything
        result.update(faults.from_exitcode(proc.exitcode), job_dir=job_dir)
        log.error("Job %s: %s", result["status"], result["error"])
        files.write_json(path, result)
    return result
