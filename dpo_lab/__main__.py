"""Command line tools around saved jobs.

    python -m dpo_lab rerun JOB_DIR [key=value ...] [--out DIR]   rerun a saved job (optionally changed)
    python -m dpo_lab execute JOB_DIR                              run a prepared job dir (used by sweeps)
"""

import argparse
import sys

from dpo_lab import job


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpo_lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("execute", help="run a prepared job directory in this process")
    p.add_argument("job_dir")
    p = sub.add_parser("rerun", help="rerun a saved job from its config.yaml, optionally with overrides")
    p.add_argument("job_dir")
    p.add_argument("overrides", nargs="*", help="key=value changes, e.g. max_steps=20 wandb.mode=disabled")
    p.add_argument("--out", help="where the rerun goes (default: JOB_DIR/reruns/<time>)")
    args = parser.parse_args(argv)

    if args.command == "execute":
        job.setup_logging(args.job_dir)
        return 0 if job.execute(args.job_dir)["status"] == "completed" else 1
    if args.command == "rerun":
        from dpo_lab.rerun import rerun

        job.setup_logging()
        return rerun(args.job_dir, args.overrides, args.out)
    return 2


if __name__ == "__main__":
    sys.exit(main())
