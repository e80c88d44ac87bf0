"""Sweep-level bookkeeping: preflight, which keys a sweep varies (names its runs), and the report as it runs."""

import hashlib
import logging
import os
import sys
from typing import List, Optional, Tuple

from hydra.experimental.callback import Callback

from dpo_lab.errors import EXIT_FAILED, EXIT_USER_ERROR, UserError, bug_line
from dpo_lab.files import read_json, write_json
from dpo_lab.sweeps.report import LOCK_TIMEOUT_S, sweep_summary, write_report
from dpo_lab.tracking import sweep_commands

log = logging.getLogger(__name__)

# How long a job's report waits for another process's (a joblib sweep's jobs end at once). Not forever: the job's
# worker waits with it, and the sweep's final report, which waits LOCK_TIMEOUT_S, covers every job anyway.
JOB_REPORT_TIMEOUT_S = 120


def sweep_name(name: str, sweep_dir: str) -> str:
    """`loss_beta_grid-2026-11-24_10-00-00-1a2b3c`: the wandb group and the results/ folder of a sweep. The hash of the
    sweep dir's full path keeps two sweep dirs with one basename (`a/sweep`, `b/sweep`) from sharing a report and a
    group, and gives a relaunch into the same dir the same name."""
    path = os.path.realpath(sweep_dir)
    return f"{name}-{os.path.basename(path)}-{hashlib.sha256(path.encode()).hexdigest()[:6]}"


def swept_keys(sweep_dir: str) -> List[str]:
    """Keys the sweep varies (from sweep.json, written when the multirun starts)."""
    return (read_json(os.path.join(sweep_dir, "sweep.json")) or {}).get("swept_keys", [])


def jobs_per_gpu(cfg, sweep_dir: Optional[str]) -> int:
    """The job's jobs_per_gpu: the setting, or for auto what its sweep decided at the start (sweep.json; 1 for a
    single run)."""
    if str(cfg.jobs_per_gpu) != "auto":
        return int(cfg.jobs_per_gpu)
    return int((read_json(os.path.join(sweep_dir, "sweep.json")) or {}).get("jobs_per_gpu") or 1) if sweep_dir else 1


def run_name(overrides: List[str], swept: List[str]) -> str:
    """`loss=ipo,beta=0.5`: the job's values of the swept keys (all overrides when nothing is swept)."""
    picked = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in swept] or overrides
    return ",".join(picked) or "default"


def _without_preflight_only(overrides: List[str]) -> List[str]:
    """The overrides without preflight_only, so a printed command line runs the job."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "preflight_only"]


def _stopped_by(e: Exception, out=None) -> SystemExit:
    """How a preflight that raised `e` ends (here: Hydra would turn a callback's exception into a warning and start
    the jobs anyway): a UserError's paragraph and exit 2, anything else its traceback, the bug line and exit 1."""
    if isinstance(e, UserError):
        print(f"Preflight: {e}", file=out)
        return SystemExit(EXIT_USER_ERROR)
    import traceback

    print(f"{traceback.format_exc()}Preflight could not run: {type(e).__name__}: {e}. {bug_line()}", file=out)
    return SystemExit(EXIT_FAILED)


class SweepCallback(Callback):
    """Hydra callback: check the output directories can be written before anything runs; record the sweep's
    arguments when a multirun starts; when it ends, print and save the results table and exit 1 if any job failed."""

    def on_run_start(self, config, **kwargs) -> None:
        """A single run: checked like a sweep's job before Hydra makes hydra.run.dir (right after this), so a mistake
        leaves no run dir, log or wandb run; preflight_only=true stops here."""
        from dpo_lab.sweeps.preflight import check_run, check_writable_dir

        try:
            check_writable_dir(config.hydra.run.dir, "hydra.run.dir")
            check_run(config)
        except Exception as e:
            raise _stopped_by(e, sys.stderr) from None
        if config.get("preflight_only"):
            print(
                "Preflight: the run checks out. It would run as:\n  python run.py "
                + " ".join(_without_preflight_only(list(config.hydra.overrides.task)))
            )
            raise SystemExit(0)

    def on_multirun_start(self, config, **kwargs) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        from dpo_lab.launch import start_server, stop_server
        from dpo_lab.sweeps.preflight import check_dirs, check_launcher, task_overrides

        try:
            check_dirs(config)
            check_launcher(config)
        except Exception as e:
            raise _stopped_by(e) from None
        from dpo_lab.distributed import world_size

        if config.isolate != "never" and world_size(config.trainer) == 1:  # its imports overlap with the preflight
            start_server(config.start_method)
        try:
            jobs, estimates = self._preflight(config)
        except BaseException:  # failed, stopped (Ctrl-C) or preflight_only: no job will need the fork server
            stop_server()
            raise
        per_gpu = _jobs_per_gpu(config, estimates)
        sweep_dir = config.hydra.sweep.dir
        os.makedirs(sweep_dir, exist_ok=True)
        args = task_overrides(config)
        params = dict(config.hydra.sweeper.get("params") or {})
        parsed = OverridesParser.create().parse_overrides(args)
        swept = list(params) + [o.key_or_group for o in parsed if o.is_sweep_override()]
        name = sweep_name(config.name, sweep_dir)
        write_json(
            os.path.join(sweep_dir, "sweep.json"),
            {
                "name": name,
                "results_dir": os.path.join(config.results_dir, name),
                "overrides": args,
                "params": params,
                "swept_keys": swept,
                "objective": config.objective,
                "jobs": jobs,
                "jobs_per_gpu": per_gpu,
            },
        )

    @staticmethod
    def _preflight(config) -> Tuple[List[List[str]], List[Optional[float]]]:
        """Every job's overrides and memory estimate (jobs_per_gpu=auto) once preflight passed; else SystemExit: 2
        with what would fail, 1 for a bug, 0 after listing the jobs for preflight_only=true."""
        from dpo_lab.sweeps.preflight import preflight

        try:
            jobs, failures, estimates = preflight(config)
        except Exception as e:
            raise _stopped_by(e) from None
        if failures:
            lines = [f"  job {' '.join(o)}:\n    {reason}" for o, reason in failures]
            print(
                f"Preflight: {len(failures)} of {len(jobs)} jobs would fail; nothing was started.\n" + "\n".join(lines)
            )
            raise SystemExit(EXIT_USER_ERROR)
        if config.get("preflight_only"):
            print(f"Preflight: all {len(jobs)} jobs check out. Each would run as:")
            for i, job in enumerate(jobs):  # without preflight_only, so a copied line runs that job
                print(f"  #{i}: python run.py " + " ".join(_without_preflight_only(job)))
            raise SystemExit(0)
        return jobs, estimates

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.types import RunMode

        if config.hydra.mode == RunMode.MULTIRUN:  # a single run has no sweep to report on
            self._report(config.hydra.sweep.dir, timeout=JOB_REPORT_TIMEOUT_S)

    def on_multirun_end(self, config, **kwargs) -> None:
        from dpo_lab.sweeps.report import collect

        sweep_dir = config.hydra.sweep.dir
        # The authoritative write: every job (and its own report write, in its worker) has ended, and it waits for
        # the report lock as long as it takes a writer, so it is the last and complete one.
        out = self._report(sweep_dir)
        if config.get("wandb", {}).get("dashboard") and config.wandb.mode != "disabled":
            from dpo_lab.dashboard import at_sweep_end

            if at_sweep_end(sweep_dir) and out:  # online runs only; a failure is a warning
                out = self._report(sweep_dir)  # report.md names the view
        try:
            rows = collect(sweep_dir)
            failed = [r for r in rows if r.get("status") != "completed"]
            browse = "".join(f"  {line}\n" for line in sweep_commands(sweep_dir))
            where = f"report: {out}/report.md" if out else "no report: see the warning above"
            print(
                f"\nSweep {sweep_dir}: {len(rows) - len(failed)}/{len(rows)} jobs completed ({where})\n"
                f"{sweep_summary(sweep_dir, rows)}\n{browse}",
                flush=True,
            )
        except Exception as e:  # Hydra would make this a warning and exit 0: a sweep it cannot vouch for fails
            print(
                f"\nSweep {sweep_dir}: its results could not be read back ({type(e).__name__}: {e}); each job's "
                "result.json holds its own.",
                flush=True,
            )
            raise SystemExit(1) from None
        if failed:
            raise SystemExit(1)

    def _report(self, sweep_dir: str, timeout: float = LOCK_TIMEOUT_S) -> Optional[str]:
        """Write the sweep report (its directory, or None). Where results_dir refuses it, into the sweep dir instead,
        with one warning saying where it tried: the report is a convenience and never takes a sweep down."""
        from filelock import Timeout

        first = fallback = None
        try:
            return write_report(sweep_dir, timeout=timeout)
        except Timeout:  # another process holds the report that long: a job's write is left to the sweep's last one
            log.warning(
                "The sweep report was locked by another process for %ss; not written now (python -m dpo_lab "
                "report %s writes it).",
                timeout,
                sweep_dir,
            )
            return None
        except Exception as e:
            first = f"{type(e).__name__}: {e}"
        tried = (read_json(os.path.join(sweep_dir, "sweep.json")) or {}).get("results_dir")
        if tried and os.path.abspath(tried) != os.path.abspath(os.path.join(sweep_dir, "report")):
            try:
                fallback = write_report(sweep_dir, os.path.join(sweep_dir, "report"), timeout=timeout)
            except Exception:
                pass
        if not getattr(self, "_warned", False):
            self._warned = True
            log.warning(
                "Could not write the sweep report to %s (%s); %s",
                tried or os.path.join(sweep_dir, "report"),
                first,
                f"writing it to {fallback} instead."
                if fallback
                else "the results table is printed "
                f"when the sweep ends (python -m dpo_lab report {sweep_dir} --out DIR writes it elsewhere).",
            )
        return fallback


def _jobs_per_gpu(config, estimates: List[Optional[float]]) -> int:
    """The sweep's jobs per GPU: jobs_per_gpu, or for auto what gpus.auto_jobs_per_gpu decides, said in the log.
    Under Hydra's joblib launcher (hydra/launcher=gpus) auto also sets n_jobs to GPUs x that, unless the command
    line sets hydra.launcher.n_jobs (the launcher is built from this config after this callback)."""
    if str(config.jobs_per_gpu) != "auto":
        return int(config.jobs_per_gpu)
    from omegaconf import open_dict

    from dpo_lab.gpus import auto_jobs_per_gpu, card_memory

    cards, processes = card_memory(), int(config.trainer.processes)
    if processes > 1 and cards:  # a job takes whole GPUs (gpus.gpu_env)
        n, slots = 1, len(cards) // processes
        why = f"1: each job takes {processes} whole GPUs ({slots} such job(s) at once on {len(cards)} GPU(s))"
    else:
        n, why = auto_jobs_per_gpu(estimates, cards)
        slots = min(len(estimates), n * len(cards))
    launcher = config.hydra.launcher
    given = any(o.split("=", 1)[0].lstrip("+~") == "hydra.launcher.n_jobs" for o in config.hydra.overrides.hydra)
    if str(launcher.get("_target_", "")).endswith("JoblibLauncher") and slots and not given:
        with open_dict(config):
            launcher.n_jobs = slots
        why += f"; hydra.launcher.n_jobs={launcher.n_jobs}"
    log.info("jobs_per_gpu=%s", why)
    return n
