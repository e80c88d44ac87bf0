"""A job directory is the unit of work: what it saves (files.py) is enough to run it, rerun it, and report on it.

`prepare` writes a job's files, `execute` runs it under one wrapper that owns its status, timing, result.json and
wandb run (lightning-hydra-template's task_wrapper), and `launch` does that in this process or in a fresh one. A
fresh process per job is how a sweep stays clean: no memory, CUDA context, wandb run or cache survives from one job
to the next; forking it from a server that already imported the stack makes it start in about a second. The task itself (train.train) is handed in by the entry point, so this module never imports it.
"""

import logging
import os
import secrets
import string
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from dpo_lab import files, provenance, tracking
from dpo_lab.config import START_METHODS, Config
from dpo_lab.errors import UserError

log = logging.getLogger(__name__)

Task = Callable[[DictConfig, str, Any], Dict[str, Any]]  # (config, job dir, wandb run or None) -> result


def load_config(path: str, overrides: List[str] = ()) -> DictConfig:
    """Load a saved config into the typed schema, then apply `key=value` overrides."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides)))
    except Exception as e:  # omegaconf's errors name the key; keep that, drop the traceback
        raise UserError(f"Config {path} with overrides {list(overrides)} is invalid: {e}") from None
    return cfg


def completed_result(cfg: DictConfig, job_dir: str) -> Optional[Dict[str, Any]]:
    """The saved result if `job_dir` already completed this exact config; UserError if it holds another config."""
    saved = os.path.join(job_dir, files.CONFIG)
    if not os.path.isfile(saved):
        return None
    if OmegaConf.to_container(OmegaConf.load(saved)) != OmegaConf.to_container(cfg, resolve=True):
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


def execute(job_dir: str, task: Task, cfg: Optional[DictConfig] = None, meta: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run a prepared job in this process; always writes result.json and closes the wandb run, never raises for a
    failed run. `cfg` and `meta` default to what prepare() saved in `job_dir`."""
    meta = meta or files.read_json(os.path.join(job_dir, files.JOB))
    path = os.path.join(job_dir, files.RESULT)
    result: Dict[str, Any] = {"status": "running", "name": meta["name"], "job_dir": job_dir, "overrides": meta["overrides"]}
    files.write_json(path, result)
    started, run = time.time(), None
    try:
        cfg = cfg if cfg is not None else load_config(os.path.join(job_dir, files.CONFIG))
        run = tracking.start_run(cfg, job_dir, meta)
        result.update(task(cfg, job_dir, run))
        result["status"] = "completed"
    except UserError as e:
        log.error("%s", e)
        result.update(status="failed", error=str(e))
    except KeyboardInterrupt:
        result.update(status="interrupted", error="interrupted")
        raise
    except Exception as e:  # a bug or a diverged run: keep the traceback in the log, the reason in the result
        log.error("Job failed:\n%s", traceback.format_exc())
        result.update(status="failed", error=f"{type(e).__name__}: {e}")
    finally:
        result["seconds"] = round(time.time() - started, 1)
        tracking.finish_run(run, failed=result["status"] != "completed", in_sweep=bool(meta.get("sweep_dir")))
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


def _child(job_dir: str, task: Task, env: Dict[str, str], threads: Optional[int]) -> None:
    """A job's process: this job's environment, log file and CPU threads, then `execute`; exit 0 if it completed."""
    os.environ.clear()
    os.environ.update(env)
    from dpo_lab import console

    console.setup_logging(job_dir)
    import torch

    if torch.cuda._is_in_bad_fork():  # CUDA was initialised before the fork: it would fail at the first CUDA call
        log.error("This job was forked from a process that had initialised CUDA. Run the sweep with "
                  "start_method=spawn.")  # fmt: skip
        sys.exit(1)
    _use_threads(threads)
    sys.exit(0 if execute(job_dir, task)["status"] == "completed" else 1)


def _use_threads(threads: Optional[int]) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def launch(job_dir: str, task: Task, isolate: bool, cfg: Optional[DictConfig] = None, meta: Optional[Dict[str, Any]] = None,
           start_method: str = "forkserver", threads: Optional[int] = None, jobs_per_gpu: int = 1) -> Dict[str, Any]:  # fmt: skip
    """Run a prepared job and return its result: here, or (`isolate`) in a process of its own, started by
    `start_method` (forkserver: forked from a server that preloaded PRELOAD; spawn: a fresh interpreter), with
    `threads` CPU threads for torch (None: torch's default), on a GPU of its own or shared by `jobs_per_gpu` jobs."""
    if not isolate:
        _use_threads(threads)
        return execute(job_dir, task, cfg, meta)
    assert start_method in START_METHODS, start_method  # validate() checked the config
    from dpo_lab.gpus import gpu_env

    with gpu_env(os.path.join(os.path.dirname(os.path.abspath(job_dir)), ".gpu-locks"), jobs_per_gpu) as env:
        # WANDB_SERVICE would attach the job to a wandb service an earlier wandb user in this process tree started,
        # whose runs outlive their jobs: a job relaunched after a kill then finds its run id "in use". Own service.
        env = {k: v for k, v in (env or os.environ).items() if k != "WANDB_SERVICE"}
        proc = _context(start_method).Process(target=_child, args=(job_dir, task, env, threads), name=f"job {job_dir}")
        _start(proc, start_method)
        try:
            proc.join()
        except KeyboardInterrupt:
            proc.terminate()
            proc.join()
            raise
    path = os.path.join(job_dir, files.RESULT)
    result = files.read_json(path) or {}
    if result.get("status") in (None, "running"):  # killed (OOM, signal) before it could record anything
        result.update(status="failed", error=f"worker process exited with code {proc.exitcode} without a result",
                      job_dir=job_dir)  # fmt: skip
        files.write_json(path, result)
    return result
