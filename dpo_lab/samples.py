"""Checkpoint samples: what each checkpoint actually says, and numbers that catch degradation.

At step 0 and at every save (optionally every eval) a fixed, seeded set of eval prompts is answered by the policy;
the reference answers them once per run. Each checkpoint's rows (prompt, policy, reference, ground truth, per-sample
metrics) go to `<job>/samples.jsonl` and to a wandb Table; their means go to `samples/*` scalars. At the end the run
names its best checkpoint by `samples.best_metric` and is flagged if its last checkpoint fell clearly below it.

    python -m dpo_lab samples JOB_DIR [--step N]     policy / reference / ground truth side by side
"""

import contextlib
import json
import logging
import math
import os
import random
import re
import shutil
import statistics
import time
import unicodedata
from typing import Any, Dict, List, Optional

from dpo_lab.errors import UserError
from dpo_lab.job import read_json
from dpo_lab.toy import CJK, task_score

log = logging.getLogger(__name__)

UNIT = re.compile(rf"{CJK}|(?:(?!{CJK})\S)+")  # a CJK character, or a whitespace-delimited run of anything else
REPETITION_N = 4  # toy chosen answers: ~0 repeated 4-grams; looping rejected ones: ~0.55
# Metrics a run can be ranked by: +1 higher is better, -1 lower is better.
BETTER = {"task_score": 1, "distinct_1": 1, "distinct_2": 1, "repetition": -1, "ref_nll": -1}
SAMPLE_METRICS = ("length", "distinct_1", "distinct_2", "repetition", "stopped", "ref_nll", "task_score")
COLUMNS = ("step", "index", "prompt", "policy", "reference", "ground_truth") + SAMPLE_METRICS
FILE = "samples.jsonl"


# --- metrics on text -------------------------------------------------------------------------------------------


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
    m = {"length": len(u), "distinct_1": distinct(u, 1), "distinct_2": distinct(u, 2),
         "repetition": 1.0 - distinct(u, REPETITION_N) if len(u) >= REPETITION_N else 0.0}  # fmt: skip
    if required_words is not None:
        m["task_score"] = task_score(text, required_words)
    return m


def means(rows: List[Dict[str, Any]]) -> Dict[str, float]:
    """Scalar per checkpoint: the mean of each per-sample metric present in every row."""
    out = {}
    for k in SAMPLE_METRICS:
        values = [r[k] for r in rows if r.get(k) is not None]
        if values and len(values) == len(rows):
            out["mean_length" if k == "length" else k] = sum(values) / len(values)
    return out


def summarize(history: Dict[int, Dict[str, float]], metric: str, margin: float,
              values: Optional[Dict[int, List[Optional[float]]]] = None) -> Dict[str, Any]:  # fmt: skip
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
            degraded = drop > 2 * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return {"best_checkpoint_step": best, "best_checkpoint_metric": f"samples/{metric}",
            "best_checkpoint_value": history[best][metric], "degraded_after_step": best if degraded else None}  # fmt: skip


# --- config --------------------------------------------------------------------------------------------------------


def resolve_metric(cfg) -> str:
    """auto: the toy task score where there is one, else repetition."""
    if cfg.samples.best_metric != "auto":
        return cfg.samples.best_metric
    return "task_score" if cfg.data.source == "toy" else "repetition"


def validate(cfg) -> None:
    s = cfg.samples
    problems = [
        (s.count >= 0, f"samples.count={s.count} must be >= 0 (0 turns samples off)."),
        (s.max_new_tokens > 0, f"samples.max_new_tokens={s.max_new_tokens} must be > 0."),
        (s.temperature > 0, f"samples.temperature={s.temperature} must be > 0 (greedy: samples=greedy)."),
        (s.top_p is None or 0 < s.top_p <= 1, f"samples.top_p={s.top_p} must lie in (0, 1] or be null."),
        (s.top_k is None or s.top_k >= 0, f"samples.top_k={s.top_k} must be >= 0 or null."),
        (s.best_metric == "auto" or s.best_metric in BETTER,
         f"samples.best_metric={s.best_metric!r}: use auto or one of {', '.join(BETTER)}."),
        (s.best_metric != "task_score" or cfg.data.source == "toy",
         "samples.best_metric=task_score needs the toy data (it scores required words); use repetition or distinct_2."),
        (not s.keep_best or s.count > 0, "samples.keep_best=true needs samples (samples.count > 0)."),
        (not s.keep_best or cfg.trainer.save_steps % cfg.trainer.eval_steps == 0,
         f"samples.keep_best=true loads the best checkpoint, so every save must follow an eval: trainer.save_steps="
         f"{cfg.trainer.save_steps} must be a multiple of trainer.eval_steps={cfg.trainer.eval_steps}."),
    ]  # fmt: skip
    for ok, message in problems:
        if not ok:
            raise UserError(message)


def trainer_args(cfg) -> Dict[str, Any]:
    """DPOConfig fields for samples.keep_best: the best checkpoint by the sample metric is the one kept."""
    if not (cfg.samples.count and cfg.samples.keep_best):
        return {}
    metric = resolve_metric(cfg)
    return {"load_best_model_at_end": True, "metric_for_best_model": f"samples_{metric}",
            "greater_is_better": BETTER[metric] > 0}  # fmt: skip


def generation_kwargs(s) -> Dict[str, Any]:
    if not s.do_sample:
        return {"do_sample": False, "max_new_tokens": s.max_new_tokens, "top_k": None, "top_p": None, "temperature": None}
    return {"do_sample": True, "max_new_tokens": s.max_new_tokens, "top_k": s.top_k, "top_p": s.top_p,
            "temperature": s.temperature}  # fmt: skip


# --- generation ----------------------------------------------------------------------------------------------------


def pick(rows: List[Dict[str, Any]], count: int, seed: int) -> List[int]:
    """Indices of the fixed prompts: the same for every run with the same eval data."""
    return sorted(random.Random(seed).sample(range(len(rows)), min(count, len(rows))))


def as_text(value: Any) -> str:
    """A prompt or answer for display: plain text, or the contents of a list of chat messages."""
    return value if isinstance(value, str) else "\n".join(str(m["content"]) for m in value)


def prompt_ids(tokenizer, prompt: Any) -> List[int]:
    """Token ids of a prompt as TRL's DPOTrainer builds them (chat template with generation prompt for messages)."""
    if isinstance(prompt, list):
        return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])  # fmt: skip
    return tokenizer(text=prompt)["input_ids"]


def eos_ids(model, tokenizer) -> set:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    return (ids | {tokenizer.eos_token_id}) - {None}


def generate(model, tokenizer, prompts: List[List[int]], gen: Dict[str, Any], seed: int) -> List[List[int]]:
    """Completions for a batch of prompt ids (left-padded), each cut after its first EOS."""
    import torch

    device = next(model.parameters()).device
    pad, width = tokenizer.pad_token_id, max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    # Seeded, and in a forked RNG so that sampling never changes what training draws next.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad, **gen)
    stop = eos_ids(model, tokenizer)
    completions = []
    for row in out[:, width:].tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in stop), len(row))
        completions.append(row[:end])
    return completions


def mean_nll(model, prompts: List[List[int]], completions: List[List[int]]) -> List[float]:
    """The model's negative log-likelihood per completion token, one sequence at a time (bounded memory)."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for p, c in zip(prompts, completions):
            logits = model(input_ids=torch.tensor([p + c], device=device)).logits[0, len(p) - 1 : -1].float()
            target = torch.tensor(c, device=device)
            out.append(torch.nn.functional.cross_entropy(logits, target).item())
    return out


@contextlib.contextmanager
def _eval_mode(model):
    training = model.training
    model.eval()  # no dropout while sampling
    try:
        yield
    finally:
        model.train(training)


class Sampler:
    """Samples a trainer's policy at checkpoints and its reference once; every rank answers its share of the prompts,
    rank 0 writes and logs. `callback()` hooks it into the trainer; `finish()` returns the run summary."""

    def __init__(self, trainer, rows: List[Dict[str, Any]], cfg, out_dir: str, run=None):
        self.trainer, self.s, self.run = trainer, cfg.samples, run
        self.metric = resolve_metric(cfg)
        self.index = pick(rows, self.s.count, self.s.seed)
        self.rows = [rows[i] for i in self.index]
        self.tokenizer = trainer.processing_class
        self.prompts = [prompt_ids(self.tokenizer, r["prompt"]) for r in self.rows]
        self.gen = generation_kwargs(self.s)
        self.path = os.path.join(out_dir, FILE)
        self.history: Dict[int, Dict[str, float]] = {}
        self.values: Dict[int, List[Optional[float]]] = {}  # per-prompt values of self.metric, for summarize()
        self.reference: Optional[List[str]] = None
        self.seconds = 0.0
        self.main = trainer.accelerator.is_main_process

    def start(self, step: int) -> None:
        """At train begin: keep what an interrupted run of this job sampled up to `step` (where it resumes; 0 for a
        fresh run) with its reference answers, drop later rows (they are sampled again), then sample `step`."""
        kept = [r for r in (read(os.path.dirname(self.path)) if os.path.isfile(self.path) else []) if r["step"] <= step]
        for s in sorted({r["step"] for r in kept}):
            self._record(s, [r for r in kept if r["step"] == s])
        first = [r for r in kept if r["step"] == min(self.history, default=None)]
        if [r["index"] for r in first] == self.index:
            self.reference = [r["reference"] for r in first]
        self.trainer.accelerator.wait_for_everyone()  # every rank has read the file before rank 0 rewrites it
        if self.main:
            with open(self.path + ".tmp", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
            os.replace(self.path + ".tmp", self.path)
        self(step)

    def _models(self):
        """(policy, reference, context that turns the reference on); reference None when there is none to run."""
        from accelerate.utils import is_peft_model
        from trl.trainer.utils import use_adapter

        unwrap = self.trainer.accelerator.unwrap_model
        policy = unwrap(self.trainer.model)
        if self.trainer.ref_model is not None:  # full fine-tuning: TRL's frozen copy
            return policy, unwrap(self.trainer.ref_model), contextlib.nullcontext
        if is_peft_model(policy):  # LoRA: the base model with the adapter off (or TRL's "ref" adapter)
            return policy, policy, lambda: use_adapter(policy, "ref" if "ref" in policy.peft_config else None)
        return policy, None, None  # full fine-tuning with precompute_ref_log_probs: no reference is kept

    def _answer(self, step: int) -> List[Dict[str, Any]]:
        """This rank's rows for `step`: policy answers, their metrics, the reference's NLL of them."""
        acc = self.trainer.accelerator
        policy, ref, ref_on = self._models()
        with acc.split_between_processes(list(range(len(self.rows))), apply_padding=True) as mine:
            prompts = [self.prompts[i] for i in mine]
            with _eval_mode(policy), acc.autocast():
                answers = generate(policy, self.tokenizer, prompts, self.gen, self.s.seed)
                ref_answers = None
                if ref is not None:
                    with ref_on():
                        nll = mean_nll(ref, prompts, answers)
                        if self.reference is None:
                            ref_answers = generate(ref, self.tokenizer, prompts, self.gen, self.s.seed)
                else:
                    nll = [None] * len(prompts)
                    if self.reference is None and step == 0:  # before any update the policy is the reference
                        ref_answers = answers
            stop, out = eos_ids(policy, self.tokenizer), []
            for k, i in enumerate(mine):
                text = self.tokenizer.decode(answers[k], skip_special_tokens=True)
                ref_text = None if ref_answers is None else self.tokenizer.decode(ref_answers[k], skip_special_tokens=True)
                out.append({"index": self.index[i], "policy": text, "reference": ref_text, "ref_nll": nll[k],
                            "stopped": float(bool(answers[k]) and answers[k][-1] in stop),
                            **text_metrics(text, self.rows[i].get("required_words"))})  # fmt: skip
            return out

    def __call__(self, step: int) -> Dict[str, float]:
        """Sample the policy at `step` (once per step) and return the checkpoint's mean metrics."""
        if step in self.history:
            return self.history[step]
        from accelerate.utils import gather_object

        started = time.time()
        answered = gather_object(self._answer(step))[: len(self.rows)]  # drop the padding of uneven splits
        if self.reference is None:  # the first call: the reference's answers, kept for the whole run
            self.reference = [a["reference"] for a in answered]
            if self.reference[0] is None:
                log.warning("No reference model to sample (full fine-tuning with precompute_ref_log_probs, resumed "
                            "past step 0): the reference column stays empty and ref_nll is not computed.")  # fmt: skip
        rows = [{"step": step, "prompt": as_text(row["prompt"]), "ground_truth": as_text(row["chosen"]), **a,
                 "reference": ref} for row, a, ref in zip(self.rows, answered, self.reference)]  # fmt: skip
        rows = [{k: r.get(k) for k in COLUMNS} for r in rows]
        seconds = time.time() - started
        self.seconds += seconds
        self._record(step, rows)
        if self.main:
            self._write(step, rows, seconds)
        return self.history[step]

    def _record(self, step: int, rows: List[Dict[str, Any]]) -> None:
        self.history[step] = means(rows)
        self.values[step] = [r.get(self.metric) for r in rows]

    def _write(self, step: int, rows: List[Dict[str, Any]], seconds: float) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        scalars = {f"samples/{k}": v for k, v in self.history[step].items()}
        log.info("Samples at step %d (%.1fs): %s", step, seconds, ", ".join(f"{k} {v:.3f}" for k, v in scalars.items()))
        if self.run is not None:
            import wandb

            table = wandb.Table(columns=list(COLUMNS), data=[[r[k] for k in COLUMNS] for r in rows])
            self.run.log({**scalars, "samples/seconds": seconds, "samples/table": table, "train/global_step": step})

    def finish(self) -> Dict[str, Any]:
        """The run's sample summary (best checkpoint, degradation, last checkpoint's metrics), also in wandb's summary."""
        if not self.history:
            return {}
        out = summarize(self.history, self.metric, self.s.degrade_margin, self.values)
        last = max(self.history)
        out.update({f"samples/{k}": v for k, v in self.history[last].items()}, **{"samples/seconds": round(self.seconds, 2)})
        if out.get("degraded_after_step") is not None:
            log.warning("Samples: %s fell from %.3f at step %d (best) to %.3f at step %d: degraded after step %d.",
                        out["best_checkpoint_metric"], out["best_checkpoint_value"], out["best_checkpoint_step"],
                        self.history[last][self.metric], last, out["degraded_after_step"])  # fmt: skip
        if self.main and self.run is not None:
            self.run.summary.update({k: v for k, v in out.items() if v is not None})
        return out

    def callback(self):
        from transformers import TrainerCallback

        sampler = self

        class SampleCallback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                sampler.start(state.global_step)  # the baseline (step 0) and the reference's answers

            def on_save(self, args, state, control, **kwargs):
                sampler(state.global_step)

            def on_evaluate(self, args, state, control, metrics=None, **kwargs):
                if sampler.s.on_eval or sampler.s.keep_best:
                    value = sampler(state.global_step).get(sampler.metric)
                    if metrics is not None and value is not None:  # what load_best_model_at_end ranks by
                        metrics[f"eval_samples_{sampler.metric}"] = value

        return SampleCallback()


# --- terminal view -------------------------------------------------------------------------------------------------


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


def read(job_dir: str) -> List[Dict[str, Any]]:
    path = os.path.join(job_dir, FILE)
    if not os.path.isfile(path):
        raise UserError(f"{job_dir} has no {FILE}: not a job directory, or a run with samples.count=0.")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def show(job_dir: str, step: Optional[int] = None, width: Optional[int] = None) -> str:
    """The metrics of every sampled checkpoint, then one checkpoint's answers side by side (default: the last)."""
    rows = read(job_dir)
    steps = sorted({r["step"] for r in rows})
    step = steps[-1] if step is None else step
    if step not in steps:
        raise UserError(f"{job_dir} has no samples at step {step}; sampled steps: {', '.join(map(str, steps))}.")
    width = max(60, width or shutil.get_terminal_size((120, 24)).columns)
    keys = [k for k in ("task_score", "repetition", "distinct_1", "distinct_2", "ref_nll", "mean_length")
            if any(k in means([r for r in rows if r["step"] == s]) for s in steps)]  # fmt: skip
    out = [f"{'step':>6}  " + "  ".join(f"{k:>11}" for k in keys)]
    for s in steps:
        m = means([r for r in rows if r["step"] == s])
        out.append(f"{s:>6}  " + "  ".join(f"{m[k]:>11.3f}" if k in m else f"{'-':>11}" for k in keys))
    result = read_json(os.path.join(job_dir, "result.json")) or {}
    if result.get("best_checkpoint_step") is not None:
        degraded = result.get("degraded_after_step")
        out.append(f"best checkpoint: step {result['best_checkpoint_step']} by {result['best_checkpoint_metric']}"
                   + (f"; degraded after step {degraded}" if degraded is not None else ""))  # fmt: skip
    col = (width - 6) // 3
    picked = [r for r in rows if r["step"] == step]
    for n, r in enumerate(picked, start=1):
        out += ["", "=" * width, f"step {step}  prompt {n}/{len(picked)} (eval row {r['index']})"]
        out += wrap(r["prompt"], width) + ["-" * width]
        cols = [wrap(r[k] or "", col) for k in ("policy", "reference", "ground_truth")]
        out.append(" | ".join(h.ljust(col) for h in ("policy", "reference", "ground truth")))
        for i in range(max(map(len, cols))):
            out.append(" | ".join(c[i] + " " * (col - _width(c[i])) if i < len(c) else " " * col for c in cols).rstrip())
        out.append("  ".join(f"{k} {r[k]:.3g}" for k in SAMPLE_METRICS if r.get(k) is not None))
    return "\n".join(out)

