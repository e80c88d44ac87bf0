"""Checkpoint samples: what each checkpoint actually says, written where a person and the report can read it.

At step 0 and at every save (optionally every eval) a fixed, seeded set of eval prompts is answered by the policy;
the reference answers them once per run. Each checkpoint's rows (prompt, policy, reference, ground truth, per-sample
metrics from metrics.py, the judge's verdict from judges.py) go to `<job>/samples.jsonl` and to a wandb Table; their
means and standard errors go to `samples/*` scalars (`samples/win_rate`: the policy's answers against the reference's;
`samples/reward`: a scoring judge's mean score of the policy's answers; `samples/kl`: their KL from the reference).
At the end the run names its best checkpoint by `samples.best_metric` and is flagged if its last checkpoint fell
clearly below it. Settings are checked by validate.py; `python -m dpo_lab samples JOB_DIR` shows the rows (viewer.py).
"""

import contextlib
import json
import logging
import os
import random
import time
from typing import Any, Dict, List, Optional

from dpo_lab import files, tracking
from dpo_lab.data import as_text, prompt_ids
from dpo_lab.samples.judges import judge_kind
from dpo_lab.samples.metrics import BETTER, ROW_KEY, SAMPLE_METRICS, means, resolve_metric, summarize, text_metrics
from dpo_lab.tracking import EVAL_SUMMARIES

log = logging.getLogger(__name__)

COLUMNS = ("step", "index", "prompt", "policy", "reference", "ground_truth") + SAMPLE_METRICS


def best_metric(cfg) -> str:
    """The checkpoint metric that names a run's best checkpoint (samples.best_metric after auto)."""
    return resolve_metric(cfg.samples.best_metric, cfg.data.source, judged=judge_kind(cfg) != "none")


def trainer_args(cfg) -> Dict[str, Any]:
    """DPOConfig fields for samples.keep_best: the best checkpoint by the sample metric is the one kept."""
    if not (cfg.samples.count and cfg.samples.keep_best):
        return {}
    metric = best_metric(cfg)
    return {
        "load_best_model_at_end": True,
        "metric_for_best_model": f"samples_{metric}",
        "greater_is_better": BETTER[metric] > 0,
    }


def generation_kwargs(s) -> Dict[str, Any]:
    if not s.do_sample:
        return {
            "do_sample": False,
            "max_new_tokens": s.max_new_tokens,
            "top_k": None,
            "top_p": None,
            "temperature": None,
        }
    return {
        "do_sample": True,
        "max_new_tokens": s.max_new_tokens,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "temperature": s.temperature,
    }


def pick(rows: List[Dict[str, Any]], count: int, seed: int) -> List[int]:
    """Indices of the fixed prompts: the same for every run with the same eval data."""
    return sorted(random.Random(seed).sample(range(len(rows)), min(count, len(rows))))


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


def logps(model, prompts: List[List[int]], completions: List[List[int]]) -> List[float]:
    """The model's log-probability of each completion given its prompt (summed over the completion's tokens), one
    sequence at a time (bounded memory)."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for p, c in zip(prompts, completions):
            logits = model(input_ids=torch.tensor([p + c], device=device)).logits[0, len(p) - 1 : -1].float()
            target = torch.tensor(c, device=device)
            out.append(-torch.nn.functional.cross_entropy(logits, target, reduction="sum").item())
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

    def __init__(
        self, trainer, rows: List[Dict[str, Any]], cfg, out_dir: str, run=None, judge=None, load_reference=None
    ):
        """`load_reference()`: the reference model, for a run that keeps none (full fine-tuning with precomputed
        log-probs); it is loaded for each checkpoint's samples and freed after."""
        self.trainer, self.s, self.run, self.judge = trainer, cfg.samples, run, judge
        self.load_reference = load_reference
        self.metric = best_metric(cfg)
        self.index = pick(rows, self.s.count, self.s.seed)
        self.rows = [rows[i] for i in self.index]
        self.tokenizer = trainer.processing_class
        self.prompts = [prompt_ids(self.tokenizer, r["prompt"]) for r in self.rows]
        self.gen = generation_kwargs(self.s)
        self.path = os.path.join(out_dir, files.SAMPLES)
        self.history: Dict[int, Dict[str, float]] = {}
        self.values: Dict[int, List[Optional[float]]] = {}  # per-prompt values of self.metric, for summarize()
        self.reference: Optional[List[str]] = None
        self.seconds = 0.0
        self.main = files.is_main_rank()

    def start(self, step: int) -> None:
        """At train begin: keep what an interrupted run of this job sampled up to `step` (where it resumes; 0 for a
        fresh run) with its reference answers, drop later rows and a step a kill cut short (they are sampled again),
        then sample `step`."""
        kept = [r for r in files.read_jsonl(self.path) if r["step"] <= step]
        last = [r["index"] for r in kept if r["step"] == kept[-1]["step"]] if kept else []
        if last and len(last) < len(self.index) and last == self.index[: len(last)]:  # a kill cut that step short
            log.warning(
                "Samples: step %d has %d of %d rows in %s (cut short); sampling it again.",
                kept[-1]["step"],
                len(last),
                len(self.index),
                self.path,
            )
            kept = [r for r in kept if r["step"] != kept[-1]["step"]]
        for s in sorted({r["step"] for r in kept}):
            self._record(s, [r for r in kept if r["step"] == s])
        first = [r for r in kept if r["step"] == min(self.history, default=None)]
        if [r["index"] for r in first] == self.index:
            self.reference = [r["reference"] for r in first]
        self.trainer.accelerator.wait_for_everyone()  # every rank has read the file before rank 0 rewrites it
        if self.main:  # rewritten whole, so a line cut by a kill (read_jsonl skips it) is gone before the next append
            with files.atomic_write(self.path, encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
        self(step)

    def _models(self):
        """(policy, reference, context that turns the reference on)."""
        from accelerate.utils import is_peft_model
        from trl.trainer.utils import use_adapter

        unwrap = self.trainer.accelerator.unwrap_model
        policy = unwrap(self.trainer.model)
        ref_model = getattr(self.trainer, "ref_model", None)  # reference-free methods have no attribute
        if ref_model is not None:  # full fine-tuning: TRL's frozen copy
            return policy, unwrap(ref_model), contextlib.nullcontext
        if is_peft_model(policy):  # LoRA: the base model with the adapter off (or TRL's "ref" adapter)
            return policy, policy, lambda: use_adapter(policy, "ref" if "ref" in policy.peft_config else None)
        # Full fine-tuning with precomputed log-probs keeps no reference: load it for these samples.
        return policy, self.load_reference().to(self.trainer.accelerator.device).eval(), contextlib.nullcontext

    def _answer(self, step: int) -> List[Dict[str, Any]]:
        """This rank's rows for `step`: policy answers, their metrics, the reference's NLL of them and their KL: log
        policy - log reference of each answer, summed over its tokens. The answers are drawn from the policy, so the
        mean over prompts estimates KL(policy || reference) per answer (exactly so with plain sampling: temperature 1,
        no top-k / top-p cut, as samples=default)."""
        acc = self.trainer.accelerator
        policy, ref, ref_on = self._models()
        with acc.split_between_processes(list(range(len(self.rows))), apply_padding=True) as mine:
            prompts = [self.prompts[i] for i in mine]
            with _eval_mode(policy), acc.autocast():
                self._say(
                    step,
                    f"the policy answers {len(self.rows)} eval prompts (up to {self.s.max_new_tokens} new tokens each)",
                )
                answers = generate(policy, self.tokenizer, prompts, self.gen, self.s.seed)
                own = logps(policy, prompts, answers)
                ref_answers = None
                self._say(step, "the reference scores those answers and writes its own")
                with ref_on():
                    ref_logps = logps(ref, prompts, answers)
                    if self.reference is None:
                        ref_answers = generate(ref, self.tokenizer, prompts, self.gen, self.s.seed)
            stop, out = eos_ids(policy, self.tokenizer), []
            texts = [self.tokenizer.decode(a, skip_special_tokens=True) for a in answers]
            if ref_answers is not None:
                ref_texts = [self.tokenizer.decode(a, skip_special_tokens=True) for a in ref_answers]
            else:
                ref_texts = [self.reference[i] for i in mine] if self.reference else [None] * len(mine)
            verdicts = [{}] * len(mine)
            if self.judge is not None and None not in ref_texts:
                self._say(step, f"the {self.judge.name} judge compares the two answers to each prompt")
                rows = [self.rows[i] for i in mine]
                verdicts = self.judge.compare([r["prompt"] for r in rows], texts, ref_texts, rows)
            for k, i in enumerate(mine):
                out.append(
                    {
                        "index": self.index[i],
                        "policy": texts[k],
                        "reference": ref_texts[k],
                        "ref_nll": -ref_logps[k] / len(answers[k]),
                        "kl": own[k] - ref_logps[k],
                        "stopped": float(bool(answers[k]) and answers[k][-1] in stop),
                        **verdicts[k],
                        **text_metrics(texts[k], self.rows[i].get("required_words")),
                    }
                )
            return out

    def _say(self, step: int, what: str) -> None:
        """A progress line for the run's first samples (step 0): the reference answers too, and no bar moves yet, so
        on CPU it is the longest silence of a run (half a minute and more on 2 cores)."""
        if self.main and self.reference is None:
            log.info("Samples at step %d: %s ...", step, what)

    def __call__(self, step: int) -> Dict[str, float]:
        """Sample the policy at `step` (once per step) and return the checkpoint's mean metrics."""
        if step in self.history:
            return self.history[step]
        from accelerate.utils import gather_object

        started = time.time()
        answered = gather_object(self._answer(step))[: len(self.rows)]  # drop the padding of uneven splits
        if self.reference is None:  # the first call: the reference's answers, kept for the whole run
            self.reference = [a["reference"] for a in answered]
        rows = [
            {
                "step": step,
                "prompt": as_text(row["prompt"]),
                "ground_truth": as_text(row["chosen"]),
                **a,
                "reference": ref,
            }
            for row, a, ref in zip(self.rows, answered, self.reference)
        ]
        rows = [{k: r.get(k) for k in COLUMNS} for r in rows]
        seconds = time.time() - started
        self.seconds += seconds
        self._record(step, rows)
        if self.main:
            self._write(step, rows, seconds)
        return self.history[step]

    def _record(self, step: int, rows: List[Dict[str, Any]]) -> None:
        self.history[step] = means(rows)
        self.values[step] = [r.get(ROW_KEY.get(self.metric, self.metric)) for r in rows]

    def _write(self, step: int, rows: List[Dict[str, Any]], seconds: float) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        scalars = {f"samples/{k}": v for k, v in self.history[step].items()}
        shown = ", ".join(f"{k} {v:.3f}" for k, v in self.history[step].items() if not k.endswith("_se"))
        log.info("Samples at step %d (%.1fs): %s", step, seconds, shown)
        if self.run is not None:
            import wandb

            table = wandb.Table(columns=list(COLUMNS), data=[[r[k] for k in COLUMNS] for r in rows])
            tracking.safely(
                lambda: self.run.log(
                    {**scalars, "samples/seconds": seconds, "samples/table": table, "train/global_step": step}
                )
            )

    def finish(self) -> Dict[str, Any]:
        """The run's sample summary (best checkpoint, degradation, last checkpoint's metrics), also in wandb's
        summary."""
        if not self.history:
            return {}
        out = summarize(self.history, self.metric, self.s.degrade_margin, self.values)
        last = max(self.history)
        out.update(
            {f"samples/{k}": v for k, v in self.history[last].items()}, **{"samples/seconds": round(self.seconds, 2)}
        )
        out["samples/judge"] = self.judge.name if self.judge is not None else None
        if out.get("degraded_after_step") is not None:
            log.warning(
                "Samples: %s fell from %.3f at step %d (best) to %.3f at step %d: degraded after step %d.",
                out["best_checkpoint_metric"],
                out["best_checkpoint_value"],
                out["best_checkpoint_step"],
                self.history[last][self.metric],
                last,
                out["degraded_after_step"],
            )
        if self.main and self.run is not None:
            # Keys with a define_metric summary (max, last) keep it rather than a plain last value.
            tracking.safely(
                lambda: self.run.summary.update(
                    {k: v for k, v in out.items() if v is not None and k not in EVAL_SUMMARIES}
                )
            )
        return out
