"""Does a bf16 checkpoint train like its fp32 twin? Full fine-tuning at our first user's lr (1e-5), 30 steps.

    python benchmarks/bf16_checkpoint.py [extra overrides ...]

Starts from the default run's model (the tiny toy model after its warm-up), saves it in bf16 and as the exact
fp32 upcast, trains each with `model=hf`, and prints per twin: eval margin and accuracy, the dtypes the run used,
and the share of weights that changed. Before dpo-lab loaded weights by precision, the bf16 twin kept bf16 weights
and most of its updates rounded away.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def changed_fraction(start: Path, final: Path) -> float:
    from safetensors.torch import load_file

    a, b = load_file(str(start / "model.safetensors")), load_file(str(final / "model.safetensors"))
    return sum((b[k].float() != a[k].float()).sum().item() for k in b) / sum(t.numel() for t in b.values())


def main() -> None:
    from make_checkpoint import make

    from dpo_lab.toy.sft import ensure_sft
    from dpo_lab.toy.task import ensure_toy

    start = ensure_sft(ensure_toy())  # what model=tiny trains: the default toy model, warmed up (cached)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make(tmp / "ckpt", source=start)
        print("| checkpoint | eval margin | eval accuracy | trainable | optimizer state | compute | weights changed |")
        print("|---|---|---|---|---|---|---|")
        for twin in ("bf16", "fp32"):
            job = tmp / twin
            cmd = [
                sys.executable,
                str(ROOT / "run.py"),
                "model=hf",
                f"model.path={tmp / 'ckpt' / twin}",
                "lr=1e-5",
                "max_steps=30",
                "samples.count=0",
                "wandb.mode=disabled",
                f"hydra.run.dir={job}",
                *sys.argv[1:],
            ]
            subprocess.run(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
            r = json.loads((job / "result.json").read_text())
            if r["status"] != "completed":
                print(f"| {twin} | failed: {r.get('error')} |")
                continue
            dtypes = " | ".join(
                str(r.get(f"{k}_dtype", "not recorded")) for k in ("trainable", "optimizer_state", "compute")
            )
            print(
                f"| {twin} | {r['eval/rewards/margins']:.4f} | {r['eval/rewards/accuracies']:.4f} | {dtypes} "
                f"| {changed_fraction(tmp / 'ckpt' / twin, job / 'final'):.1%} |"
            )


if __name__ == "__main__":
    main()
