"""One training run: composed config -> data + model -> the method's TRL trainer -> results.

`train` reads in the order things happen, as TRL's scripts/dpo.py and torchtune's recipes do: `setup` (device,
precision, data, weights, trainer), `fit` (train or resume, end on an eval, save), `summarize` (the result dict).
Everything a user can get wrong is checked before the weights load. `job.execute` wraps it (status, timing, the
wandb run) and imports this module only in the job's process, by name: it may import the training stack at the top.
"""

import logging
import math
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from accelerate.utils import broadcast_object_list, gather_object, is_peft_model
from datasets import Dataset
from omegaconf import DictConfig, OmegaConf
from transformers import set_seed
from transformers.trainer_callback import ProgressCallback

from dpo_lab import cache, checkpoints, data, files, memory, methods, modeling, reuse, tracking, trainer_args
from dpo_lab.callbacks import DtypeWatch, FirstStepClock, Progress, Samples, StepGuard, TrainerLogger
from dpo_lab.compat import quiet_known_warnings
from dpo_lab.memory import MemoryPlan
from dpo_lab.methods.trainer import trainer_class
from dpo_lab.precision import DtypeReport, Precision, resolve
from dpo_lab.samples import judges, sampling
from dpo_lab.sentiment import cached_sentiment, ensure_sentiment
from dpo_lab.smollm2 import cached_smollm2, ensure_smollm2
from dpo_lab.toy.reward_model import cached_reward_model, toy_reward_model
from dpo_lab.toy.sft import cached_sft, ensure_sft
from dpo_lab.toy.task import cached_toy, ensure_toy
from dpo_lab.validate import validate

log = logging.getLogger(__name__)


def train(cfg: DictConfig, out_dir: str, run=None) -> Dict[str, Any]:
    """Train one run of the chosen method into `out_dir` and return its headline results; `run`: the job's wandb
    run, or None.

    A job dir that already holds checkpoints (an interrupted run) resumes from the last one, with optimizer,
    scheduler and RNG state.
    """
    validate(cfg)  # preflight ran the same checks for a sweep; a rerun or a single run gets them here
    s = setup(cfg, out_dir, run)
    started = time.time()
    fit(s, out_dir)
    return {**summarize(s), "train_seconds": round(time.time() - started, 1)}


@dataclass
class Setup:
    """Everything `setup` decided and built, for `fit` and `summarize`."""

    trainer: Any  # the method's TRL trainer (methods/trainer.py)
    method: str  # its name (methods.NAMES)
    settings: str  # its β, loss and parameters, for the report (methods.settings)
    base_model: str  # the checkpoint the policy started from
    device: str
    precision: Precision
    memory: MemoryPlan
    dtypes: DtypeReport
    sampler: Optional[sampling.Sampler]
    run: Any  # the wandb run, or None
    clock: FirstStepClock  # seconds from process start to the training loop
    resumed_from: Optional[str] = None  # set by fit
    skipped_checkpoints: Tuple[Tuple[str, str], ...] = ()  # (path, problem) of cut-off checkpoints moved aside


def setup(cfg: DictConfig, out_dir: str, run=None) -> Setup:
    """Resolve device and precision, read and check the data, load weights, build the trainer."""
    cache.expect(first_use(cfg, modeling.pick_device(cfg.trainer.device)))
    toy = None
    if cfg.model.source == "tiny" or cfg.data.source == "toy":
        toy = ensure_toy(**OmegaConf.to_container(cfg.toy))
    if cfg.model.source == "smollm2":
        model_path = ensure_smollm2()
    else:
        model_path = toy["model"] if cfg.model.source == "tiny" else modeling.check_model_path(cfg.model.path)
    device = modeling.pick_device(cfg.trainer.device)
    precision = resolve(cfg.trainer.precision, device)
    built = toy  # the files of generated data
    if cfg.data.source == "sentiment":  # answered by the starting model itself
        built = ensure_sentiment(model_path, device, **OmegaConf.to_container(cfg.sentiment))

    set_seed(cfg.seed)
    # Data is checked with the tokenizer alone, so bad rows fail before the weights load.
    tokenizer = modeling.load_tokenizer(model_path, cfg.model.revision, cfg.model.trust_remote_code)
    modeling.check_model(model_path, cfg.model, cfg.peft, tokenizer)
    prefs = data.load_preferences(cfg.data, tokenizer, cfg.trainer.max_length, built)
    methods.check_data(methods.get(cfg.method.name), prefs.shape, cfg.data.train_file or cfg.data.source)
    log.info(
        "Data: %d train / %d eval pairs. Model: %s on %s (%s).",
        len(prefs.train),
        len(prefs.eval),
        model_path,
        device,
        precision.mode,
    )
    if cfg.model.source == "tiny" and cfg.sft.steps > 0:  # a warmed-up model writes stories DPO can improve
        model_path = ensure_sft(
            toy, prompt_format=cfg.data.prompt_format, device=device, **OmegaConf.to_container(cfg.sft)
        )
    method = methods.get(cfg.method.name)
    plan = memory.plan(model_path, cfg, precision, device, prefs.longest, len(prefs.train), method.min_batch)
    if run is not None:  # what the `auto` settings became
        tracking.safely(
            lambda: run.config.update({"resolved": {"device": device, "precision": precision.mode, **plan.summary()}})
        )
    args = trainer_args.build(cfg, out_dir, device, precision, plan.checkpointing, plan.batch)
    model = modeling.load_model(model_path, cfg.model, precision.load_dtype(cfg.peft.enabled))
    reference = {}  # LoRA: TRL uses the adapter-disabled base; precomputed log-probs: none is kept
    if method.reference and not cfg.peft.enabled and not cfg.trainer.precompute_ref_log_probs:  # a frozen copy
        reference["ref_model"] = modeling.load_model(model_path, cfg.model, precision.frozen)
    elif method.reference:
        reference["ref_model"] = None  # a reference-free method's trainer takes no ref_model

    columns = lambda rows, seed: Dataset.from_list([{k: r[k] for k in method.columns} for r in method.rows(rows, seed)])  # noqa: E731
    clock = FirstStepClock()
    quiet_known_warnings()  # before the trainer: PEFT's copy of the warning comes while it wraps the model
    trainer = trainer_class(method)(
        model=model,
        **reference,
        args=args,
        train_dataset=columns(prefs.train, cfg.seed),
        eval_dataset=columns(prefs.eval, cfg.data.split_seed),
        processing_class=tokenizer,
        peft_config=modeling.lora_config(cfg.peft) if cfg.peft.enabled else None,
        callbacks=[clock] + ([TrainerLogger()] if run is not None else []),
    )
    trainer.add_callback(StepGuard(trainer))
    if trainer.pop_callback(ProgressCallback):  # absent with disable_tqdm=True (PrinterCallback)
        trainer.add_callback(Progress(_bar_label(out_dir, method.title)))
    dtypes = DtypeReport(trainer, run)
    trainer.add_callback(DtypeWatch(dtypes))
    sampler = None
    if cfg.samples.count:
        judge = _judge(cfg, toy, str(trainer.accelerator.device))
        # Full fine-tuning with precomputed log-probs or a reference-free method keeps no reference: the sampler
        # loads the starting model for each checkpoint, so every method's samples compare with the same answers.
        load_reference = (
            None
            if getattr(trainer, "ref_model", None) is not None or cfg.peft.enabled
            else (lambda: modeling.load_model(model_path, cfg.model, precision.frozen))
        )
        sampler = sampling.Sampler(trainer, data.sample_rows(prefs), cfg, out_dir, run, judge, load_reference)
        trainer.add_callback(Samples(sampler))
    return Setup(
        trainer,
        method.name,
        methods.settings(method, cfg),
        model_path,
        device,
        precision,
        plan,
        dtypes,
        sampler,
        run,
        clock,
    )


def fit(s: Setup, out_dir: str) -> None:
    """Train (resuming from the job's last complete checkpoint, if any), end on an eval, save the final model."""
    # rank 0 moves cut-off checkpoints aside and tells the other ranks where to resume (one dir, shared)
    acc = s.trainer.accelerator
    found = [checkpoints.resumable(os.path.join(out_dir, "checkpoints")) if acc.is_main_process else None]
    if acc.num_processes > 1:
        broadcast_object_list(found)
    s.resumed_from, skipped = found[0]
    s.skipped_checkpoints = tuple(skipped)
    if s.resumed_from:
        log.info("Resuming from %s", s.resumed_from)
    s.trainer.train(resume_from_checkpoint=s.resumed_from)
    last = [h for h in s.trainer.state.log_history if "eval_loss" in h][-1:]
    if not last or last[0]["step"] != s.trainer.state.global_step:
        s.trainer.evaluate()  # every run ends with an eval, whatever eval_steps and max_steps are
    final = os.path.join(out_dir, "final")
    s.trainer.save_model(final)
    if not is_peft_model(s.trainer.accelerator.unwrap_model(s.trainer.model)):  # LoRA: PEFT wrote the adapter's card
        s.trainer.model_card(final, s.base_model, s.run)


def summarize(s: Setup) -> Dict[str, Any]:
    """The run's result: final and best eval metrics, eval history, sample summary, what ran how, and its cost."""
    history = s.trainer.state.log_history
    evals = [h for h in history if "eval_loss" in h]
    keys = methods.get(s.method).eval_keys
    metrics = lambda h: {k.replace("eval_", "eval/"): h[k] for k in keys if k in h}  # noqa: E731
    result = metrics(evals[-1])
    result["best_eval/rewards/margins"] = max(h.get("eval_rewards/margins", -math.inf) for h in evals)
    result["best_eval/rewards/accuracies"] = max(h.get("eval_rewards/accuracies", -math.inf) for h in evals)
    result["best_eval/logratios/margins"] = max(h.get("eval_logratios/margins", -math.inf) for h in evals)
    result["eval_history"] = [{"step": h["step"], **metrics(h)} for h in evals]
    train_logs = [h for h in history if "train_runtime" in h]
    if train_logs:  # tokens/s, MFU and padding of this process's training (perf.py)
        result.update(s.trainer.meter.total(train_logs[-1]["train_runtime"]))
    result.update(s.sampler.finish() if s.sampler else {})
    result.update(
        method=s.method,
        method_settings=s.settings,
        train_tokens=s.trainer.state.num_input_tokens_seen,
        steps=s.trainer.state.global_step,
        resumed_from=s.resumed_from,
        incomplete_checkpoints=[f"{path}: {why}" for path, why in s.skipped_checkpoints],
        reference_logps=reuse.status(s.trainer),
        **_reference_batches(s.trainer),
        seconds_to_first_step=s.clock.seconds,
        pid=os.getpid(),
        cpu_threads=_torch_threads(),
        device=s.device,
        precision=s.precision.mode,
        **(s.dtypes.dtypes or s.dtypes.read()),  # read after the first step; a resumed, finished run: now
        **s.memory.summary(),
        world_size=s.trainer.args.world_size,
        **_peak_memory_mb(s.device),
    )
    return result


# Seconds per step of the models trained into the cache, for the first run's "this takes ~N min" line (measured:
# benchmarks/README.md); sentiment_token: per token of the sentiment data's answers, SmolLM2 on the CPU.
SECONDS_PER_STEP = {"cpu": {"sft": 0.33, "rm": 0.6, "sentiment_token": 0.008}, "cuda": {"sft": 0.08, "rm": 0.11}}


def first_use(cfg: DictConfig, device: str) -> List[Tuple[Path, str, str]]:
    """What setup builds into the cache on first use, in order (as setup, _judge and toy_reward_model decide it),
    each (its dir, what it is, about how long it takes), for cache.expect."""
    if cfg.model.source == "smollm2" or cfg.data.source == "sentiment":
        return _first_use_real(cfg, device)
    if cfg.model.source != "tiny" and cfg.data.source != "toy":
        return []
    rate = SECONDS_PER_STEP["cuda" if device.startswith("cuda") else "cpu"]
    toy = cached_toy(**OmegaConf.to_container(cfg.toy))
    out = [(Path(toy["model"]).parent, "the toy data and model", "seconds")]
    needs_rm = judges.judge_kind(cfg) == "reward_model" and cfg.samples.judge_model is None
    base = toy["model"]
    if cfg.sft.steps > 0 and (cfg.model.source == "tiny" or needs_rm):
        base = cached_sft(toy, cfg.data.prompt_format, **OmegaConf.to_container(cfg.sft))
        out.append((Path(base).parent, "the tiny model's warm-up", _about(cfg.sft.steps * rate["sft"])))
    if needs_rm:
        rm = cached_reward_model(toy, base, cfg.data.prompt_format, **OmegaConf.to_container(cfg.reward_model))
        out.append((Path(rm).parent, "the toy reward model", _about(cfg.reward_model.steps * rate["rm"])))
    return out


def _first_use_real(cfg: DictConfig, device: str) -> List[Tuple[Path, str, str]]:
    """first_use for model=smollm2 and data=sentiment: the converted checkpoint, then the data it answers."""
    out, model = [], os.path.expanduser(cfg.model.path or "")
    if cfg.model.source == "smollm2":
        model = cached_smollm2()
        out.append((Path(model).parent, "SmolLM2-135M-Instruct as an fp32 checkpoint", "under a minute"))
    if cfg.data.source == "sentiment":
        s = cfg.sentiment
        answers = (s.n_train_prompts + s.n_eval_prompts) * s.answers_per_prompt
        seconds = answers * s.max_new_tokens * SECONDS_PER_STEP["cpu"]["sentiment_token"] if device == "cpu" else 0
        out.append(
            (
                cached_sentiment(model, **OmegaConf.to_container(s)),
                f"the sentiment data ({answers} answers sampled from the model)",
                _about(seconds) if seconds else "",
            )
        )
    return out


def _about(seconds: float) -> str:
    return "under a minute" if seconds < 60 else f"~{round(seconds / 60)} min"


def _bar_label(out_dir: str, title: str) -> str:
    """The training bar's label: the method (DPO, SimPO, ...) and the run's name, which tells a sweep's jobs apart."""
    name = (files.read_json(os.path.join(out_dir, files.JOB)) or {}).get("name")
    if not name:
        return title
    return f"{title} {name}" if len(name) <= 32 else f"{title} {name[:31]}…"  # a single run's name is all its overrides


def _judge(cfg: DictConfig, toy: Optional[dict], device: str) -> Optional[judges.Judge]:
    """The samples' judge on `device`; on toy data without samples.judge_model, the toy reward model (cached)."""
    kind, path = judges.judge_kind(cfg), cfg.samples.judge_model
    if kind == "reward_model" and path is None:  # validate() allows this on toy data only
        path = toy_reward_model(cfg, toy, device)
    return judges.load(kind, path, device, cfg.samples.judge_trust_remote_code)


def _reference_batches(trainer) -> Dict[str, Any]:
    """Batches the reference scored in this job: on all ranks, and per rank where there are several (a collective:
    every rank calls it)."""
    if trainer.accelerator.num_processes == 1:
        return {"reference_batches": trainer.reference_batches}
    ranks = gather_object([trainer.reference_batches])
    return {"reference_batches": sum(ranks), "reference_batches_by_rank": ranks}


def _torch_threads() -> int:
    return torch.get_num_threads()


def _peak_memory_mb(device: str) -> Dict[str, float]:
    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        peak["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak
