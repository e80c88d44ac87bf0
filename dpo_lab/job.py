"""The run wrapper: `execute` runs a prepared job (jobdir.py) under one wrapper that owns its status, timing,
result.json and wandb run, as lightning-hydra-template's task_wrapper does. The task (train.train) comes by name
(TRAIN) and is imported only in the process that runs it."""

import importlib
import logging
import os
import time
import traceback
from typing import Any, Callable, Dict, Optional, Union

from omegaconf import DictConfig

from dpo_lab import checkpoints, faults, files, tracking
from dpo_lab.errors import EXIT_FAILED, EXIT_OK, EXIT_USER_ERROR, UserError, bug_line
from dpo_lab.jobdir import load_config, locked

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


def prepared(job_dir: str) -> Dict[str, Any]:
    """What prepare() saved in `job_dir` (job.json), or a UserError saying it is no prepared job dir."""
    meta = files.read_json(os.path.join(job_dir, files.JOB))
    if not isinstance(meta, dict) or "name" not in meta:
        raise UserError(
            f"{job_dir} is not a prepared job directory: it has no readable {files.JOB}. python -m dpo_lab execute "
            "runs a job dir that run.py made (outputs/<name>/<time>/ or multirun/<name>/<time>/<n>/); to run a saved "
            "job again elsewhere, use python -m dpo_lab rerun JOB_DIR."
        )
    return meta


def exit_code(result: Dict[str, Any]) -> int:
    """A job's exit status from its result: 0 completed, 2 ended on the user's mistake, 1 any other failure."""
    if result.get("status") == "completed":
        return EXIT_OK
    return EXIT_USER_ERROR if result.get("user_error") else EXIT_FAILED


def execute(
    job_dir: str, task: Union[str, Task], cfg: Optional[DictConfig] = None, meta: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """Run a prepared job in this process, holding its dir's lock (JobBusy if another process holds it); always
    writes result.json (status: faults.STATUSES) and closes the wandb run; raises only KeyboardInterrupt (after
    recording `interrupted`), or UserError before it starts for a dir prepare() did not make. `cfg` and `meta`
    default to what prepare() saved in `job_dir`."""
    meta = meta or prepared(job_dir)
    path = os.path.join(job_dir, files.RESULT)
    with locked(job_dir):
        result: Dict[str, Any] = {
            "status": "running",
            "name": meta["name"],
            "job_dir": job_dir,
            "overrides": meta["overrides"],
            "pid": os.getpid(),
        }
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
            result.update(status="failed", error=str(e), user_error=True)  # the command exits 2 (exit_code)
        except KeyboardInterrupt as e:
            result.update(status="interrupted", error=f"stopped by {str(e) or 'Ctrl-C'}. {faults.RESUME}")
            log.error("Job %s", result["error"])
            raise
        except Exception as e:
            result.update(faults.classify(e))
            if result.pop("bug", False):
                log.error("Job failed:\n%s%s", traceback.format_exc(), bug_line(os.path.join(job_dir, files.LOG)))
            else:
                log.error("Job %s: %s", result["status"], result["error"])
        finally:
            result["seconds"] = round(time.time() - started, 1)
            if result["status"] != "completed":  # what a relaunch resumes from
                result["last_checkpoint"] = checkpoints.latest(os.path.join(job_dir, "checkpoints"))
            files.write_json(path, result)  # before wandb closes: a second Ctrl-C or SIGTERM there keeps the status
            tracking.finish_run(run, result, in_sweep=bool(meta.get("sweep_dir")))
            files.write_json(path, result)
    return result
