"""Padding in the default batches, and what length-grouped batches (trainer.group_by_length) change.

    python benchmarks/padding.py [dpo-lab overrides ...]

Runs the default job (toy data, batch 8, one epoch; samples and wandb off) twice in one sweep, in the plain random
order and length-grouped (transformers' LengthGroupedSampler), and prints each run's padding fraction (the share of
the collated positions that are padding, counted by the trainer: perf.Meter), tokens/s, training time and final eval
metrics. Extra arguments go to both jobs (e.g. `trainer=gpu`, `data=json data.train_file=...`).
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("padding_fraction", "tokens_per_second", "train_seconds", "eval/loss", "eval/rewards/accuracies")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "sweep"
        cmd = [
            sys.executable,
            str(ROOT / "run.py"),
            "-m",
            "trainer.group_by_length=false,true",
            "samples.count=0",
            "wandb.mode=disabled",
            f"hydra.sweep.dir={sweep}",
            f"results_dir={tmp}/results",
            *sys.argv[1:],
        ]
        proc = subprocess.run(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode:
            sys.exit(proc.stdout[-3000:])
        print(f"python benchmarks/padding.py {' '.join(sys.argv[1:])}\n")
        print("| order | " + " | ".join(KEYS) + " |")
        print("|---" * (len(KEYS) + 1) + "|")
        for i, order in enumerate(("random", "length-grouped")):
            r = json.loads((sweep / str(i) / "result.json").read_text())
            print(f"| {order} | " + " | ".join(f"{r.get(k, float('nan')):.4g}" for k in KEYS) + " |")


if __name__ == "__main__":
    main()
