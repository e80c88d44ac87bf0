"""Numbers on generated text: per-sample metrics, per-checkpoint means, and the best / degraded checkpoint of a run.

Pure functions on strings and dicts (no model, no files), shared by the sampler, the report and the viewer.
"""

import re
from typing import Any, Dict, List, Optional

from dpo_lab.quality import mean_se

CJK = r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef]"  # CJK radicals, punctuation, ideographs, fullwidth forms
UNIT = re.compile(rf"{CJK}|(?:(?!{CJK})\S)+")  # a CJK character, or a whitespace-delimited run of anything else
REPETITION_N = 4  # toy chosen answers: ~0 repeated 4-grams; looping rejected ones: ~0.55
# Metrics a run can be ranked by: +1 higher is better, -1 lower is better.
BETTER = {
    "win_rate": 1,
    "task_score": 1,
    "reward": 1,
    "distinct_1": 1,
    "distinct_2": 1,
    "repetition": -1,
    "ref_nll": -1,
}
# Per-sample columns (samples.jsonl); a checkpoint's scalar is their mean, named as in MEAN_NAME where it differs.
SAMPLE_METRICS = (
    "length",
    "distinct_1",
    "distinct_2",
    "repetition",
    "stopped",
    "ref_nll",
    "task_score",
    "judge_policy",
    "judge_reference",
    "win",
    "reward",
    "kl",
)
MEAN_NAME = {"length": "mean_length", "win": "win_rate"}
ROW_KEY = {v: k for k, v in MEAN_NAME.items()}  # a checkpoint metric's per-sample column


def units(text: str) -> List[str]:
    """Words for metrics: each CJK character is one unit, other text splits on whitespace."""
    return UNIT.findall(text)


def distinct(tokens: List[str], n: int) -> float:
    """Unique n-grams / all n-grams (0 for a text shorter than n)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def text_metrics(text: str, required_words: Optional[List[str]] = None) -> Dict[str, float]:
    """Per-sample metrics; repetition is the fraction of 4-grams that repeat an earlier one (rep-n)."""
    u = units(text)
    m = {
        "length": len(u),
        "distinct_1": distinct(u, 1),
        "distinct_2": distinct(u, 2),
        "repetition": 1.0 - distinct(u, REPETITION_N) if len(u) >= REPETITION_N else 0.0,
    }
    if required_words is not None:
        m["task_score"] = task_score(text, required_words)
    return m


def means(rows: List[Dict[str, Any]]) -> Dict[str, float]:
    """Scalars per checkpoint: the mean of each per-sample metric present in every row, and its standard error over
    the prompts (`<name>_se`), so eight prompts read as the noisy estimate they are."""
    out = {}
    for k in SAMPLE_METRICS:
        values = [r[k] for r in rows if r.get(k) is not None]
        if values and len(values) == len(rows):
            name = MEAN_NAME.get(k, k)
            m = mean_se(values)
            out[name], out[f"{name}_se"] = m["mean"], m["se"]
    return out


def means_by_step(rows: List[Dict[str, Any]]) -> Dict[int, Dict[str, float]]:
    """`means` of each checkpoint step's rows (rows as in samples.jsonl), in step order."""
    steps = sorted({r["step"] for r in rows})
    return {s: means([r for r in rows if r["step"] == s]) for s in steps}


def resolve_metric(best_metric: str, data_source: str, judged: bool = False) -> str:
    """samples.best_metric=auto: the judge's win rate where a judge is on, else the toy task score where there is
    one, else repetition."""
    if best_metric != "auto":
        return best_metric
    return "win_rate" if judged else "task_score" if data_source == "toy" else "repetition"


def summarize(
    history: Dict[int, Dict[str, float]],
    metric: str,
    margin: float,
    values: Optional[Dict[int, List[Optional[float]]]] = None,
) -> Dict[str, Any]:
    """Best checkpoint by `metric` (the earliest on ties, as load_best_model_at_end) and whether the last checkpoint
    is worse than it by more than `margin`: then the run "degraded after" the best step. With the per-prompt values
    of each step (`values`, same prompt order), the drop must also exceed two standard errors of the per-prompt
    differences: the best of several noisy checkpoints is optimistic, and eight samples are noisy."""
    steps = sorted(s for s, m in history.items() if m.get(metric) is not None)
    if not steps:
        return {}
    sign = BETTER[metric]
    best, last = max(steps, key=lambda s: (sign * history[s][metric], -s)), steps[-1]
    drop = sign * (history[best][metric] - history[last][metric])
    degraded = drop > margin
    if degraded and values and best in values and last in values:
        diffs = [sign * (a - b) for a, b in zip(values[best], values[last]) if a is not None and b is not None]
        if len(diffs) > 1:
            degraded = drop > 2 * mean_se(diffs)["se"]
    return {
        "best_checkpoint_step": best,
        "best_checkpoint_metric": f"samples/{metric}",
        "best_checkpoint_value": history[best][metric],
        "degraded_after_step": best if degraded else None,
    }


def task_score(text: str, required_words: list[str]) -> float:
    """Fraction of required words present in text (substring match, case-insensitive)."""
    if not required_words:
        return 1.0
    text = text.lower()
    return sum(w.lower() in text for w in required_words) / len(required_words)
