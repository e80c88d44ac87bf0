"""Sweep results a person reads: summary.csv, report.md and PNG plots.

report.md ranks the runs by the sweep's objective (quality.py: the judge's win rate over the reference, or the
log-ratio margin; never the reward margin, which grows with β), with 95% intervals and which runs are within noise
of the best; aggregates seeds into one row per configuration; and shows each run's checkpoints (win rate per
checkpoint, best step, degradation) and, where a judge scores the answers (a reward) and the sampler measures their KL
from the reference, the reward-KL frontier of the DPO paper's Fig. 2 (frontier). A sweep prints a shorter table
(console_summary: 100 columns) and the same verdict. Built only from what job directories hold (result.json,
job.json, samples.jsonl), so it works for running, partial and failed sweeps, and without wandb:

    python -m dpo_lab report multirun/loss_beta_grid/2026-11-24_10-00-00 [--out results/my_sweep]
"""

import csv
import glob
import itertools
import math
import os
import textwrap
from typing import Any, Dict, List, Optional

from dpo_lab import files, quality
from dpo_lab.metrics import BETTER, means_by_step

# Per-run numbers the report and summary.csv show, after the objective (quality.py): (result key, column title).
HEADLINE = [("samples/win_rate", "win rate"), ("samples/reward", "reward"), ("samples/kl", "KL"),
            ("eval/logratios/margins", "log-ratio margin"), ("eval/logps/margins", "log-prob margin"),
            ("eval/rewards/accuracies", "accuracy"),
            ("eval/rewards/margins", "reward margin"), ("samples/task_score", "task score")]  # fmt: skip
ERRORS = ["samples/win_rate_se", "samples/reward_se", "samples/kl_se", "eval/logratios/margins_se", "eval/logps/margins_se",
          "eval/rewards/accuracies_se", "samples/task_score_se"]  # fmt: skip
# summary.csv has these columns only where a run measured them (a scoring judge's reward, the answers' KL), so the
# CSV of a sweep without them keeps the columns it had.
IF_MEASURED = {"samples/reward", "samples/reward_se", "samples/kl", "samples/kl_se", "eval/logps/margins",
               "eval/logps/margins_se"}  # fmt: skip
CHECKPOINTS = [("best_checkpoint_step", "best step"), ("degraded_after_step", "degraded after")]
CHECKPOINT_COLUMNS = [("best_checkpoint_step", "best step"),  # a run with a best checkpoint that did not degrade: "no"
                      (lambda r: _fmt(r.get("degraded_after_step", "")) or ("no" if "best_checkpoint_step" in r else ""),
                       "degraded after")]  # fmt: skip
# What each run was and cost, for a fair comparison across methods: a reference-free method scores no reference batches.
COST_COLUMNS = [("method", "method"), (lambda r: r.get("method_settings") or "", "settings"), ("steps", "steps"), ("train_seconds", "seconds"),
                ("train_tokens", "train tokens"), ("reference_batches", "reference batches")]  # fmt: skip
RUN_STATS = ["method", "method_settings", "train_tokens", "steps", "train_seconds", "seconds_to_first_step", "reference_logps", "reference_batches", "tokens_per_second", "peak_rss_mb", "peak_cuda_mb", "wandb_run_id", "wandb_dir"]
REPORT_LOCK = ".report.lock"  # in the sweep dir: held while one process writes the sweep's report
LOCK_TIMEOUT_S = 600  # a report takes seconds; waiting longer means a writer hangs (filelock.Timeout)
CONSOLE_WIDTH = 100  # the table a sweep prints fits a terminal this wide (report.md has every column)
# Short titles of the HEADLINE metrics for the console.
SHORT = {"samples/win_rate": "win rate", "samples/reward": "reward", "samples/kl": "KL",
         "eval/logratios/margins": "log-ratio", "eval/logps/margins": "log-prob margin", "eval/rewards/accuracies": "accuracy",
         "eval/rewards/margins": "reward margin", "samples/task_score": "task score"}  # fmt: skip
DPI = 100  # a figure's inches x 100: its PNG's pixels
# Checkpoint sample metrics, in metrics.resolve_metric's order, and what their y axis measures. A judge's reward and
# the answers' KL are frontier.png's axes (plot_frontier), so samples.png stays at four panels.
SAMPLE_AXES = {"win_rate": "win rate over the reference's answers\n(judge; 0.5: no better than the start)",
               "task_score": "task score\n(share of the required words present)",
               "repetition": "repetition\n(share of 4-grams repeating an earlier one)",
               "ref_nll": "reference model's NLL of the answers\n(nats per token)"}  # fmt: skip
EVAL_PANELS = [("eval/logratios/margins", "eval log-ratio margin (higher is better)",
                "log-ratio margin, chosen - rejected\n(nats; TRL's reward margin / beta)"),
               ("eval/rewards/accuracies", "eval preference accuracy (higher is better)",
                "share of held-out pairs ranked right\n(chosen reward > rejected; ties count wrong)")]  # fmt: skip
STYLES = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-"), ("P", "--"), ("X", ":"), ("*", "-.")]


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


def _pm(row: Dict[str, Any], key: str) -> str:
    """`0.62 ± 0.18` (value and the half-width of its 95% interval), or the value alone where there is no interval."""
    if not isinstance(row.get(key), (int, float)):
        return ""
    ci = row.get(f"{key}_ci")
    return f"{row[key]:.3g} ± {ci:.2g}" if isinstance(ci, (int, float)) else f"{row[key]:.3g}"


def table(rows: List[Dict[str, Any]], columns: List[tuple]) -> str:
    """A Markdown table (also readable in a terminal); a column is (key, title) or (callable(row), title)."""
    header = [title for _, title in columns]
    body = [[key(r) if callable(key) else _fmt(r.get(key)) for key, _ in columns] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def objective_of(rows: List[Dict[str, Any]], name: str = "auto") -> str:
    """The sweep's objective (after auto: win_rate if every completed run has a judge, else logratio_margin)."""
    return quality.resolve(name, [r for r in rows if r.get("status") == "completed"])


def _metric_columns(rows: List[Dict[str, Any]], objective: str) -> List[tuple]:
    obj = quality.OBJECTIVES[objective]
    title = lambda key, t: (lambda r: _pm(r, key), t)  # noqa: E731
    cols = [title(obj.key, f"{objective} (95%)"), ("vs_best", "vs best")]
    cols += [title(k, t) for k, t in HEADLINE if k != obj.key and any(k in r for r in rows)]
    return cols


def ranked_jobs(rows: List[Dict[str, Any]], objective: str) -> List[Dict[str, Any]]:
    """Every job, best objective first (quality.aggregate by job: each with its own interval), then the jobs that
    did not complete."""
    keys = [quality.OBJECTIVES[objective].key] + [k for k, _ in HEADLINE]
    by_job = {r["job"]: r for r in rows}
    ranked = [{**by_job[a["job"]], **a} for a in quality.aggregate(rows, ["job"], objective, keys)]
    return ranked + [r for r in rows if r.get("status") != "completed"]


def leaderboard(rows: List[Dict[str, Any]], objective: str = "auto") -> str:
    """report.md's leaderboard: every job with every headline metric (the console prints console_summary)."""
    objective = objective_of(rows, objective)
    cols = [("job", "job"), ("name", "run"), ("status", "status"), *_metric_columns(rows, objective), *CHECKPOINT_COLUMNS,
            *COST_COLUMNS]  # fmt: skip
    return table(ranked_jobs(rows, objective), cols)


def by_config(rows: List[Dict[str, Any]], swept: List[str], objective: str) -> List[Dict[str, Any]]:
    """Seed replicates folded into one row per configuration (the swept keys other than `seed`), best first."""
    keys = [quality.OBJECTIVES[objective].key] + [k for k, _ in HEADLINE]
    return quality.aggregate(rows, [k for k in swept if k != "seed"], objective, keys)


def config_table(configs: List[Dict[str, Any]], swept: List[str], objective: str) -> str:
    cols = [(k, k) for k in swept if k != "seed"] + [("n", "seeds"), *_metric_columns(configs, objective), ("jobs", "jobs")]
    return table(configs, cols)


def ranking(rows: List[Dict[str, Any]], swept: List[str], objective: str) -> List[Dict[str, Any]]:
    """What the verdict ranks: configurations (by_config) where seeds were swept, else single jobs; best first."""
    if "seed" in swept:
        return by_config(rows, swept, objective)
    return quality.aggregate(rows, ["job"], objective, [quality.OBJECTIVES[objective].key])


def verdict(ranked: List[Dict[str, Any]], objective: str, strong: str = "") -> str:
    """`Best: X (win_rate 0.72 ± 0.12); 3 other(s) within noise of it.`, and whether even the best beats the starting
    model; empty when nothing ranked. `strong` wraps the name (`**`: bold in report.md)."""
    obj = quality.OBJECTIVES[objective]
    if not ranked or obj.key not in ranked[0]:
        return ""
    best, tied = ranked[0], sum(c.get("vs_best") == "within noise" for c in ranked)
    if tied:
        others = f"; {tied} other(s) within noise of it."
    elif len(ranked) > 1:
        others = "; every other run is worse beyond noise."
    else:  # the others failed or are still running
        others = "; no other run has a result."
    name = best.get("name") or best.get("jobs")
    return f"{strong}Best: {name}{strong} ({objective} {_pm(best, obj.key)}){others}{_vs_baseline(best, obj)}"


def sweep_summary(sweep_dir: str, rows: List[Dict[str, Any]]) -> str:
    """console_summary of a sweep's rows, with the swept keys and objective its sweep.json recorded."""
    sweep = files.read_json(os.path.join(sweep_dir, "sweep.json")) or {}
    return console_summary(rows, sweep.get("swept_keys", []), sweep.get("objective", "auto"))


def console_summary(rows: List[Dict[str, Any]], swept: List[str], objective: str = "auto") -> str:
    """What a sweep prints when it ends, within CONSOLE_WIDTH columns: a short leaderboard, the configurations
    where seeds were swept, and the verdict. report.md and summary.csv keep every column."""
    objective = objective_of(rows, objective)
    ranked, head = ranking(rows, swept, objective), _headline_column(rows, objective)
    status = [(_status, "status")] if any(r.get("status") != "completed" for r in rows) else []  # all ok: say nothing
    first = [("job", "job"), _keys_column(swept), *status, *_objective_columns(objective)]
    rest = [("best_checkpoint_step", "best step"), (CHECKPOINT_COLUMNS[1][0], "degraded"),
            (lambda r: _duration(r.get("train_seconds")), "time")]  # fmt: skip
    lines = [f"Ranked by {objective} (± 95% intervals; ≈ best: within noise of the best)",
             _narrow_table(ranked_jobs(rows, objective), first, head + rest)]
    if "seed" in swept and ranked:
        first = [_keys_column([k for k in swept if k != "seed"]), ("n", "seeds"), *_objective_columns(objective)]
        lines += ["", "Configurations (seeds aggregated):", _narrow_table(ranked, first, head + [("jobs", "jobs")])]
    best, front = verdict(ranked, objective), frontier(rows)
    lines += [textwrap.fill(best, CONSOLE_WIDTH)] if best else []
    return "\n".join(lines + ([textwrap.fill(frontier_verdict(front), CONSOLE_WIDTH)] if front else []))


def _narrow_table(rows: List[Dict[str, Any]], columns: List[tuple], optional: List[tuple]) -> str:
    """table() of `columns` and as many of the `optional` ones, from the left, as fit in CONSOLE_WIDTH."""
    text = table(rows, columns + optional)
    while optional and max(map(len, text.splitlines())) > CONSOLE_WIDTH:
        optional = optional[:-1]
        text = table(rows, columns + optional)
    return text


def _status(row: Dict[str, Any]) -> str:
    return "ok" if row.get("status") == "completed" else row.get("status", "")


def _objective_columns(objective: str) -> List[tuple]:
    """The objective, rounded to its interval, and whether it is within noise of the best."""
    key = quality.OBJECTIVES[objective].key
    vs_best = lambda r: "≈ best" if r.get("vs_best") == "within noise" else r.get("vs_best", "")  # noqa: E731
    return [(lambda r: _rounded_pm(r, key), SHORT.get(key, objective)), (vs_best, "vs best")]


def _headline_column(rows: List[Dict[str, Any]], objective: str) -> List[tuple]:
    """The first HEADLINE metric the runs have besides the objective, never the reward margin (it grows with β)."""
    skip = {quality.OBJECTIVES[objective].key, "eval/rewards/margins"}
    key = next((k for k, _ in HEADLINE if k not in skip and any(k in r for r in rows)), None)
    return [(lambda r: _rounded_pm(r, key), SHORT[key])] if key else []


def _keys_column(keys: List[str]) -> tuple:
    """One column of a row's swept values, `sigmoid,0.5` under `loss,beta` (the run name where nothing is swept)."""
    if not keys:
        return (lambda r: _clip(r.get("name")), "run")
    return (lambda r: _clip(",".join(str(r.get(k, "")) for k in keys)), _clip(",".join(keys)))


def _clip(value: Any, width: int = 28) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _rounded_pm(row: Dict[str, Any], key: str) -> str:
    """`0.72 ± 0.12`: the value rounded to its interval's second significant digit (3 digits without one)."""
    value, ci = row.get(key), row.get(f"{key}_ci")
    if not isinstance(value, (int, float)):
        return ""
    if not isinstance(ci, (int, float)) or not ci > 0:
        return f"{value:.3g}" + (" ± 0" if ci == 0 else "")
    places = min(max(1 - math.floor(math.log10(ci)), 0), 6)
    return f"{value:.{places}f} ± {ci:.{places}f}"


def _duration(seconds: Any) -> str:
    """`27s`, `4m05s`, `2h03m`."""
    if not isinstance(seconds, (int, float)):
        return ""
    s = round(seconds)
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def checkpoint_table(rows: List[Dict[str, Any]]) -> str:
    """Per run, its best-checkpoint metric (the win rate where a judge is on) at every sampled checkpoint, with the
    95% interval over prompts, then the best step and where it degraded."""
    runs = [r for r in rows if r.get("sample_history") and r.get("best_checkpoint_metric")]
    if not runs:
        return ""
    steps = sorted({h["step"] for r in runs for h in r["sample_history"]})
    cols = [("job", "job"), ("name", "run"), ("best_checkpoint_metric", "metric")]
    for step in steps:
        cols.append((lambda r, s=step: _checkpoint_cell(r, s), f"step {step}"))
    return table(runs, cols + CHECKPOINT_COLUMNS)


def _checkpoint_cell(row: Dict[str, Any], step: int) -> str:
    name = row["best_checkpoint_metric"].split("/", 1)[1]
    hist = {h["step"]: h for h in row["sample_history"]}.get(step)
    if not hist or name not in hist:
        return ""
    se = hist.get(f"{name}_se")
    return f"{hist[name]:.2f} ± {1.96 * se:.2f}" if se is not None else f"{hist[name]:.2f}"


def _scored_runs(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The completed runs whose checkpoints have a reward and a KL (a scoring judge's runs, issue 19)."""
    return [r for r in rows if r.get("status") == "completed" and _scored(r)]


def _scored(row: Dict[str, Any]) -> List[Dict[str, float]]:
    return [h for h in row.get("sample_history") or [] if "reward" in h and "kl" in h]


def frontier(rows: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The reward-KL frontier (DPO paper, Fig. 2) of the completed runs' checkpoints but step 0 (the start, KL 0,
    every run's): the Pareto-optimal ones (no other checkpoint has reward >= and KL <=, one of them strictly), low KL
    first, each {job, name, step, kl, kl_se, reward, reward_se}; and the run on the best frontier, the one owning the
    most of them (ties: the higher best reward). By point estimates: the 95% intervals say how far to trust them.
    None where no run has a reward and a KL."""
    keep = ("step", "kl", "kl_se", "reward", "reward_se")
    points = [{"job": r["job"], "name": r.get("name"), **{k: h.get(k) for k in keep}}
              for r in _scored_runs(rows) for h in _scored(r) if h["step"] != 0]  # fmt: skip
    pareto = sorted((p for p in points if not any(_beats(q, p) for q in points)), key=lambda p: (p["kl"], -p["reward"]))
    if not pareto:
        return None
    owned: Dict[str, List[Dict[str, Any]]] = {}
    for p in pareto:
        owned.setdefault(p["job"], []).append(p)
    best = max(owned.values(), key=lambda ps: (len(ps), max(p["reward"] for p in ps)))
    return {"job": best[0]["job"], "name": best[0]["name"], "owned": len(best), "points": pareto}


def _beats(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    """Checkpoint a has reward >= b's and KL <= b's, one of them strictly."""
    return a["reward"] >= b["reward"] and a["kl"] <= b["kl"] and (a["reward"], a["kl"]) != (b["reward"], b["kl"])


def frontier_verdict(front: Dict[str, Any], strong: str = "") -> str:
    """`Best reward-KL frontier: X (job 2): 3 of the 4 Pareto-optimal checkpoints.`; `strong` wraps the name."""
    n = len(front["points"])
    return (f"Best reward-KL frontier: {strong}{front['name'] or front['job']}{strong} (job {front['job']}): "
            f"{front['owned']} of the {n} Pareto-optimal checkpoint{'s' if n > 1 else ''}.")  # fmt: skip


def frontier_table(front: Dict[str, Any]) -> str:
    """The frontier's checkpoints, low KL first, each value ± its 95% interval over the prompts."""
    pm = lambda k: lambda p: _rounded_pm({k: p[k], f"{k}_ci": _times(1.96, p[f"{k}_se"])}, k)  # noqa: E731
    return table(front["points"], [("job", "job"), ("name", "run"), ("step", "step"), (pm("kl"), "KL (nats)"),
                                   (pm("reward"), "reward")])  # fmt: skip


def _times(a: float, b: Any) -> Optional[float]:
    return a * b if isinstance(b, (int, float)) else None


def _num(value: Any) -> float:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf


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
            ax.errorbar(x, y, yerr=[1.96 * h[se_key] for h in hist], fmt="none", ecolor=line.get_color(), elinewidth=1,
                        capsize=3, alpha=0.6)  # fmt: skip


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
    ax.annotate("step 0: policy = reference, every margin is 0;\nTRL counts these ties as wrong, so 0 here\n"
                "means untrained, not worse than chance", xy=(0, 0), xytext=(0.4, 0.25), textcoords="axes fraction",
                fontsize=9, arrowprops={"arrowstyle": "->", "color": "0.3"},
                bbox={"boxstyle": "round", "fc": "w", "ec": "0.7"})  # fmt: skip


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
    ax.set_title(f"{objective} per configuration{seeds}, ± 95% interval\nhatched: within noise of the best (outlined)",
                 fontsize=10)  # fmt: skip
    fig.colorbar(im, label=f"{objective} ({key})")
    fig.tight_layout()
    return _save(fig, path)


def _heat_image(ax, values: List[List[Optional[float]]], configs, key: str):
    """The coloured cells (grey where a configuration has no result). The colour scale spans at least the best's
    95% interval, so differences inside the noise take a small part of it."""
    import numpy as np
    from matplotlib.colors import Normalize

    grid = np.array([[_num(v) for v in row] for row in values], dtype=float)
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
    ax.text(j, i, _rounded_pm(config, key) + (f"\n{mark}" if mark else ""), ha="center", va="center", fontsize=9,
            color="k" if light else "w", fontweight="bold" if vs == "best" else "normal")  # fmt: skip
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
        ax.set(xlabel="step", ylabel=SAMPLE_AXES[metric], title=f"samples: {metric} ({better}"
               + (", bars: 95% over prompts)" if i == 0 else ")"))  # fmt: skip
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
    runs = _scored_runs(rows)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 1, figsize=(10, 6.5), squeeze=False)
    ax = axes[0, 0]
    for i, r in enumerate(runs):
        hist, best = _scored(r), r["job"] == front["job"]
        x, y = [h["kl"] for h in hist], [h["reward"] for h in hist]
        marker, style = STYLES[i % len(STYLES)]
        label = (r.get("name") or f"job {r['job']}") + (" (best frontier)" if best else "")
        (line,) = ax.plot(x, y, marker=marker, linestyle=style, markersize=6 if best else 5, label=label,
                          linewidth=3 if best else 1.2, zorder=3 if best else 2)  # fmt: skip
        if all(h.get("kl_se") is not None and h.get("reward_se") is not None for h in hist):
            ax.errorbar(x, y, xerr=[1.96 * h["kl_se"] for h in hist], yerr=[1.96 * h["reward_se"] for h in hist],
                        fmt="none", ecolor=line.get_color(), elinewidth=0.8, alpha=0.3, zorder=1)  # fmt: skip
    points = front["points"]
    ax.scatter([p["kl"] for p in points], [p["reward"] for p in points], s=200, facecolors="none", edgecolors="k",
               linewidths=1.5, zorder=4)  # fmt: skip
    for p in points:
        ax.annotate(f"step {p['step']}", (p["kl"], p["reward"]), xytext=(8, -12), textcoords="offset points", size=8)
    judges = {r.get("samples/judge") for r in runs} - {None}  # e.g. sentiment: what the reward's scale means
    ax.set(xlabel="KL(policy ‖ reference), nats per answer, from the sampled answers",
           ylabel="mean reward of the policy's answers" + (f"\n(judge: {judges.pop()})" if len(judges) == 1 else ""),
           title="reward vs KL per checkpoint, from step 0 (KL 0): up and to the left is better\n"
                 "black rings: Pareto-optimal checkpoints; bars: 95% over the prompts")  # fmt: skip
    ax.grid(alpha=0.3)
    _legend(fig, axes, 1)
    return _save(fig, path)


def _vs_baseline(best: Dict[str, Any], obj: quality.Objective) -> str:
    """Whether even the best run is distinguishable from the starting model, where the objective knows its score."""
    ci = best.get(f"{obj.key}_ci")
    if obj.baseline is None or ci is None or best[obj.key] - ci > obj.baseline:
        return ""
    return f" Its interval includes {obj.baseline}, the starting model's score: no run is shown to improve on it."


def write_report(sweep_dir: str, out_dir: Optional[str] = None, timeout: float = LOCK_TIMEOUT_S) -> str:
    """Write summary.csv, report.md and plots for `sweep_dir` into `out_dir` (also a summary into the sweep dir).

    Jobs of a joblib sweep end, and write the report, in several processes at once: one writer at a time per sweep
    dir (a file lock), and each reads the job dirs only once it holds the lock, so a later write never holds an older
    snapshot than an earlier one, and the sweep's last write, made after every job ended, is the complete one."""
    from filelock import FileLock

    with FileLock(os.path.join(sweep_dir, REPORT_LOCK), timeout=timeout):
        return _write_report(sweep_dir, out_dir)


def _write_report(sweep_dir: str, out_dir: Optional[str]) -> str:
    sweep = files.read_json(os.path.join(sweep_dir, "sweep.json")) or {}
    out_dir = out_dir or sweep.get("results_dir") or os.path.join(sweep_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    rows = collect(sweep_dir)
    swept = sweep.get("swept_keys", [])
    objective = objective_of(rows, sweep.get("objective", "auto"))
    for target in (out_dir, sweep_dir):
        _write_rows_csv(rows, swept, os.path.join(target, "summary.csv"))
    plots = {"samples.png": plot_samples(rows, os.path.join(out_dir, "samples.png")),
             "eval.png": plot_eval(rows, os.path.join(out_dir, "eval.png")),
             "heatmap.png": plot_heatmap(rows, os.path.join(out_dir, "heatmap.png"), objective, swept),
             "frontier.png": plot_frontier(rows, os.path.join(out_dir, "frontier.png"))}  # fmt: skip
    done = sum(r.get("status") == "completed" for r in rows)
    obj = quality.OBJECTIVES[objective]
    lines = [f"# Sweep {sweep.get('name') or os.path.basename(sweep_dir)}", "",
             f"`{sweep_dir}`: {done}/{len(rows)} jobs completed.", "",
             f"Ranked by **{objective}**: {obj.meaning} (`{obj.key}`). `± x`: the 95% interval (over seeds where a "
             "configuration has several, else over the run's prompts or eval batches); *within noise*: the "
             "difference to the best lies inside the 95% interval of the difference.", ""]  # fmt: skip
    ranked = ranking(rows, swept, objective)
    configs = ranked if "seed" in swept else []
    if configs:
        lines += ["## Configurations (seeds aggregated)", "", config_table(configs, swept, objective), ""]
    best = verdict(ranked, objective, strong="**")
    lines += [best, ""] if best else []
    lines += ["## Leaderboard", "", leaderboard(rows, objective), ""]
    checkpoints = checkpoint_table(rows)
    if checkpoints:
        lines += ["## Checkpoints", "", "Each sampled checkpoint's metric (± 95% over the prompts); *best step*: the "
                  "best checkpoint by it; *degraded after*: the last checkpoint fell below the best by more than "
                  "samples.degrade_margin and by more than the noise.", "", checkpoints, ""]  # fmt: skip
    front = frontier(rows)
    if front:
        lines += ["## Reward vs KL", "", "Each checkpoint's mean reward of the policy's answers against their KL from "
                  "the reference (frontier.png), as in the DPO paper's Fig. 2: the better run gets more reward for the "
                  "same KL. *Pareto-optimal*: no other checkpoint (step 0, the start, left out) has at least its "
                  "reward for at most its KL, by the point estimates; `± x`: the 95% interval over the prompts.", "",
                  frontier_verdict(front, strong="**"), "", frontier_table(front), ""]  # fmt: skip
    failures = [r for r in rows if r.get("status") == "failed"]
    if failures:
        lines += ["## Failures", ""] + [f"- job {r['job']} `{r.get('name')}`: {str(r.get('error', '')).splitlines()[0]}" for r in failures] + [""]
    lines += [f"![{name}]({name})" for name, made in plots.items() if made]
    with files.atomic_write(os.path.join(out_dir, "report.md"), encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    if configs:
        _write_configs_csv(configs, swept, os.path.join(out_dir, "summary_by_config.csv"))
    return out_dir


def _write_rows_csv(rows: List[Dict[str, Any]], swept: List[str], path: str) -> None:
    samples = sorted({k for r in rows for k in r if k.startswith("samples/")} - {k for k, _ in HEADLINE} - set(ERRORS))
    shown = [k for k in [*(k for k, _ in HEADLINE), *ERRORS] if k not in IF_MEASURED or any(k in r for r in rows)]
    keys = ["job", "name", *swept, "status", *shown, "best_eval/logratios/margins",
            "best_eval/rewards/margins", *(k for k, _ in CHECKPOINTS), "best_checkpoint_metric", *samples, *RUN_STATS,
            "error"]  # fmt: skip
    keys = list(dict.fromkeys(keys))  # a swept key may also be a run stat (method)
    with files.atomic_write(path, newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _write_configs_csv(configs: List[Dict[str, Any]], swept: List[str], path: str) -> None:
    metric_keys = list(dict.fromkeys(k for c in configs for k in c if k.endswith("_ci")))
    keys = [k for k in swept if k != "seed"] + ["n", "seeds", "jobs", "vs_best"]
    keys += [x for k in metric_keys for x in (k[: -len("_ci")], k)]
    with files.atomic_write(path, newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(configs)
