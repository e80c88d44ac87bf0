"""Command line tools around saved jobs.

python -m dpo_lab rerun JOB_DIR [key=value ...] [--out DIR]   rerun a saved job (optionally changed)
python -m dpo_lab rerun wandb:ENTITY/PROJECT/RUN_ID [...]      rerun from an online wandb run's logged config
python -m dpo_lab execute JOB_DIR                              run a prepared job dir (used by sweeps)
python -m dpo_lab samples JOB_DIR [--step N]                   a job's checkpoint samples, side by side
python -m dpo_lab report SWEEP_DIR [--out DIR]                 summary.csv, report.md and plots of a sweep
python -m dpo_lab cache list | prune [--older-than DAYS] [--max-size SIZE] [--dry-run]   $DPO_LAB_CACHE's entries
python -m dpo_lab dashboard SWEEP_DIR [--push]                 a sweep's W&B workspace view (spec; --push saves it)

Exit status: 0 done, 1 a job ran and failed (or a bug, with its traceback), 2 a mistake (said in one paragraph),
75 the job dir is busy, 130 stopped.
"""

import argparse
import os
import sys

from dpo_lab import cache, console
from dpo_lab.distributed import SWEEP_PID_ENV
from dpo_lab.errors import EXIT_BUSY, EXIT_OK, run_command
from dpo_lab.files import is_main_rank


def execute(args) -> int:
    from dpo_lab.job import TRAIN, exit_code, prepared
    from dpo_lab.job import execute as run_job
    from dpo_lab.jobdir import JobBusy

    meta = prepared(args.job_dir)  # before the log file goes into it
    console.setup_logging(args.job_dir)
    console.tag_rank()  # a rank of a launch group: its lines start with [rank N]
    if os.environ.get(SWEEP_PID_ENV):  # started by a sweep's launch._run_group: stop when that sweep is gone
        from dpo_lab.launch import stop_with

        stop_with(int(os.environ[SWEEP_PID_ENV]))
    try:
        result = run_job(args.job_dir, TRAIN, meta=meta)
    except JobBusy as e:
        print(e, file=sys.stderr)
        return EXIT_BUSY
    if result["status"] == "diverged" and not is_main_rank():
        # StepGuard stops every rank at the same step, and rank 0 records it: another rank exiting 1 first would
        # have the elastic agent stop rank 0 before it writes, and name that rank's exit as the job's failure
        return EXIT_OK
    return exit_code(result)


def rerun(args) -> int:
    from dpo_lab.rerun import rerun

    console.setup_logging()
    return rerun(args.job_dir, args.overrides, args.out)


def samples(args) -> int:
    from dpo_lab.samples.viewer import show

    print(show(args.job_dir, args.step, args.width))
    return EXIT_OK


def report(args) -> int:
    from dpo_lab.sweeps.report import collect, sweep_summary, write_report

    out = write_report(args.sweep_dir, args.out)
    print(f"{sweep_summary(args.sweep_dir, collect(args.sweep_dir))}\n\nWrote {out}/report.md, summary.csv and plots.")
    return EXIT_OK


def dashboard(args) -> int:
    from dpo_lab.dashboard import main

    console.setup_logging()
    print(main(args.sweep_dir, args.push))
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    """One subparser per command; each names its function (`run`)."""
    parser = argparse.ArgumentParser(
        prog="python -m dpo_lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("execute", help="run a prepared job directory in this process")
    p.add_argument("job_dir")
    p.set_defaults(run=execute)
    p = sub.add_parser("rerun", help="rerun a saved job from its config.yaml, optionally with overrides")
    p.add_argument(
        "job_dir",
        help="a job directory (outputs/<name>/<time>, multirun/<name>/<time>/<n>), or "
        "wandb:ENTITY/PROJECT/RUN_ID for the config an online wandb run logged",
    )
    p.add_argument("overrides", nargs="*", help="key=value changes, e.g. max_steps=20 wandb.mode=disabled")
    p.add_argument("--out", help="where the rerun goes (default: JOB_DIR/reruns/<time>)")
    p.set_defaults(run=rerun)
    p = sub.add_parser("samples", help="print a job's checkpoint samples: policy / reference / ground truth")
    p.add_argument("job_dir")
    p.add_argument("--step", type=int, help="the checkpoint to show (default: the last sampled)")
    p.add_argument("--width", type=int, help="output width in columns (default: the terminal's)")
    p.set_defaults(run=samples)
    p = sub.add_parser("report", help="(re)write a sweep's summary.csv, report.md and plots, also for partial sweeps")
    p.add_argument("sweep_dir")
    p.add_argument("--out", help="where to write (default: results/<sweep name>/ as recorded by the sweep)")
    p.set_defaults(run=report)
    p = sub.add_parser("dashboard", help="a sweep's W&B workspace view: its spec, and with --push the saved view")
    p.add_argument("sweep_dir")
    p.add_argument("--push", action="store_true", help="save the view to W&B (needs a logged-in wandb)")
    p.set_defaults(run=dashboard)
    cache.add_arguments(sub.add_parser("cache", help="list $DPO_LAB_CACHE's entries, or prune old and unused ones"))
    return parser


def main(argv=None) -> int:
    """The one boundary of every command (errors.run_command); argparse exits 2 on a bad command line itself."""
    args = parser().parse_args(argv)
    return run_command(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
