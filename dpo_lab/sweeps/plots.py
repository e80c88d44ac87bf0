"""The sweep report's figures (matplotlib, headless): samples.png, eval.png, heatmap.png and frontier.png. Each
plot_* function takes report.collect's rows and returns whether it wrote its figure."""

import itertools
import math
from typing import Any, Dict, List, Optional

from dpo_lab import files, quality
from dpo_lab.quality import finite_or_minus_inf, frontier, rounded_pm, scored_history, scored_runs
from dpo_lab.samples.metrics import BETTER

DPI = 100  # a figure's inches x 100: its PNG's pixels


# Checkpoint sample metrics, in metrics.resolve_metric's order, and what their y axis measures. A judge's reward and
# the answers' KL are frontier.png's axes (plot_frontier), so samples.png stays at four panels.
SAMPLE_AXES = {
    "win_rate": "win rate over the reference's answers\n(judge; 0.5: no better than the start)",
    "task_score": "task score\n(share of the required words present)",
    "repetition": "repetition\n(share of 4-grams repeating an earlier one)",
    "ref_nll": "reference model's NLL of the answers\n(nats per token)",
}


EVAL_PANELS = [
    (
        "eval/logratios/margins",
        "eval log-ratio margin (higher is better)",
        "log-ratio margin, chosen - rejected\n(nats; TRL's reward margin / beta)",
    ),
    (
        "eval/rewards/accuracies",
        "eval preference accuracy (higher is better)",
        "share of held-out pairs ranked right\n(chosen reward > rejected; ties count wrong)",
    ),
]


STYLES = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-"), ("P", "--"), ("X", ":"), ("*", "-.")]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> bool:
    """Write the figure all at once (a reader never sees half a PNG) and free it."""
    with files.atomic_write(path, mode=None) as tmp:  # the temp name keeps .png: savefig picks the format by it
        fig.savefig(tmp, dpi=DPI)
    _pyplot().close(fig)
    return True


def _lines(ax, runs: List[Dict[str, Any]], history: str, key: str, se_key: Optional[str]) -> None:
    """One line per run: its own marker and line style, x nudged apart a little so equal values stay visible, and
    error bars of ±1.96 standard errors where `se_key` is given and measured (bars, not bands: four runs' bands
    overlap into one blob)."""
    span = max((h["step"] for r in runs for h in r[history]), default=1) or 1
    for i, r in enumerate(runs):
        hist = [h for h in r[history] if key in h]
        if not hist:
            continue
        dx = (i - (len(runs) - 1) / 2) * span * 0.01
        x = [h["step"] + dx for h in hist]
        y = [h[key] for h in hist]
        marker, style = STYLES[i % len(STYLES)]
        (line,) = ax.plot(x, y, marker=marker, linestyle=style, markersize=5, label=r.get("name"))
        if se_key and all(se_key in h for h in hist):
            ax.errorbar(
                x,
                y,
                yerr=[1.96 * h[se_key] for h in hist],
                fmt="none",
                ecolor=line.get_color(),
                elinewidth=1,
                capsize=3,
                alpha=0.6,
            )


def _legend(fig, axes, used: int) -> None:
    """One legend of the runs for the whole figure: in the grid's spare panel where it has one, else below it."""
    found = {}
    for ax in axes.flat[:used]:
        found.update(zip(*reversed(ax.get_legend_handles_labels())))
    spare = axes.flat[used:]
    for ax in spare:
        ax.axis("off")
    if len(spare):
        spare[0].legend(found.values(), found.keys(), loc="center", title="run")
        fig.tight_layout()
        return
    ncol = min(4, len(found))
    fig.legend(found.values(), found.keys(), loc="lower center", ncol=ncol, title="run", frameon=False)
    legend_in = 0.3 + 0.25 * math.ceil(len(found) / ncol)  # its title and one line per legend row, in inches
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1))


def plot_eval(rows: List[Dict[str, Any]], path: str) -> bool:
    """The β-free eval metrics per eval step: log-ratio margin and held-out accuracy, with 95% error bars over the
    eval batches; the accuracy panel says why it reads 0 at step 0."""
    runs = [r for r in rows if r.get("eval_history")]
    panels = [p for p in EVAL_PANELS if any(p[0] in h for r in runs for h in r["eval_history"])]
    if not runs or not panels:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.2), squeeze=False)
    for ax, (key, title, ylabel) in zip(axes.flat, panels):
        _lines(ax, runs, "eval_history", key, key + "_se")
        ax.set(xlabel="step", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        if key == "eval/rewards/accuracies":
            _mark_ties(ax, runs)
    _legend(fig, axes, len(panels))
    return _save(fig, path)


def _mark_ties(ax, runs: List[Dict[str, Any]]) -> None:
    """TRL's accuracy is the share of pairs with chosen reward > rejected: at step 0 the policy is the reference,
    every margin is exactly 0 and every tie counts as wrong, so a 0 there means untrained, not wrong."""
    if not any(h["step"] == 0 and h.get("eval/rewards/accuracies") == 0 for r in runs for h in r["eval_history"]):
        return
    ax.annotate(
        "step 0: policy = reference, every margin is 0;\nTRL counts these ties as wrong, so 0 here\n"
        "means untrained, not worse than chance",
        xy=(0, 0),
        xytext=(0.4, 0.25),
        textcoords="axes fraction",
        fontsize=9,
        arrowprops={"arrowstyle": "->", "color": "0.3"},
        bbox={"boxstyle": "round", "fc": "w", "ec": "0.7"},
    )


def heatmap_keys(rows: List[Dict[str, Any]], swept: List[str]) -> List[str]:
    """The swept keys a heatmap lays out: all but `seed` (averaged over), each with at least two values."""
    return [k for k in swept if k != "seed" and len({r.get(k) for r in rows if r.get(k) is not None}) >= 2]


def plot_heatmap(rows: List[Dict[str, Any]], path: str, objective: str, swept: List[str]) -> bool:
    """The objective of each configuration (seeds averaged): the last swept key across, the others down (one key:
    a single column), each cell with its 95% interval. Cells within noise of the best are hatched and say `≈ best`
    (their colour differences are not shown to be real), the best is outlined."""
    keys = heatmap_keys(rows, swept)
    if not keys:
        return False
    down, across = (keys[:-1], keys[-1]) if len(keys) > 1 else (keys, None)
    ys = [y for y in itertools.product(*(_values(rows, k) for k in down)) if any(_key(r, down) == y for r in rows)]
    xs = _values(rows, across) if across else [None]
    cells = [[y + ((x,) if across else ()) for x in xs] for y in ys]  # each cell's values of `keys`
    key = quality.OBJECTIVES[objective].key
    configs = {_key(c, keys): c for c in quality.aggregate(rows, keys, objective, [key])}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3.8 + 1.7 * len(xs), 2.0 + 0.9 * len(ys)))
    im = _heat_image(ax, [[configs.get(c, {}).get(key) for c in row] for row in cells], configs.values(), key)
    for i, row in enumerate(cells):
        for j, c in enumerate(row):
            status = next((r.get("status", "") for r in rows if _key(r, keys) == c), "")
            _heat_cell(ax, im, (i, j), configs.get(c), key, status)
    ax.set_xticks(range(len(xs)), xs) if across else ax.set_xticks([])
    ax.set_yticks(range(len(ys)), [",".join(y) for y in ys])
    ax.set(xlabel=across or "", ylabel=",".join(down))
    seeds = " (mean over seeds)" if "seed" in swept else ""
    ax.set_title(
        f"{objective} per configuration{seeds}, ± 95% interval\nhatched: within noise of the best (outlined)",
        fontsize=10,
    )
    fig.colorbar(im, label=f"{objective} ({key})")
    fig.tight_layout()
    return _save(fig, path)


def _heat_image(ax, values: List[List[Optional[float]]], configs, key: str):
    """The coloured cells (grey where a configuration has no result). The colour scale spans at least the best's
    95% interval, so differences inside the noise take a small part of it."""
    import numpy as np
    from matplotlib.colors import Normalize

    grid = np.array([[finite_or_minus_inf(v) for v in row] for row in values], dtype=float)
    grid[~np.isfinite(grid)] = np.nan
    best = next((c for c in configs if c.get("vs_best") == "best"), {})
    half = best.get(f"{key}_ci") or 0.0
    found = [v for v in grid.flat if np.isfinite(v)] + ([best[key] - half, best[key] + half] if key in best else [])
    norm = Normalize(min(found), max(found)) if found else None
    return ax.imshow(grid, cmap=_pyplot().get_cmap("viridis").with_extremes(bad="0.85"), norm=norm, aspect="auto")


def _heat_cell(ax, im, at: tuple, config: Optional[Dict[str, Any]], key: str, status: str) -> None:
    """A cell's text (value ± interval, and `best` / `≈ best`) and its mark: an outline for the best, a hatch for
    the configurations within noise of it; a configuration without a result says its status."""
    from matplotlib.patches import Rectangle

    i, j = at
    if not config or key not in config:
        ax.text(j, i, status, ha="center", va="center", fontsize=9, color="0.3")  # failed, pending, ...
        return
    vs = config.get("vs_best")
    mark = {"best": "best", "within noise": "≈ best"}.get(vs, "")
    light = im.norm(config[key]) > 0.6  # dark text on viridis' yellow end
    ax.text(
        j,
        i,
        rounded_pm(config, key) + (f"\n{mark}" if mark else ""),
        ha="center",
        va="center",
        fontsize=9,
        color="k" if light else "w",
        fontweight="bold" if vs == "best" else "normal",
    )
    if vs == "within noise":
        hatch = Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor=(1, 1, 1, 0.45), linewidth=0)
        ax.add_patch(hatch)
    elif vs == "best":
        ax.add_patch(Rectangle((j - 0.48, i - 0.48), 0.96, 0.96, fill=False, edgecolor="crimson", linewidth=3))


def _key(row: Dict[str, Any], keys: List[str]) -> tuple:
    return tuple(row.get(k) for k in keys)


def _values(rows: List[Dict[str, Any]], key: str) -> List[str]:
    """A swept key's values: numbers ascending, words in the order the sweep ran them."""
    return sorted(dict.fromkeys(r[key] for r in rows if r.get(key) is not None), key=_sort_key)


def _sort_key(value: str) -> tuple:
    try:
        return (0, float(value))
    except ValueError:
        return (1, 0.0)  # a stable sort keeps the words in their first-seen order


def plot_samples(rows: List[Dict[str, Any]], path: str) -> bool:
    """Sample metrics per checkpoint, two panels a row (1200 x 900 px for four), each y axis saying what it
    measures. Only the first panel, the metric that picks the best checkpoint (win rate, else task score, else
    repetition: metrics.resolve_metric), has 95% error bars over the prompts, so the others stay uncluttered."""
    runs = [r for r in rows if r.get("sample_history")]
    metrics = [m for m in SAMPLE_AXES if any(m in h for r in runs for h in r["sample_history"])]
    if not runs or not metrics:
        return False
    plt = _pyplot()
    ncols = min(2, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 4.5 * nrows), squeeze=False)
    for i, (ax, metric) in enumerate(zip(axes.flat, metrics)):
        _lines(ax, runs, "sample_history", metric, f"{metric}_se" if i == 0 else None)
        if metric == "win_rate":
            ax.axhline(0.5, color="gray", linewidth=0.8)  # the reference against itself
        better = "higher is better" if BETTER[metric] > 0 else "lower is better"
        ax.set(
            xlabel="step",
            ylabel=SAMPLE_AXES[metric],
            title=f"samples: {metric} ({better}" + (", bars: 95% over prompts)" if i == 0 else ")"),
        )
        ax.grid(alpha=0.3)
    _legend(fig, axes, len(metrics))
    return _save(fig, path)


def plot_frontier(rows: List[Dict[str, Any]], path: str) -> bool:
    """Reward against KL(policy ‖ reference) at each checkpoint, as the DPO paper's Fig. 2 (up and to the left is
    better): one line per run in step order from the start (step 0, KL 0), the run on the best frontier thicker,
    black rings on the Pareto-optimal checkpoints (frontier()) with their steps, and light 95% bars both ways."""
    front = frontier(rows)
    if front is None:
        return False
    runs = scored_runs(rows)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 1, figsize=(10, 6.5), squeeze=False)
    ax = axes[0, 0]
    for i, r in enumerate(runs):
        hist, best = scored_history(r), r["job"] == front["job"]
        x, y = [h["kl"] for h in hist], [h["reward"] for h in hist]
        marker, style = STYLES[i % len(STYLES)]
        label = (r.get("name") or f"job {r['job']}") + (" (best frontier)" if best else "")
        (line,) = ax.plot(
            x,
            y,
            marker=marker,
            linestyle=style,
            markersize=6 if best else 5,
            label=label,
            linewidth=3 if best else 1.2,
            zorder=3 if best else 2,
        )
        if all(h.get("kl_se") is not None and h.get("reward_se") is not None for h in hist):
            ax.errorbar(
                x,
                y,
                xerr=[1.96 * h["kl_se"] for h in hist],
                yerr=[1.96 * h["reward_se"] for h in hist],
                fmt="none",
                ecolor=line.get_color(),
                elinewidth=0.8,
                alpha=0.3,
                zorder=1,
            )
    points = front["points"]
    ax.scatter(
        [p["kl"] for p in points],
        [p["reward"] for p in points],
        s=200,
        facecolors="none",
        edgecolors="k",
        linewidths=1.5,
        zorder=4,
    )
    for p in points:
        ax.annotate(f"step {p['step']}", (p["kl"], p["reward"]), xytext=(8, -12), textcoords="offset points", size=8)
    judges = {r.get("samples/judge") for r in runs} - {None}  # e.g. sentiment: what the reward's scale means
    ax.set(
        xlabel="KL(policy ‖ reference), nats per answer, from the sampled answers",
        ylabel="mean reward of the policy's answers" + (f"\n(judge: {judges.pop()})" if len(judges) == 1 else ""),
        title="reward vs KL per checkpoint, from step 0 (KL 0): up and to the left is better\n"
        "black rings: Pareto-optimal checkpoints; bars: 95% over the prompts",
    )
    ax.grid(alpha=0.3)
    _legend(fig, axes, 1)
    return _save(fig, path)
