#!/usr/bin/env bash
# Does dpo-lab train correctly on this machine's GPU stack? One script; a few minutes on an H100/H200.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          SIZE=270m STEPS=40 SWEEP=1 by default
#   SIZE=tiny STEPS=4 SWEEP=0 TRAINER=default bash benchmarks/gpu_check.sh     a CPU dry run of the script itself
#
# 1. The README's default sweep (tiny model, loss {sigmoid, ipo} x beta {0.1, 0.5}).
# 2. model=hf on a random Qwen2-shaped checkpoint saved in bf16 and on its exact fp32 upcast (full fine-tuning,
#    trainer=gpu, lr 1e-5): the two must train alike. Then LoRA on the bf16 checkpoint, and the bf16 job with
#    activation checkpointing forced on (trainer=gpu leaves it to the memory estimate), and bf16-pure where torchao is.
# Prints versions and device, then per job: precision and the dtypes it really used, checkpointing, time,
# tokens/s, peak GPU memory, eval margin and accuracy. wandb is off (GPU machines may not have it).
#
# On a GPU machine without package access (../shared/gpu/README.md): fetch the wheels into .whl/ here, then there
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
#   bash benchmarks/gpu_check.sh
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$(mktemp -d)/gpu-check}
SIZE=${SIZE:-270m}
STEPS=${STEPS:-40}
SWEEP=${SWEEP:-1}
TRAINER=${TRAINER:-gpu}
mkdir -p "$OUT" && cd "$OUT" || exit 1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # benchmarks/ scripts import dpo_lab from this checkout
export DPO_LAB_CACHE=${DPO_LAB_CACHE:-$OUT/cache} WANDB_MODE=disabled
python - <<'PY'
import importlib.metadata as md, torch
print("versions:", ", ".join(f"{p} {md.version(p)}" for p in ("torch", "transformers", "trl", "peft", "accelerate", "datasets")))
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no CUDA device)")
PY
run() { local name=$1; shift; local t0=$SECONDS
  python "$ROOT/run.py" -m "$@" wandb.mode=disabled hydra.sweep.dir="$OUT/$name" > "$OUT/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - t0)) s (log: $OUT/$name.log)"; }

[ "$SWEEP" = 1 ] && run default loss=sigmoid,ipo beta=0.1,0.5
python "$ROOT/benchmarks/make_checkpoint.py" --out "$OUT/ckpt" --size "$SIZE" 2>/dev/null
HF=(model=hf data=toy trainer="$TRAINER" lr=1e-5 max_steps="$STEPS" samples.count=0 trainer.eval_steps="$STEPS")
run hf_full "${HF[@]}" model.path="$OUT/ckpt/bf16","$OUT/ckpt/fp32"
run hf_lora "${HF[@]}" model.path="$OUT/ckpt/bf16" peft=lora lr=1e-4
run hf_checkpointing "${HF[@]}" model.path="$OUT/ckpt/bf16" trainer.activation_checkpointing=true
python -c "import torchao" 2>/dev/null && run hf_pure "${HF[@]}" model.path="$OUT/ckpt/bf16" trainer.precision=bf16-pure

python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
cols = ("precision", "trainable_dtype", "optimizer_state_dtype", "compute_dtype", "reference_dtype",
        "activation_checkpointing", "memory_estimate_gb", "steps", "train_seconds", "tokens_per_second",
        "peak_cuda_mb", "eval/rewards/margins", "eval/rewards/accuracies")
print("| job | status | " + " | ".join(cols) + " |")
print("|" + "---|" * (len(cols) + 2))
results = {}
for path in sorted(out.glob("*/[0-9]*/result.json")):
    r = json.loads(path.read_text())
    model = next((o.rsplit("/", 1)[-1] for o in r["overrides"] if o.startswith("model.path=")), None)
    job = f"{path.parent.parent.name}/" + (model or r["name"])
    results[job] = r
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    print(f"| {job} | {r['status']} | " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" +
          (f" error: {r.get('error')}" if r["status"] != "completed" else ""))
twins = [r for j, r in results.items() if j.startswith("hf_full/") and r["status"] == "completed"]
if len(twins) == 2:
    a, b = (t["eval/rewards/margins"] for t in twins)
    print(f"bf16 checkpoint vs its fp32 upcast: eval margin {a:.5f} vs {b:.5f} (difference {abs(a - b):.2e})")
PY
