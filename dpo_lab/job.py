"""A job directory is the unit of work: what it saves is enough to run it, rerun it, and report on it.

    <job dir>/config.yaml     the fully resolved config (what `python -m dpo_lab rerun` reads)
    <job dir>/job.json        run name, wandb group, overrides, chosen group options
    <job dir>/run_info.json   seed, package versions, git commit, command line
    <job dir>/result.json     status, error, final eval metrics, timings, wandb run id
    <job dir>/train.log       the job's log; wandb/ and checkpoints/ and final/ beside it

`launch` runs a prepared job in this process or in a fresh one. A fresh process per job is how a
sweep stays clean: no memory, CUDA context, wandb run or cache survives from one job to the next.
"""

import json
import logging
import os
import subprocess
import sys
import time
import traceback
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from dpo_lab.config import Config
from dpo_lab.errors import UserError

log = logging.getLogger(__name__)

PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "wandb", "hydra-core", "omegaconf", "dpo-lab")


def _git_commit() -> Optional[Dict[str, Any]]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "dirty": bool(dirty.strip())}


def _versions() -> Dict[str, Optional[str]]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def load_config(path: str, overrides: List[str] = ()) -> DictConfig:
    """Load a saved config into the typed schema, then apply `key=value` overrides."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides)))
    except Exception as e:  # omegaconf's errors name the key; keep that, drop the traceback
        raise UserError(f"Config {path} with overrides {list(overrides)} is invalid: {e}") from None
    return cfg


def completed_result(cfg: DictConfig, job_dir: str) -> Optional[Dict[str, Any]]:
    """The saved result if `job_dir` already completed this exact config; UserError if it holds another config."""
    saved = os.path.join(job_dir, "config.yaml")
    if not os.path.isfile(saved):
        return None
    if OmegaConf.to_container(OmegaConf.load(saved)) != OmegaConf.to_container(cfg, resolve=True):
        raise UserError(f"{job_dir} already holds a job with a different config, so it can neither be skipped nor "
                        "resumed. Launch the sweep into a new directory (hydra.sweep.dir=...).")  # fmt: skip
    result = read_json(os.path.join(job_dir, "result.json")) or {}
    return result if result.get("status") == "completed" else None


def _is_main_rank() -> bool:
    """Under `accelerate launch` every rank runs the job; only rank 0 writes its files and logs to wandb."""
    return int(os.environ.get("RANK", "0")) == 0


def prepare(cfg: DictConfig, job_dir: str, name: str, group: Optional[str], overrides: List[str], choices: Dict[str, str]) -> Dict[str, Any]:
    """Write what runs and reruns this job into `job_dir`. A relaunched job keeps its wandb run id."""
    os.makedirs(job_dir, exist_ok=True)
    if _is_main_rank():
        OmegaConf.save(cfg, os.path.join(job_dir, "config.yaml"), resolve=True)
    previous = read_json(os.path.join(job_dir, "job.json")) or {}
    wandb_id = previous.get("wandb_id") or _new_run_id()
    meta = {"name": name, "group": group, "overrides": list(overrides), "choices": dict(choices), "wandb_id": wandb_id}
    _write_json(os.path.join(job_dir, "job.json"), meta)
    info = {"seed": cfg.seed, "versions": _versions(), "git": _git_commit(), "argv": sys.argv, "cwd": os.getcwd(),
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    _write_json(os.path.join(job_dir, "run_info.json"), info)
    return meta


def _new_run_id() -> str:
    import secrets
    import string

    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _write_json(path: str, obj: Any) -> None:
    if not _is_main_rank():
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)  # a killed job never leaves half a file


def read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def execute(job_dir: str, cfg: Optional[DictConfig] = None, meta: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run a prepared job in this process; always writes result.json, never raises for a failed run.

    `cfg` and `meta` default to what prepare() saved in `job_dir`."""
    from dpo_lab.train import train

    meta = meta or read_json(os.path.join(job_dir, "job.json"))
    result: Dict[str, Any] = {"status": "running", "name": meta["name"], "job_dir": job_dir, "overrides": meta["overrides"]}
    _write_json(os.path.join(job_dir, "result.json"), result)
    started = time.time()
    try:
        cfg = cfg if cfg is not None else load_config(os.path.join(job_dir, "config.yaml"))
        wandb_config = {**OmegaConf.to_container(cfg), "overrides": meta["overrides"], "choices": meta["choices"]}
        result.update(train(cfg, job_dir, meta["name"], meta["group"], wandb_config, meta.get("wandb_id")))
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
        _write_json(os.path.join(job_dir, "result.json"), result)
    return result


def launch(job_dir: str, isolate: bool, cfg: Optional[DictConfig] = None, meta: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run a prepared job, in a child process if `isolate` (from its saved files), and return its result."""
    if not isolate:
        return execute(job_dir, cfg, meta)
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
    result = read_json(os.path.join(job_dir, "result.json")) or {}
    if result.get("status") in (None, "running"):  # killed (OOM, signal) before it could record anything
        result.update(status="failed", error=f"worker process exited with code {code} without a result", job_dir=job_dir)
        _write_json(os.path.join(job_dir, "result.json"), result)
    return result


def setup_logging(job_dir: Optional[str] = None) -> None:
    handlers: List[logging.Handler] = [logging.StreamHandler()]
    if job_dir:
        handlers.append(logging.FileHandler(os.path.join(job_dir, "train.log")))
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s", handlers=handlers, force=True)
