"""A dpo-lab sweep against the same runs as plain TRL scripts: wall time, speed-up, and the same results.

    python benchmarks/sweep.py [--jobs 4|8] [--max_steps N] [-- dpo-lab overrides ...]

Runs the default-size sweep, losses sigmoid and ipo times 2 betas (0.1, 0.5; `--jobs 8`: 0.05, 0.1, 0.25, 0.5), twice:
as `--jobs` plain TRL scripts run one after another (benchmarks/plain_dpo.py: one process each, TRL's live
reference, as our first user ran them) and as one dpo-lab multirun (`python run.py -m ...`, its defaults: reference
log-probs and tokenized data computed once per sweep, jobs forked from a preloaded server). Both with samples and
wandb off (the plain script has neither). dpo-lab's shared artifacts start from an empty cache (the toy data and
the warm-up are linked in, built once beforehand), so the sweep pays for computing them.

Prints both wall times, each job's final eval metrics side by side, and `speedup: X.XX` on its own line. A job whose
eval loss, log-ratio margin or accuracy differ beyond the tolerance (absolute 1e-3 + relative 1e-3) fails the
benchmark: a speed-up that changes results does not count.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("eval/loss", "eval/rewards/margins", "eval/rewards/accuracies")
ABS_TOL, REL_TOL = 1e-3, 1e-3


def timed(cmd, env, log):
    started = time.time()
    with open(log, "w") as f:
        code = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if code != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed (exit {code}); see {log}")
    return time.time() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, choices=(4, 8), default=4)
    p.add_argument("--max_steps", type=int, default=None, help="cap each run (default: one epoch, 128 steps)")
    p.add_argument(
        "overrides", nargs="*", help="extra dpo-lab overrides, e.g. hydra/launcher=gpus hydra.launcher.n_jobs=2"
    )
    a = p.parse_args()

    from dpo_lab.toy.sft import ensure_sft
    from dpo_lab.toy.task import ensure_toy

    toy = ensure_toy()  # what model=tiny trains on: built once into $DPO_LAB_CACHE, outside the timing
    model = ensure_sft(toy)
    betas = ["0.1", "0.5"] if a.jobs == 4 else ["0.05", "0.1", "0.25", "0.5"]
    jobs = [(loss, beta) for loss in ("sigmoid", "ipo") for beta in betas]  # the order Hydra runs them in
    steps = ["--max_steps", str(a.max_steps)] if a.max_steps else []

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"  # the sweep's shared artifacts start cold; the toy data and warm-up are linked in
        cache.mkdir()
        for artifact in (Path(toy["model"]).parent, Path(model).parent):
            (cache / artifact.name).symlink_to(artifact)
        env = {**os.environ, "DPO_LAB_CACHE": str(cache), "WANDB_MODE": "disabled"}

        plain = 0.0
        for i, (loss, beta) in enumerate(jobs):
            cmd = [
                sys.executable,
                "benchmarks/plain_dpo.py",
                "--model",
                str(model),
                "--train_file",
                toy["train_file"],
                "--eval_file",
                toy["eval_file"],
                "--loss",
                loss,
                "--beta",
                beta,
                "--out",
                str(tmp / "plain" / str(i)),
                *steps,
            ]
            plain += timed(cmd, env, tmp / f"plain-{i}.log")
            print(f"plain script {i + 1}/{len(jobs)} ({loss}, beta {beta}): {plain:.0f} s so far", flush=True)

        sweep = tmp / "sweep"
        cmd = [
            sys.executable,
            "run.py",
            "-m",
            "loss=sigmoid,ipo",
            f"beta={','.join(betas)}",
            "samples=off",
            "wandb.mode=disabled",
            f"hydra.sweep.dir={sweep}",
            f"results_dir={tmp / 'results'}",
            *([f"max_steps={a.max_steps}"] if a.max_steps else []),
            *a.overrides,
        ]
        ours = timed(cmd, env, tmp / "sweep.log")

        print(
            f"\n| job | {' | '.join(f'{k} plain / dpo-lab' for k in KEYS)} | reference log-probs "
            "| seconds to first step |"
        )
        print("|---|" + "---|" * (len(KEYS) + 2))
        mismatched = []
        for i, (loss, beta) in enumerate(jobs):
            theirs = json.loads((tmp / "plain" / str(i) / "metrics.json").read_text())
            result = json.loads((sweep / str(i) / "result.json").read_text())
            cells = []
            for k in KEYS:
                x, y = theirs[k], result[k]
                if abs(x - y) > ABS_TOL + REL_TOL * abs(x):
                    mismatched.append(f"job {i} {k}: {x} vs {y}")
                cells.append(f"{x:.5g} / {y:.5g}")
            print(
                f"| loss={loss} beta={beta} | {' | '.join(cells)} | {result.get('reference_logps')} | "
                f"{result.get('seconds_to_first_step')} |"
            )

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {len(os.sched_getaffinity(0))} cores"
    print(f"\n{len(jobs)} jobs on {device}: plain TRL scripts {plain:.1f} s, dpo-lab sweep {ours:.1f} s")
    print(f"metrics agree within {ABS_TOL:g} + {REL_TOL:g} x |value|: {'yes' if not mismatched else 'NO'}")
    print(f"speedup: {plain / ours:.2f}")
    if mismatched:
        sys.exit("Results differ:\n  " + "\n  ".join(mismatched))


if __name__ == "__main__":
    main()
