"""A job directory is the unit of work: what it saves (files.py) is enough to run it, rerun it, and report on it.

`prepare` writes a job's files, `execute` runs it under one wrapper that owns its status, timing, result.json and
wandb run (lightning-hydra-template's task_wrapper), and `launch` does that in this process or in a fresh one. A
fresh process per job is how a sweep stays clean: no memory, CUDA context, wandb run or cache survives from one job
to the next. The task itself (train.train) is handed in by the entry point, so this module never imports it.
"""

import logging
import os
import secrets
import string
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from dpo_lab import files, provenance, tracking
from dpo_lab.config import Config
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


def launch(job_dir: str, task: Task, isolate: bool, cfg: Optional[DictConfig] = None, meta: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run a prepared job and return its result: here, or (`isolate`) in a child process that runs
    `python -m dpo_lab execute JOB_DIR` from the saved files."""
    if not isolate:
        return execute(job_dir, task, cfg, meta)
    from dpo_lab.gpus import gpu_env

    cmd = [sys.executable, "-m", "dpo_lab", "execute", job_dir]
    with gpu_env(os.path.join(os.path.dirname(os.path.abspath(job_dir)), ".gpu-locks")) as env:
        # WANDB_SERVICE would attach the job to a wandb service an earlier wandb user in this process tree started,
        # whose runs outlive their jobs: a job relaunched after a kill then finds its run id "in use". Own service.
        env = {k: v for k, v in (env or os.environ).items() if k != "WANDB_SERVICE"}
        proc = subprocess.Popen(cmd, env=env)
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
    path = os.path.join(job_dir, files.RESULT)
    result = files.read_json(path) or {}
    if result.get("status") in (None, "running"):  # killed (OOM, signal) before it could record anything
        result.update(status="failed", error=f"worker process exited with code {code} without a result", job_dir=job_dir)
        files.write_json(path, result)
    return result
