"""Weights & Biases: one run per job, offline unless credentials exist, always finished.

job.execute starts the run before the task and finishes it after, whatever happened. The run's config is ours (the
resolved dpo-lab config, overrides, choices; train.py adds `resolved` and `dtypes`); `TrainerLogger`, transformers'
WandbCallback with one change, logs the metrics and puts TRL's ~180 DPOConfig fields under `trl`.

A sweep's jobs each keep their run in `<job>/wandb/`; `<sweep>/wandb/` holds a folder per run, named after the run
and linking to its files, so one `wandb leet` and one `wandb sync` on that folder browse and upload the whole sweep.
"""

import logging
import netrc
import os
import re
from typing import Any, Callable, Dict, List
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from dpo_lab import files

log = logging.getLogger(__name__)

# Eval and sample metrics as WandbCallback / the sampler name them; summaries make the best value a run-table column.
EVAL_SUMMARIES = {
    "eval/rewards/margins": "max,last",
    "eval/logratios/margins": "max,last",
    "eval/rewards/accuracies": "max,last",
    "eval/loss": "min,last",
    "samples/win_rate": "max,last",
    "samples/reward": "max,last",
}


def has_credentials() -> bool:
    """True if wandb could log in without prompting: WANDB_API_KEY or a netrc entry for the wandb host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = os.environ.get("NETRC", os.path.expanduser("~/.netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    """auto -> WANDB_MODE if set, else online with credentials, else offline."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if has_credentials() else "offline"


def default_tags(cfg: DictConfig) -> List[str]:
    """Tags to filter a project's runs by, before the user's own: the method, the loss types, full fine-tuning or
    LoRA."""
    return (
        [f"method:{cfg.method.name}"]
        + [f"loss:{t}" for t in cfg.loss.loss_type]
        + ["peft:lora" if cfg.peft.enabled else "peft:none"]
    )


def start_run(cfg: DictConfig, job_dir: str, meta: Dict[str, Any]):
    """Start (or, with the id of an interrupted one, continue) this job's wandb run in `job_dir`; None if disabled."""
    global _wandb_failed
    _wandb_failed = False  # a new job (jobs of an isolate=never sweep share this process)
    w = cfg.wandb
    mode = resolve_mode(w.mode)
    if mode == "disabled" or not files.is_main_rank():  # under `accelerate launch`, rank 0 logs
        return None
    import wandb

    if wandb.run is not None:  # never merge two jobs into one run
        wandb.run.finish()
    run_id = None if os.environ.get("WANDB_SWEEP_ID") else meta.get("wandb_id")  # a `wandb agent` assigns the id
    config = {**OmegaConf.to_container(cfg), "overrides": meta["overrides"], "choices": meta["choices"]}
    init = lambda mode: wandb.init(  # noqa: E731
        project=w.project,
        entity=w.entity,
        mode=mode,
        dir=job_dir,
        name=meta["name"],
        group=meta["group"],
        job_type=cfg.method.name,  # "dpo" for DPO, as before methods
        tags=default_tags(cfg) + list(w.tags),
        config=config,
        id=run_id,
        resume="allow" if run_id else None,
        reinit="finish_previous",
        settings=wandb.Settings(quiet=True, console="wrap"),
    )
    try:
        run = init(mode)
    except Exception as e:  # an unreachable or failing server must not cost the training: log offline instead
        if mode != "online":
            raise
        wandb.teardown()  # the failed attempt still holds the run id in wandb's service
        run = init("offline")
        log.warning(
            "wandb could not start an online run (%s: %s), so this run logs offline to %s. Upload it when "
            "the server is back: wandb sync %s",
            type(e).__name__,
            (str(e).splitlines() or [""])[0],
            run.settings.sync_dir,
            run.settings.sync_dir,
        )
    if meta.get("sweep_dir"):
        _link_into_sweep_view(run.settings.sync_dir, meta["sweep_dir"], meta["name"])
    run.define_metric("train/global_step")
    run.define_metric("*", step_metric="train/global_step", step_sync=True)
    for key, summary in EVAL_SUMMARIES.items():
        run.define_metric(key, step_metric="train/global_step", summary=summary)
    return run


OUTCOME = ("status", "error", "diverged_step", "diverged_metric", "diverged_value")  # result.json keys the run keeps


def finish_run(run, result: Dict[str, Any], in_sweep: bool = False) -> None:
    """Record the job's outcome (status, error, where it diverged) in the run's summary and finish it (exit code 1
    unless completed); tell offline users of a single run how to sync and browse it (a sweep says it once for all its
    runs). A wandb failure here is a warning: the job's result is on disk either way."""
    if run is None:
        return
    offline = run.settings.mode == "offline"
    run_dir = run.settings.sync_dir
    try:
        if _wandb_failed:
            raise RuntimeError("it failed earlier in the run")
        run.summary.update({k: result[k] for k in OUTCOME if k in result})
        run.finish(exit_code=0 if result["status"] == "completed" else 1)
    except Exception as e:
        log.warning(
            "wandb could not close the run (%s: %s); its files are in %s (wandb sync uploads them).",
            type(e).__name__,
            e,
            run_dir,
        )
        import wandb

        try:  # drops wandb's exit hook, which would fail the same way with a traceback
            wandb.teardown()
        except Exception:
            pass
        return
    if offline and not in_sweep:
        log.info(
            "wandb ran offline; the run is in %s\n  browse it:  wandb leet %s\n  upload it:  wandb sync %s",
            run_dir,
            run_dir,
            run_dir,
        )


def sweep_view(sweep_dir: str) -> str:
    return os.path.join(sweep_dir, "wandb")


RUN_DIR = re.compile(r"((?:offline-)?run-\d{8}_\d{6}-)(.+)")  # wandb's run folder: <kind>run-<time>-<run id>
RUN_PARTS = ("files", "logs", "tmp")  # what a run folder holds besides its log, run-<id>.wandb


def _link_into_sweep_view(run_dir: str, sweep_dir: str, name: str) -> None:
    """Give the job's run a folder in <sweep>/wandb/ named after the run, `offline-run-<time>-<name>`, holding links to
    the run's files and to its log as `run-<name>.wandb`. wandb leet lists a folder by its name (it shows nothing
    else) and reads `run-<what follows the time>.wandb` in it; wandb sync reads that log and the files beside it. The
    links are relative, so the sweep folder can move; a resumed job's new run folder gets a folder of its own."""
    view = sweep_view(sweep_dir)
    os.makedirs(view, exist_ok=True)
    run_dir = os.path.abspath(run_dir)
    match = RUN_DIR.fullmatch(os.path.basename(run_dir))
    if match is None:  # not a folder name we know: link it as it is
        _symlink(run_dir, os.path.join(view, os.path.basename(run_dir)))
        return
    prefix, run_id = match.groups()
    log_file = os.path.join(run_dir, f"run-{run_id}.wandb")
    label = _label(name)
    folder = os.path.join(view, prefix + label)
    if os.path.lexists(folder) and not _is_view_of(folder, label, log_file):  # two runs of one name in one second
        label = f"{label}-{run_id}"
        folder = os.path.join(view, prefix + label)
    os.makedirs(folder, exist_ok=True)
    _symlink(log_file, os.path.join(folder, f"run-{label}.wandb"))
    for part in RUN_PARTS:
        _symlink(os.path.join(run_dir, part), os.path.join(folder, part))


def _label(name: str) -> str:
    """A run name as a folder name: no path separators or spaces, at most 100 characters."""
    return re.sub(r"[^\w=,.+@-]+", "_", name).strip("_")[:100] or "run"


def _is_view_of(folder: str, label: str, log_file: str) -> bool:
    link = os.path.join(folder, f"run-{label}.wandb")
    return os.path.lexists(link) and os.path.realpath(link) == os.path.realpath(log_file)


def _symlink(target: str, link: str) -> None:
    if not os.path.lexists(link):
        os.symlink(os.path.relpath(target, os.path.dirname(link)), link)


def sweep_commands(sweep_dir: str) -> List[str]:
    """The lines that browse and upload all of a sweep's runs (none if it logged none)."""
    view = sweep_view(sweep_dir)
    if not os.path.isdir(view) or not os.listdir(view):
        return []
    return [f"browse all runs:  wandb leet {view}", f"upload them all:  wandb sync {view}"]


_wandb_failed = False  # per process, so per job


def safely(call: Callable[[], Any]) -> None:
    """Make a wandb call unless wandb already failed in this job. wandb trouble mid-run (its service gone, a full disk
    under wandb/) must not stop the training: the first failure is a warning, later calls are skipped, and
    result.json and samples.jsonl still get every result."""
    global _wandb_failed
    if _wandb_failed:
        return
    try:
        call()
    except Exception as e:
        _wandb_failed = True
        log.warning(
            "wandb stopped taking this run's data (%s: %s); training goes on, and result.json and "
            "samples.jsonl still get every result.",
            type(e).__name__,
            e,
        )


def guarded(method):
    """`method` (a WandbCallback hook) called through `safely`."""

    def call(self, *args, **kwargs):
        safely(lambda: method(self, *args, **kwargs))

    return call
