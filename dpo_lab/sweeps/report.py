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
import os
import textwrap
from typing import Any, Dict, List, Optional

from dpo_lab import files, quality
from dpo_lab.quality import frontier, rounded_pm
from dpo_lab.samples.metrics import means_by_step
from dpo_lab.errors import UserError
from dpo_lab.sweeps import plots

# Per-run numbers the report and summary.csv show, after the objective (quality.py): (result key, column title).
HEADLINE = [
    ("samples/win_rate", "win rate"),
    ("samples/reward", "reward"),
    ("samples/kl", "KL"),
    ("eval/logratios/margins", "log-ratio margin"),
    ("eval/logps/margins", "log-prob margin"),
    ("eval/rewards/accuracies", "accuracy"),
    ("eval/rewards/margins", "reward margin"),
    ("samples/task_score", "task score"),
]
ERRORS = [
    "samples/win_rate_se",
    "samples/reward_se",
    "samples/kl_se",
    "eval/logratios/margins_se",
    "eval/logps/margins_se",
    "eval/rewards/accuracies_se",
    "samples/task_score_se",
]
# summary.csv has these columns only where a run measured them (a scoring judge's reward, the answers' KL), so the
# CSV of a sweep without them keeps the columns it had.
IF_MEASURED = {
    "samples/reward",
    "samples/reward_se",
    "samples/kl",
    "samples/kl_se",
    "eval/logps/margins",
    "eval/logps/margins_se",
}
CHECKPOINTS = [("best_checkpoint_step", "best step"), ("degraded_after_step", "degraded after")]
CHECKPOINT_COLUMNS = [
    ("best_checkpoint_step", "best step"),  # a run with a best checkpoint that did not degrade: "no"
    (
        lambda r: _fmt(r.get("degraded_after_step", "")) or ("no" if "best_checkpoint_step" in r else ""),
        "degraded after",
    ),
]
# What each run was and cost, for a fair comparison across methods: a reference-free method scores no reference batches.
COST_COLUMNS = [
    ("method", "method"),
    (lambda r: r.get("method_settings") or "", "settings"),
    ("steps", "steps"),
    ("train_seconds", "seconds"),
    ("train_tokens", "train tokens"),
    ("reference_batches", "reference batches"),
    ("tokens_per_second", "tokens/s"),
    ("mfu", "MFU"),
    ("padding_fraction", "padding"),
]
RUN_STATS = [
    "method",
    "method_settings",
    "train_tokens",
    "steps",
    "train_seconds",
    "seconds_to_first_step",
    "reference_logps",
    "reference_batches",
    "tokens_per_second",
    "mfu",
    "padding_fraction",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "memory_estimate_gb",
    "peak_rss_mb",
    "peak_cuda_mb",
    "wandb_run_id",
    "wandb_dir",
]
REPORT_LOCK = ".report.lock"  # in the sweep dir: held while one process writes the sweep's report
LOCK_TIMEOUT_S = 600  # a report takes seconds; waiting longer means a writer hangs (filelock.Timeout)
CONSOLE_WIDTH = 100  # the table a sweep prints fits a terminal this wide (report.md has every column)
# Short titles of the HEADLINE metrics for the console.
SHORT = {
    "samples/win_rate": "win rate",
    "samples/reward": "reward",
    "samples/kl": "KL",
    "eval/logratios/margins": "log-ratio",
    "eval/logps/margins": "log-prob margin",
    "eval/rewards/accuracies": "accuracy",
    "eval/rewards/margins": "reward margin",
    "samples/task_score": "task score",
}


def check_sweep_dir(sweep_dir: str) -> None:
    """UserError unless `sweep_dir` is a sweep's directory (sweep.json, or job dirs in it): a mistyped path must not
    become an empty report."""
    if not os.path.isdir(sweep_dir):
        what = "is a file, not a directory" if os.path.lexists(sweep_dir) else "does not exist"
        raise UserError(
            f"{sweep_dir} {what}, so there is no sweep to report on. Give the sweep's directory (the "
            "hydra.sweep.dir it ran in, e.g. multirun/<name>/<time>), as the sweep's last lines print it."
        )
    if os.path.isfile(os.path.join(sweep_dir, "sweep.json")) or glob.glob(os.path.join(sweep_dir, "*", files.JOB)):
        return
    parent = (
        f" It is one job's directory; its sweep is {os.path.dirname(os.path.abspath(sweep_dir))}."
        if os.path.isfile(os.path.join(sweep_dir, files.JOB))
        else ""
    )
    raise UserError(
        f"{sweep_dir} is not a sweep directory: it has no sweep.json and no job directories (<n>/job.json).{parent} "
        "Give the directory a sweep ran in (hydra.sweep.dir, e.g. multirun/<name>/<time>)."
    )


def collect(sweep_dir: str) -> List[Dict[str, Any]]:
    """One row per job dir (numbered subdirs of the sweep), in job order, with its swept values. A job whose job.json
    or result.json is there but cannot be read is `damaged`, its `error` saying which file and why."""
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
        damage = [
            f"{name} cannot be read ({why})"
            for name in (files.JOB, files.RESULT)
            if (why := files.unreadable(os.path.join(job_dir, name)))
        ]
        if damage:
            row.update(status="damaged", error="damaged: " + "; ".join(damage))
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
    cols = [
        ("job", "job"),
        ("name", "run"),
        ("status", "status"),
        *_metric_columns(rows, objective),
        *CHECKPOINT_COLUMNS,
        *COST_COLUMNS,
    ]
    return table(ranked_jobs(rows, objective), cols)


def by_config(rows: List[Dict[str, Any]], swept: List[str], objective: str) -> List[Dict[str, Any]]:
    """Seed replicates folded into one row per configuration (the swept keys other than `seed`), best first."""
    keys = [quality.OBJECTIVES[objective].key] + [k for k, _ in HEADLINE]
    return quality.aggregate(rows, [k for k in swept if k != "seed"], objective, keys)


def config_table(configs: List[Dict[str, Any]], swept: List[str], objective: str) -> str:
    cols = [(k, k) for k in swept if k != "seed"] + [
        ("n", "seeds"),
        *_metric_columns(configs, objective),
        ("jobs", "jobs"),
    ]
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
    rest = [
        ("best_checkpoint_step", "best step"),
        (CHECKPOINT_COLUMNS[1][0], "degraded"),
        (lambda r: _duration(r.get("train_seconds")), "time"),
    ]
    lines = [
        f"Ranked by {objective} (± 95% intervals; ≈ best: within noise of the best)",
        _narrow_table(ranked_jobs(rows, objective), first, head + rest),
    ]
    if "seed" in swept and ranked:
        first = [_keys_column([k for k in swept if k != "seed"]), ("n", "seeds"), *_objective_columns(objective)]
        lines += ["", "Configurations (seeds aggregated):", _narrow_table(ranked, first, head + [("jobs", "jobs")])]
    best, front = verdict(ranked, objective), frontier(rows)
    lines += [textwrap.fill(best, CONSOLE_WIDTH)] if best else []
    lines += [textwrap.fill(frontier_verdict(front), CONSOLE_WIDTH)] if front else []
    return "\n".join(lines + [f"Could not read: {line}" for line in damaged(rows)])


def damaged(rows: List[Dict[str, Any]]) -> List[str]:
    """`job 3: result.json cannot be read (empty)` for each damaged job: its results are in no table."""
    return [f"job {r['job']}: {r['error'].removeprefix('damaged: ')}" for r in rows if r.get("status") == "damaged"]


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
    return [(lambda r: rounded_pm(r, key), SHORT.get(key, objective)), (vs_best, "vs best")]


def _headline_column(rows: List[Dict[str, Any]], objective: str) -> List[tuple]:
    """The first HEADLINE metric the runs have besides the objective, never the reward margin (it grows with β)."""
    skip = {quality.OBJECTIVES[objective].key, "eval/rewards/margins"}
    key = next((k for k, _ in HEADLINE if k not in skip and any(k in r for r in rows)), None)
    return [(lambda r: rounded_pm(r, key), SHORT[key])] if key else []


def _keys_column(keys: List[str]) -> tuple:
    """One column of a row's swept values, `sigmoid,0.5` under `loss,beta` (the run name where nothing is swept)."""
    if not keys:
        return (lambda r: _clip(r.get("name")), "run")
    return (lambda r: _clip(",".join(str(r.get(k, "")) for k in keys)), _clip(",".join(keys)))


def _clip(value: Any, width: int = 28) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


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


def frontier_verdict(front: Dict[str, Any], strong: str = "") -> str:
    """`Best reward-KL frontier: X (job 2): 3 of the 4 Pareto-optimal checkpoints.`; `strong` wraps the name."""
    n = len(front["points"])
    return (
        f"Best reward-KL frontier: {strong}{front['name'] or front['job']}{strong} (job {front['job']}): "
        f"{front['owned']} of the {n} Pareto-optimal checkpoint{'s' if n > 1 else ''}."
    )


def frontier_table(front: Dict[str, Any]) -> str:
    """The frontier's checkpoints, low KL first, each value ± its 95% interval over the prompts."""
    pm = lambda k: lambda p: rounded_pm({k: p[k], f"{k}_ci": _times(1.96, p[f"{k}_se"])}, k)  # noqa: E731
    return table(
        front["points"],
        [("job", "job"), ("name", "run"), ("step", "step"), (pm("kl"), "KL (nats)"), (pm("reward"), "reward")],
    )


def _times(a: float, b: Any) -> Optional[float]:
    return a * b if isinstance(b, (int, float)) else None


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

    check_sweep_dir(sweep_dir)  # before the lock file, which would make a mistyped path's directories
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
    figures = {
        "samples.png": plots.plot_samples(rows, os.path.join(out_dir, "samples.png")),
        "eval.png": plots.plot_eval(rows, os.path.join(out_dir, "eval.png")),
        "heatmap.png": plots.plot_heatmap(rows, os.path.join(out_dir, "heatmap.png"), objective, swept),
        "frontier.png": plots.plot_frontier(rows, os.path.join(out_dir, "frontier.png")),
    }
    done = sum(r.get("status") == "completed" for r in rows)
    obj = quality.OBJECTIVES[objective]
    lines = [
        f"# Sweep {sweep.get('name') or os.path.basename(sweep_dir)}",
        "",
        f"`{sweep_dir}`: {done}/{len(rows)} jobs completed.",
        "",
        *([f"W&B view of the sweep: {sweep['dashboard_url']}", ""] if sweep.get("dashboard_url") else []),
        f"Ranked by **{objective}**: {obj.meaning} (`{obj.key}`). `± x`: the 95% interval (over seeds where a "
        "configuration has several, else over the run's prompts or eval batches); *within noise*: the "
        "difference to the best lies inside the 95% interval of the difference.",
        "",
    ]
    ranked = ranking(rows, swept, objective)
    configs = ranked if "seed" in swept else []
    if configs:
        lines += ["## Configurations (seeds aggregated)", "", config_table(configs, swept, objective), ""]
    best = verdict(ranked, objective, strong="**")
    lines += [best, ""] if best else []
    lines += ["## Leaderboard", "", leaderboard(rows, objective), ""]
    checkpoints = checkpoint_table(rows)
    if checkpoints:
        lines += [
            "## Checkpoints",
            "",
            "Each sampled checkpoint's metric (± 95% over the prompts); *best step*: the "
            "best checkpoint by it; *degraded after*: the last checkpoint fell below the best by more than "
            "samples.degrade_margin and by more than the noise.",
            "",
            checkpoints,
            "",
        ]
    front = frontier(rows)
    if front:
        lines += [
            "## Reward vs KL",
            "",
            "Each checkpoint's mean reward of the policy's answers against their KL from "
            "the reference (frontier.png), as in the DPO paper's Fig. 2: the better run gets more reward for the "
            "same KL. *Pareto-optimal*: no other checkpoint (step 0, the start, left out) has at least its "
            "reward for at most its KL, by the point estimates; `± x`: the 95% interval over the prompts.",
            "",
            frontier_verdict(front, strong="**"),
            "",
            frontier_table(front),
            "",
        ]
    failures = [r for r in rows if r.get("status") == "failed"]
    if failures:
        lines += (
            ["## Failures", ""]
            + [f"- job {r['job']} `{r.get('name')}`: {str(r.get('error', '')).splitlines()[0]}" for r in failures]
            + [""]
        )
    if damaged(rows):
        lines += ["## Damaged job files", "", *(f"- {line}" for line in damaged(rows)), ""]
    lines += [f"![{name}]({name})" for name, made in figures.items() if made]
    with files.atomic_write(os.path.join(out_dir, "report.md"), encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    if configs:
        _write_configs_csv(configs, swept, os.path.join(out_dir, "summary_by_config.csv"))
    return out_dir


def _write_rows_csv(rows: List[Dict[str, Any]], swept: List[str], path: str) -> None:
    samples = sorted({k for r in rows for k in r if k.startswith("samples/")} - {k for k, _ in HEADLINE} - set(ERRORS))
    shown = [k for k in [*(k for k, _ in HEADLINE), *ERRORS] if k not in IF_MEASURED or any(k in r for r in rows)]
    keys = [
        "job",
        "name",
        *swept,
        "status",
        *shown,
        "best_eval/logratios/margins",
        "best_eval/rewards/margins",
        *(k for k, _ in CHECKPOINTS),
        "best_checkpoint_metric",
        *samples,
        *RUN_STATS,
        "error",
    ]
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
