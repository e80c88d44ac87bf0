"""Sweep results a person reads: summary.csv, report.md with a leaderboard and failures, and PNG plots.

Built only from what job directories hold (result.json, job.json, samples.jsonl), so it works for running,
partial and failed sweeps, and without wandb:

    python -m dpo_lab report multirun/loss_beta_grid/2026-11-24_10-00-00 [--out results/my_sweep]
"""

import csv
import glob
import math
import os
from typing import Any, Dict, List, Optional

from dpo_lab import files
from dpo_lab.metrics import means_by_step

HEADLINE = [("eval/rewards/margins", "margin"), ("best_eval/rewards/margins", "best margin"),
            ("eval/rewards/accuracies", "accuracy"), ("best_eval/rewards/accuracies", "best accuracy")]  # fmt: skip
RUN_STATS = ["steps", "train_seconds", "tokens_per_second", "peak_rss_mb", "peak_cuda_mb", "wandb_run_id", "wandb_dir"]


def collect(sweep_dir: str) -> List[Dict[str, Any]]:
    """One row per job dir (numbered subdirs of the sweep), in job order, with its swept values."""
    sweep = files.read_json(os.path.join(sweep_dir, "sweep.json")) or {}
    swept = sweep.get("swept_keys", [])
    rows = []
    for path in glob.glob(os.path.join(sweep_dir, "*", files.JOB)):
        job_dir = os.path.dirname(path)
        meta = files.read_json(path) or {}
        result = files.read_json(os.path.join(job_dir, files.RESULT)) or {"status": "pending"}
        values = dict(o.lstrip("+").split("=", 1) for o in meta.get("overrides", []) if "=" in o)
        row = {"job": os.path.basename(job_dir), "name": meta.get("name"), **{k: values.get(k) for k in swept}}
        row.update(result)
        row["sample_history"] = _sample_history(job_dir)
        rows.append(row)
    return sorted(rows, key=lambda r: (len(r["job"]), r["job"]))


def _sample_history(job_dir: str) -> List[Dict[str, float]]:
    """Mean sample metrics per checkpoint step, from samples.jsonl (empty when the run logged no samples)."""
    rows = files.read_jsonl(os.path.join(job_dir, files.SAMPLES))
    return [{"step": step, **m} for step, m in means_by_step(rows).items()]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = "" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def table(rows: List[Dict[str, Any]], columns: List[tuple]) -> str:
    """A Markdown table (also readable in a terminal)."""
    header = [title for _, title in columns]
    body = [[_fmt(r.get(key)) for key, _ in columns] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def leaderboard(rows: List[Dict[str, Any]]) -> str:
    """Jobs ranked by best eval reward margin, every status included (failed ones last)."""
    ranked = sorted(rows, key=lambda r: (r.get("status") != "completed", -_num(r.get("best_eval/rewards/margins"))))
    sample_cols = [(k, k.split("/")[-1]) for k in ("samples/task_score", "samples/repetition") if any(k in r for r in rows)]
    cols = [("job", "job"), ("name", "run"), ("status", "status"), *HEADLINE, *sample_cols,
            ("steps", "steps"), ("train_seconds", "seconds"), ("peak_rss_mb", "peak MB")]  # fmt: skip
    return table(ranked, cols)


def _num(value: Any) -> float:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf


def plot_margins(rows: List[Dict[str, Any]], path: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in rows if r.get("eval_history")]
    if not runs:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in runs:
        hist = [h for h in r["eval_history"] if "eval/rewards/margins" in h]
        ax.plot([h["step"] for h in hist], [h["eval/rewards/margins"] for h in hist], marker="o", label=r.get("name"))
    ax.set(xlabel="step", ylabel="eval reward margin", title="Eval reward margin per run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_heatmap(rows: List[Dict[str, Any]], path: str, x: str = "beta", y: str = "loss") -> bool:
    """Best margin over a loss x beta grid (only when both are swept)."""
    cells = {(r.get(y), r.get(x)): _num(r.get("best_eval/rewards/margins")) for r in rows if r.get(x) and r.get(y)}
    if len({k[0] for k in cells}) < 2 or len({k[1] for k in cells}) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ys, xs = sorted({k[0] for k in cells}), sorted({k[1] for k in cells}, key=_sort_key)
    grid = np.array([[cells.get((yv, xv), -math.inf) for xv in xs] for yv in ys], dtype=float)
    grid[~np.isfinite(grid)] = np.nan
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(xs), 1.2 + 0.5 * len(ys)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(xs)), xs)
    ax.set_yticks(range(len(ys)), ys)
    ax.set(xlabel=x, ylabel=y, title="Best eval reward margin")
    for i in range(len(ys)):
        for j in range(len(xs)):
            ax.text(j, i, "failed" if np.isnan(grid[i, j]) else f"{grid[i, j]:.3g}", ha="center", va="center", color="w")
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _sort_key(value: str):
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)


def plot_samples(rows: List[Dict[str, Any]], path: str) -> bool:
    runs = [r for r in rows if r.get("sample_history")]
    metrics = [m for m in ("task_score", "repetition", "distinct_2", "ref_nll") if any(m in h for r in runs for h in r["sample_history"])]
    if not runs or not metrics:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for r in runs:
            hist = [h for h in r["sample_history"] if metric in h]
            ax.plot([h["step"] for h in hist], [h[metric] for h in hist], marker="o", label=r.get("name"))
        ax.set(xlabel="step", title=f"samples: {metric}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(sweep_dir: str, out_dir: Optional[str] = None) -> str:
    """Write summary.csv, report.md and plots for `sweep_dir` into `out_dir` (also a summary into the sweep dir)."""
    sweep = files.read_json(os.path.join(sweep_dir, "sweep.json")) or {}
    out_dir = out_dir or sweep.get("results_dir") or os.path.join(sweep_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    rows = collect(sweep_dir)
    swept = sweep.get("swept_keys", [])
    for target in (out_dir, sweep_dir):
        _write_rows_csv(rows, swept, os.path.join(target, "summary.csv"))
    plots = {name: fn(rows, os.path.join(out_dir, name))
             for name, fn in (("margins.png", plot_margins), ("heatmap.png", plot_heatmap), ("samples.png", plot_samples))}  # fmt: skip
    done = sum(r.get("status") == "completed" for r in rows)
    failures = [r for r in rows if r.get("status") == "failed"]
    lines = [f"# Sweep {sweep.get('name') or os.path.basename(sweep_dir)}", "",
             f"`{sweep_dir}`: {done}/{len(rows)} jobs completed.", "", "## Leaderboard", "", leaderboard(rows), ""]  # fmt: skip
    if failures:
        lines += ["## Failures", ""] + [f"- job {r['job']} `{r.get('name')}`: {str(r.get('error', '')).splitlines()[0]}" for r in failures] + [""]
    lines += [f"![{name}]({name})" for name, made in plots.items() if made]
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return out_dir


def _write_rows_csv(rows: List[Dict[str, Any]], swept: List[str], path: str) -> None:
    samples = sorted({k for r in rows for k in r if k.startswith("samples/") or k in ("best_checkpoint_step", "degraded_after_step")})
    keys = ["job", "name", *swept, "status", *(k for k, _ in HEADLINE), *samples, *RUN_STATS, "error"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
