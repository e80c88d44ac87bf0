"""dpo-lab entry point: one trl.DPOTrainer run per composed config.

python run.py                                   # the default job (tiny model, toy data, offline wandb)
python run.py -m loss=sigmoid,ipo beta=0.1,0.5  # a sweep: one job (and one wandb run) per combination
"""

import logging
import os
import sys
import traceback

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from dpo_lab import console, distributed
from dpo_lab.config import register_configs
from dpo_lab.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USER_ERROR, UserError, bug_line, run_command
from dpo_lab.files import LOG, RESULT, read_json
from dpo_lab.job import TRAIN, exit_code
from dpo_lab.jobdir import check_free, completed_result, prepare
from dpo_lab.launch import cpu_threads, launch
from dpo_lab.quality import value as objective
from dpo_lab.sweeps.preflight import check_command_line
from dpo_lab.sweeps.sweep import jobs_per_gpu, run_name, sweep_name, swept_keys

register_configs()
log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Run one job; return its `objective` (dpo_lab/quality.py; NaN if it failed) for sweepers that optimise. A mistake
    ends a single run with exit 2 (a sweep goes on with its other jobs); a bug in this code with its traceback, the
    bug line and exit 1 (a SystemExit passes Hydra by, which would print the traceback again, without that line)."""
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return run(cfg, multirun)
    except UserError as e:
        log.error("%s", e)
        if multirun:  # this job's row keeps what its dir says
            return float("nan")
        sys.exit(EXIT_USER_ERROR)
    except Exception:
        log.error("%s%s", traceback.format_exc(), bug_line(os.path.join(HydraConfig.get().runtime.output_dir, LOG)))
        sys.exit(EXIT_FAILED)


def run(cfg: DictConfig, multirun: bool) -> float:
    console.tag_rank()
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    group = cfg.wandb.group or (sweep_name(cfg.name, hc.sweep.dir) if multirun else None)
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and v is not None}
    job_dir = hc.runtime.output_dir
    # preflight checked the config (SweepCallback: every job of a sweep; a single run before its dir was made)
    if distributed.joining(cfg.trainer):  # node 1.. of a multi-node job: node 0 prepares the dir and records
        distributed.wait_for_node_zero(job_dir)
        result = read_json(os.path.join(job_dir, RESULT)) or {}
        if result.get("status") != "completed":  # node 0 skips a completed job: its group would wait for nobody
            result = launch(job_dir, TRAIN, True, cfg=cfg)
        return objective(result, cfg.objective)
    check_free(job_dir)  # a relaunch while the first launch still trains there must not touch its files
    # A relaunch skips what finished and resumes what did not; the advice names the key that moves this launch.
    elsewhere = (
        "Launch the sweep into a new directory (hydra.sweep.dir=multirun/NEW_NAME)."
        if multirun
        else f"Run it in a new directory (hydra.run.dir=outputs/NEW_NAME, or leave hydra.run.dir out for "
        f"outputs/{cfg.name}/<time>/)."
    )
    done = completed_result(cfg, job_dir, elsewhere)
    if done:
        log.info("Job %s already completed; skipping it.", job_dir)
        return objective(done, cfg.objective)
    name = run_name(overrides, swept_keys(hc.sweep.dir) if multirun else [])
    meta = prepare(
        cfg,
        job_dir,
        name=name,
        group=group,
        overrides=overrides,
        choices=choices,
        sweep_dir=hc.sweep.dir if multirun else None,
    )
    # A fresh process per job keeps a sweep's jobs from leaking memory or state into each other.
    isolate = cfg.isolate == "always" or (cfg.isolate == "auto" and multirun)
    n_jobs = int(hc.launcher.get("n_jobs") or 1) if multirun else 1  # jobs running at once (joblib: n_jobs)
    threads = cfg.cpu_threads or cpu_threads(n_jobs)
    try:
        result = launch(
            job_dir,
            TRAIN,
            isolate,
            cfg=cfg,
            meta=meta,
            start_method=cfg.start_method,
            threads=threads,
            jobs_per_gpu=jobs_per_gpu(cfg, hc.sweep.dir if multirun else None),
            at_once=n_jobs,
        )
    except KeyboardInterrupt:  # the job recorded `interrupted` and kept its checkpoints
        if multirun:
            raise  # the sweep's message, below
        print(
            f"\nStopped. This resumes the run from its last checkpoint: python run.py {' '.join(overrides)} "
            f"hydra.run.dir={job_dir}",
            file=sys.stderr,
        )
        sys.exit(EXIT_INTERRUPTED)
    if not multirun and result["status"] != "completed":
        sys.exit(exit_code(result))  # 2 if the job ended on a mistake only it could find, else 1
    return objective(result, cfg.objective)


def refuse_multirun_cfg(argv: list) -> None:
    """Hydra shows one composed config, so `-m ... --cfg job` ends in its ValueError traceback: say what works."""
    if {"-m", "--multirun"} & set(argv) and any(a in ("-c", "--cfg") or a.startswith("--cfg=") for a in argv):
        raise UserError(
            "--cfg shows one job's config, and -m runs many. Drop -m (with one value per key) to see a job's config "
            "(python run.py loss=ipo beta=0.5 --cfg job), or add preflight_only=true to the sweep to check every job "
            "and list the command line of each."
        )


def cli() -> int:
    """The command: what Hydra cannot say in one paragraph is checked first; Hydra's main exits itself on a failure."""
    refuse_multirun_cfg(sys.argv[1:])
    try:  # an override that does not compose: said in one paragraph, before Hydra makes a directory
        check_command_line(sys.argv[1:])
    except UserError as e:
        raise UserError(f"Preflight: {e}") from None
    main()
    return EXIT_OK


if __name__ == "__main__":
    # A mistake: its paragraph and 2; Ctrl-C (or `kill`) on a sweep: its running job recorded `interrupted`, 130; a
    # bug outside the job and Hydra's main: its traceback and the bug line, 1 (errors.run_command).
    sys.exit(
        run_command(
            cli,
            stopped="Stopped. The same command resumes: finished jobs are skipped, the stopped one continues from "
            "its last checkpoint.",
        )
    )
