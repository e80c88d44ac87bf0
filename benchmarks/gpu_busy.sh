#!/usr/bin/env bash
# A busy GPU without hand-tuning (issue 22) measured in one call, under 10 minutes on an H100/H200:
#   1. the memory model: estimate beside measured peak for full fine-tuning, LoRA, checkpointing, two lengths and
#      precomputed vs live reference (throughput.py's variants print both), and the auto micro-batch's MFU;
#   2. kernels and compilation: torch.compile, Liger, sdpa vs eager vs flash-attention-2 (a variant whose package
#      is missing prints why it did not run);
#   3. the 4-job tiny sweep with jobs_per_gpu=auto against the same jobs as plain TRL scripts one at a time;
#   4. the padding of trainer=gpu's batches, plain and length-grouped, on the toy data;
#   5. what each method's LM head holds per token and vocabulary entry, and the estimate beside the peak
#      (memory_model.py --logits, on the GPU: torch.cuda.max_memory_allocated).
#
#   bash benchmarks/gpu_busy.sh [OUT_DIR]                    on a GPU (needs trl, datasets, hydra: ../shared/gpu)
#   SIZE=tiny STEPS=4 WARMUP=1 LENGTH=128 bash benchmarks/gpu_busy.sh      a CPU dry run of the script itself
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$(mktemp -d)/gpu-busy}
SIZE=${SIZE:-0.5b}
STEPS=${STEPS:-15}
WARMUP=${WARMUP:-3}
LENGTH=${LENGTH:-1024}
VARIANTS=${VARIANTS:-defaults,auto_batch,auto_batch_lora,live_reference,checkpointing_on,half_length,group_by_length,torch_compile,liger_kernels,attn_flash2}
mkdir -p "$OUT" && cd "$OUT" || exit 1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled
python - <<'PY'
import importlib.metadata as md, torch
print("versions:", ", ".join(f"{p} {md.version(p)}" for p in ("torch", "transformers", "trl", "peft", "accelerate")))
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no CUDA device)")
PY
t0=$SECONDS
echo "== memory model and kernels: python benchmarks/throughput.py --size $SIZE --steps $STEPS --warmup $WARMUP --length $LENGTH --variants $VARIANTS"
python "$ROOT/benchmarks/throughput.py" --size "$SIZE" --steps "$STEPS" --warmup "$WARMUP" --length "$LENGTH" \
  --variants "$VARIANTS" 2>&1 | grep -aE "^\||parameters"
echo "($((SECONDS - t0)) s)"
t1=$SECONDS
echo "== 4-job tiny sweep, jobs_per_gpu=auto: python benchmarks/sweep.py -- hydra/launcher=gpus jobs_per_gpu=auto"
python "$ROOT/benchmarks/sweep.py" -- hydra/launcher=gpus jobs_per_gpu=auto 2>&1 | tail -n 12
echo "($((SECONDS - t1)) s; all: $((SECONDS - t0)) s)"
echo "== padding: python benchmarks/padding.py trainer=gpu max_steps=64"
python "$ROOT/benchmarks/padding.py" trainer=gpu max_steps=64 2>&1 | tail -n 4
echo "(all: $((SECONDS - t0)) s)"
python "$ROOT/benchmarks/memory_model.py" --gpu-peaks-only 2>/dev/null | tail -n 12
echo "== logits: python benchmarks/memory_model.py --logits"
timeout 180 python "$ROOT/benchmarks/memory_model.py" --logits 2>/dev/null | grep -aE "^\||^The LM"
echo "(all: $((SECONDS - t0)) s)"
