"""Weights & Biases: one run per job, offline unless credentials exist, always finished.

transformers' WandbCallback (report_to="wandb") does the metric logging; it reuses the run started
here, so the run carries our directory, group, name and the full resolved config.
"""

import logging
import netrc
import os
from typing import Any, Dict, Optional
from urllib.parse import urlparse

log = logging.getLogger(__name__)

# TRL's eval metrics as WandbCallback names them; summaries make the best value a run-table column.
EVAL_SUMMARIES = {
    "eval/rewards/margins": "max,last",
    "eval/rewards/accuracies": "max,last",
    "eval/loss": "min,last",
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


def start_run(cfg, out_dir: str, name: str, group: Optional[str], config: Dict[str, Any], run_id: Optional[str] = None):
    """Start (or, given the id of an interrupted one, continue) this job's wandb run in `out_dir`; None if disabled."""
    mode = resolve_mode(cfg.mode)
    if mode == "disabled" or int(os.environ.get("RANK", "0")) != 0:  # under `accelerate launch`, rank 0 logs
        return None
    import wandb

    if wandb.run is not None:  # never merge two jobs into one run
        wandb.run.finish()
    if os.environ.get("WANDB_SWEEP_ID"):  # a `wandb agent` assigns the run id
        run_id = None
    run = wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        mode=mode,
        dir=out_dir,
        name=name,
        group=group,
        tags=list(cfg.tags) or None,
        config=config,
        id=run_id,
        resume="allow" if run_id else None,
        reinit="finish_previous",
        settings=wandb.Settings(quiet=True, console="wrap"),
    )
    run.define_metric("train/global_step")
    run.define_metric("*", step_metric="train/global_step", step_sync=True)
    for key, summary in EVAL_SUMMARIES.items():
        run.define_metric(key, step_metric="train/global_step", summary=summary)
    return run


def finish_run(run, failed: bool) -> None:
    """Finish the run (exit code 1 if the job failed) and tell offline users how to sync and browse."""
    if run is None:
        return
    offline = run.settings.mode == "offline"
    run_dir = run.settings.sync_dir
    run.finish(exit_code=1 if failed else 0)
    if offline:
        log.info(
            "wandb ran offline; the run is in %s\n  upload it:     wandb sync %s\n  browse locally: wandb leet %s",
            run_dir, run_dir, run_dir,
        )  # fmt: skip
