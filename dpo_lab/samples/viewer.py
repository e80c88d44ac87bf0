"""`python -m dpo_lab samples JOB_DIR [--step N]`: a job's checkpoint metrics, then one checkpoint's answers as
policy / reference / ground truth columns (CJK characters count two terminal columns)."""

import os
import shutil
import unicodedata
from typing import List, Optional

from dpo_lab import files
from dpo_lab.errors import UserError
from dpo_lab.samples.metrics import SAMPLE_METRICS, means_by_step


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def wrap(text: str, width: int) -> List[str]:
    """Lines of at most `width` terminal columns (CJK characters take two), broken at spaces where possible."""
    lines = []
    for para in text.splitlines() or [""]:
        line = ""
        for ch in para:
            if _width(line + ch) > width:
                cut = line.rfind(" ")
                if cut > 0 and ch != " ":
                    lines.append(line[:cut])
                    line = line[cut + 1 :]
                else:
                    lines.append(line)
                    line = ""
            if ch != " " or line:
                line += ch
        lines.append(line)
    return lines


def show(job_dir: str, step: Optional[int] = None, width: Optional[int] = None) -> str:
    """The metrics of every sampled checkpoint, then one checkpoint's answers side by side (default: the last)."""
    rows = files.read_jsonl(os.path.join(job_dir, files.SAMPLES))
    if not rows:
        raise UserError(f"{job_dir} has no {files.SAMPLES}: not a job directory, or a run with samples.count=0.")
    history = means_by_step(rows)
    steps = list(history)
    step = steps[-1] if step is None else step
    if step not in steps:
        raise UserError(f"{job_dir} has no samples at step {step}; sampled steps: {', '.join(map(str, steps))}.")
    width = max(60, width or shutil.get_terminal_size((120, 24)).columns)
    keys = [
        k
        for k in ("win_rate", "task_score", "repetition", "distinct_1", "distinct_2", "ref_nll", "mean_length")
        if any(k in m for m in history.values())
    ]
    out = [f"{'step':>6}  " + "  ".join(f"{k:>11}" for k in keys)]
    for s, m in history.items():
        out.append(f"{s:>6}  " + "  ".join(f"{m[k]:>11.3f}" if k in m else f"{'-':>11}" for k in keys))
    result = files.read_json(os.path.join(job_dir, files.RESULT)) or {}
    if result.get("best_checkpoint_step") is not None:
        degraded = result.get("degraded_after_step")
        out.append(
            f"best checkpoint: step {result['best_checkpoint_step']} by {result['best_checkpoint_metric']}"
            + (f"; degraded after step {degraded}" if degraded is not None else "")
        )
    col = (width - 6) // 3
    picked = [r for r in rows if r["step"] == step]
    for n, r in enumerate(picked, start=1):
        out += ["", "=" * width, f"step {step}  prompt {n}/{len(picked)} (eval row {r['index']})"]
        out += wrap(r["prompt"], width) + ["-" * width]
        cols = [wrap(r[k] or "", col) for k in ("policy", "reference", "ground_truth")]
        out.append(" | ".join(h.ljust(col) for h in ("policy", "reference", "ground truth")))
        for i in range(max(map(len, cols))):
            out.append(
                " | ".join(c[i] + " " * (col - _width(c[i])) if i < len(c) else " " * col for c in cols).rstrip()
            )
        out += wrap("  ".join(f"{k} {r[k]:.3g}" for k in SAMPLE_METRICS if r.get(k) is not None), width)
    return "\n".join(out)
