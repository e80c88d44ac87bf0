"""Does a sweep leak? Run an 8-job sweep and print each job's peak memory; the last should match the first.

    python benchmarks/sweep_memory.py [--jobs 8] [extra overrides ...]

Each job runs in its own process (isolate=auto), so peak RSS (and peak CUDA memory on a GPU) per job should
stay flat. With isolate=never all jobs share one process, for comparison:

    python benchmarks/sweep_memory.py isolate=never
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        seeds = ",".join(str(s) for s in range(args.jobs))
        cmd = [
            sys.executable,
            os.path.join(ROOT, "run.py"),
            "-m",
            f"seed={seeds}",
            "max_steps=20",
            "wandb.mode=disabled",
            "samples.count=0",
            f"hydra.sweep.dir={tmp}/sweep",
            *args.overrides,
        ]
        subprocess.run(cmd, cwd=tmp, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results = []
        for job in sorted(os.listdir(f"{tmp}/sweep"), key=lambda s: (len(s), s)):
            path = f"{tmp}/sweep/{job}/result.json"
            if os.path.isfile(path):
                results.append(json.load(open(path)))
    print(f"{'job':>4} {'status':>10} {'peak RSS MB':>12} {'peak CUDA MB':>13}")
    for i, r in enumerate(results):
        print(
            f"{i:>4} {r['status']:>10} {r.get('peak_rss_mb', float('nan')):12.1f} "
            f"{r.get('peak_cuda_mb', float('nan')):13.1f}"
        )
    first, last = results[0].get("peak_rss_mb"), results[-1].get("peak_rss_mb")
    print(f"last/first peak RSS: {last / first:.3f}")


if __name__ == "__main__":
    main()
