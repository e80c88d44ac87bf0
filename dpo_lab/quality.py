"""What a sweep ranks runs by, and how sure it can be: the objectives, their standard errors, seed aggregation.

The eval reward margin is β × (the policy-vs-reference log-ratio gap), so ranking by it puts every large-β run first
by construction. The objectives below do not grow with β. `objective=auto` (the default) is the judge's win rate of
the policy's answers over the reference's where a judge is on (samples.judge), else the log-ratio margin.

Pure functions on result dicts (no model, no files), shared by run.py (a sweeper's return value), preflight and
the report.
"""

import math
import statistics
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence


@dataclass(frozen=True)
class Objective:
    key: str  # a result.json key
    se_key: Optional[str]  # its standard error's key, where the run measures one
    meaning: str
    baseline: Optional[float] = None  # what the starting model scores (the reference against itself), if known


OBJECTIVES = {
    "win_rate": Objective(
        "samples/win_rate",
        "samples/win_rate_se",
        "the judge's win rate of the policy's answers over the reference's at the last checkpoint",
        0.5,
    ),
    "task_score": Objective("samples/task_score", "samples/task_score_se", "the toy task score of the last answers"),
    "reward": Objective(
        "samples/reward", "samples/reward_se", "the judge's mean reward of the last checkpoint's answers"
    ),
    "logratio_margin": Objective(
        "eval/logratios/margins",
        "eval/logratios/margins_se",
        "the last eval's log-ratio margin: the reward margin / beta",
    ),
    "accuracy": Objective(
        "eval/rewards/accuracies", "eval/rewards/accuracies_se", "the last eval's held-out preference accuracy"
    ),
    "reward_margin": Objective(
        "eval/rewards/margins", None, "the last eval's reward margin: grows with beta, compare runs of one beta only"
    ),
}
ACROSS_METHODS = ("win_rate", "reward", "task_score")  # measured on answers: comparable across methods
AUTO_ORDER = ("win_rate", "logratio_margin")  # what `auto` picks: the first one the runs have


def choices() -> str:
    """One line per objective, for an error message or --help."""
    return "\n".join(f"  {name}: {o.meaning} ({o.key})" for name, o in OBJECTIVES.items())


def resolve(name: str, results: Sequence[Dict[str, Any]]) -> str:
    """The objective's name: `name` itself, or for auto the first of AUTO_ORDER that every result has."""
    if name != "auto":
        return name
    for candidate in AUTO_ORDER:
        if results and all(OBJECTIVES[candidate].key in r for r in results):
            return candidate
    return AUTO_ORDER[-1]


def value(result: Dict[str, Any], name: str) -> float:
    """The objective's value in a completed result (NaN when it failed or lacks the key): what a sweeper maximises."""
    key = OBJECTIVES[resolve(name, [result])].key
    v = result.get(key) if result.get("status", "completed") == "completed" else None
    return float(v) if isinstance(v, (int, float)) else math.nan


def mean_se(values: Sequence[float]) -> Dict[str, float]:
    """Mean and standard error of the mean (SE 0 for a single value: nothing to estimate it from). A NaN or infinite
    value gives a non-finite mean and a NaN SE, never an error: a diverging run's metrics must reach the divergence
    guard, which records them (statistics' exact arithmetic raises on them)."""
    values = [float(v) for v in values]
    if not all(math.isfinite(v) for v in values):
        return {"mean": math.fsum(values) / len(values) if len(values) else math.nan, "se": math.nan}
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "se": se}


# Two-sided 95% quantiles of Student's t by degrees of freedom; beyond 30 the normal's 1.96 is within 2%.
_T95 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def t95(dof: Optional[int]) -> float:
    """The 95% interval's multiplier of a standard error: Student's t for `dof` degrees of freedom, None: normal."""
    return 1.96 if dof is None or dof > len(_T95) else _T95[max(dof, 1) - 1]


def aggregate(
    rows: List[Dict[str, Any]], by: Sequence[str], objective: str, keys: Sequence[str]
) -> List[Dict[str, Any]]:
    """One row per distinct value of the `by` columns over the completed jobs (by the swept keys without `seed`:
    replicates; by `job`: every run alone), best `objective` first: n, and per key the mean and `<key>_ci`, the
    half-width of its 95% interval. With several values the interval is over them (t with n-1 degrees of freedom);
    a single run keeps its own standard error (over prompts or eval batches) with the normal's 1.96. `vs_best`
    says whether a row's objective is within noise of the best's (mark_noise)."""
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        if r.get("status") == "completed":
            groups.setdefault(tuple(r.get(k) for k in by), []).append(r)
    # A key no objective names has its standard error beside it, if measured (samples/kl: samples/kl_se).
    se_of = {o.key: o.se_key for o in OBJECTIVES.values()}
    out = []
    for key, runs in groups.items():
        agg = {
            **dict(zip(by, key)),
            "n": len(runs),
            "seeds": ",".join(str(r.get("seed", "")) for r in runs),
            "jobs": ",".join(r["job"] for r in runs),
            "name": runs[0].get("name") if len(runs) == 1 else ",".join(f"{k}={v}" for k, v in zip(by, key)),
        }
        for k in keys:
            vals = [r[k] for r in runs if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
            if not vals:
                continue
            if len(vals) > 1:
                m = mean_se(vals)
                agg[k], agg[f"{k}_ci"], agg[f"{k}_dof"] = m["mean"], t95(len(vals) - 1) * m["se"], len(vals) - 1
            else:
                se = runs[0].get(se_of.get(k, f"{k}_se") or "")
                agg[k], agg[f"{k}_ci"], agg[f"{k}_dof"] = (
                    vals[0],
                    1.96 * se if isinstance(se, (int, float)) else None,
                    None,
                )
        out.append(agg)
    obj_key = OBJECTIVES[objective].key
    out.sort(key=lambda a: -a[obj_key] if obj_key in a else math.inf)
    mark_noise(out, obj_key)
    return out


def mark_noise(ranked: List[Dict[str, Any]], key: str) -> None:
    """Set `vs_best` on each aggregated row (best first): "best", "within noise" where the difference to the best
    lies inside the 95% interval of the difference, else "worse"; "?" where an interval is missing."""
    if not ranked or key not in ranked[0]:
        return
    top = ranked[0]
    for a in ranked:
        if a is top:
            a["vs_best"] = "best"
            continue
        if key not in a or a.get(f"{key}_ci") is None or top.get(f"{key}_ci") is None:
            a["vs_best"] = "?"
            continue
        # Half-widths to standard errors and back, with the fewer degrees of freedom of the two (conservative).
        dofs = [d for d in (a.get(f"{key}_dof"), top.get(f"{key}_dof")) if d is not None]
        se = lambda r: r[f"{key}_ci"] / t95(r.get(f"{key}_dof"))  # noqa: E731
        half = t95(min(dofs) if dofs else None) * math.hypot(se(a), se(top))
        a["vs_best"] = "within noise" if top[key] - a[key] <= half else "worse"


def rounded_pm(row: Dict[str, Any], key: str) -> str:
    """`0.72 ± 0.12`: the value rounded to its interval's second significant digit (3 digits without one)."""
    value, ci = row.get(key), row.get(f"{key}_ci")
    if not isinstance(value, (int, float)):
        return ""
    if not isinstance(ci, (int, float)) or not ci > 0:
        return f"{value:.3g}" + (" ± 0" if ci == 0 else "")
    places = min(max(1 - math.floor(math.log10(ci)), 0), 6)
    return f"{value:.{places}f} ± {ci:.{places}f}"


def scored_runs(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The completed runs whose checkpoints have a reward and a KL (a scoring judge's runs)."""
    return [r for r in rows if r.get("status") == "completed" and scored_history(r)]


def scored_history(row: Dict[str, Any]) -> List[Dict[str, float]]:
    return [h for h in row.get("sample_history") or [] if "reward" in h and "kl" in h]


def frontier(rows: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The reward-KL frontier (DPO paper, Fig. 2) of the completed runs' checkpoints but step 0 (the start, KL 0,
    every run's): the Pareto-optimal ones (no other checkpoint has reward >= and KL <=, one of them strictly), low KL
    first, each {job, name, step, kl, kl_se, reward, reward_se}; and the run on the best frontier, the one owning the
    most of them (ties: the higher best reward). By point estimates: the 95% intervals say how far to trust them.
    None where no run has a reward and a KL."""
    keep = ("step", "kl", "kl_se", "reward", "reward_se")
    points = [
        {"job": r["job"], "name": r.get("name"), **{k: h.get(k) for k in keep}}
        for r in scored_runs(rows)
        for h in scored_history(r)
        if h["step"] != 0
    ]
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


def finite_or_minus_inf(value: Any) -> float:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf
