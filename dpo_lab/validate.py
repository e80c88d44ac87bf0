"""Semantic checks on a composed config that types alone cannot express. Run before anything loads."""

import dataclasses
import math
from typing import Any, Dict, Iterator

from omegaconf import DictConfig, OmegaConf

from dpo_lab import methods, precision, quality, trainer_args
from dpo_lab.config import (
    Config,
    DataConfig,
    PeftConfig,
    RewardModelConfig,
    SamplesConfig,
    SentimentConfig,
    SftConfig,
    ToyConfig,
    TrainerConfig,
)
from dpo_lab.errors import UserError
from dpo_lab.samples.judges import judge_kind
from dpo_lab.samples.metrics import BETTER
from dpo_lab.smollm2 import INSTALL, gguf_file


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _unknown_keys(node: Dict[str, Any], schema: type, prefix: str = "") -> Iterator[str]:
    """The dotted key of every key of `node` that the dataclass `schema` lacks."""
    fields = {f.name: f.type for f in dataclasses.fields(schema)}
    for key, value in node.items():
        if key not in fields:
            yield prefix + key
        elif dataclasses.is_dataclass(fields[key]) and isinstance(value, dict):
            yield from _unknown_keys(value, fields[key], f"{prefix}{key}.")


def unknown_key(key: str) -> str:
    """What to say of a dotted key the schema lacks (from the command line, or added with `+`): the nearest known
    key at its level, and where the keys are."""
    import difflib

    schema = Config
    *parents, name = key.split(".")
    for part in parents:  # the deepest config group the key lies in
        types = {f.name: f.type for f in dataclasses.fields(schema)}
        if not dataclasses.is_dataclass(types.get(part)):
            break
        schema = types[part]
    near = difflib.get_close_matches(name, [f.name for f in dataclasses.fields(schema)], n=1)
    where = key.rsplit(".", 1)[0] + "." if "." in key and near else ""
    return (
        f"{key} is not a dpo-lab config key{f' (did you mean {where}{near[0]}?)' if near else ''}, so it would "
        "change nothing. The keys are in dpo_lab/config.py (python run.py --cfg job prints them); other "
        "trl.DPOConfig fields go under trainer.extra (+trainer.extra.NAME=VALUE)."
    )


def _check_known_keys(cfg: DictConfig) -> None:
    """Hydra lets `+key=value` add a key a typed config lacks, so `+bta=0.1` would train with beta unchanged."""
    tree = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    tree.pop("hydra", None)  # preflight composes the job config with Hydra's own node
    for key in _unknown_keys(tree, Config):
        _check(False, unknown_key(key))


def _non_finite(node: Any, key: str = "") -> Iterator[str]:
    """The dotted key of every NaN or infinite number in the config (Hydra parses `beta=inf` as a float)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _non_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _non_finite(v, f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        yield f"{key}={node}"


# Keys that mean something only under another group option (the option to add, whether the config has it): typed
# without it, they would change nothing and the run would train on something else than meant.
ONLY_UNDER = {
    "data.train_file": ("data=json", lambda c: c.data.source == "files"),
    "data.eval_file": ("data=json", lambda c: c.data.source == "files"),
    "data.eval_fraction": ("data=json or data=hub", lambda c: c.data.source in ("files", "hub")),
    "data.name": ("data=hub", lambda c: c.data.source == "hub"),
    "data.subset": ("data=hub", lambda c: c.data.source == "hub"),
    "data.train_split": ("data=hub", lambda c: c.data.source == "hub"),
    "data.eval_split": ("data=hub", lambda c: c.data.source == "hub"),
    "model.path": ("model=hf", lambda c: c.model.source == "hf"),
    "model.revision": ("model=hf", lambda c: c.model.source == "hf"),
    "model.trust_remote_code": ("model=hf", lambda c: c.model.source == "hf"),
    "sentiment": ("data=sentiment", lambda c: c.data.source == "sentiment"),
    "toy": ("model=tiny or data=toy", lambda c: c.model.source == "tiny" or c.data.source == "toy"),
    "sft": ("model=tiny", lambda c: c.model.source == "tiny" or c.data.source == "toy"),
    "peft.r": ("peft=lora", lambda c: c.peft.enabled),
    "peft.lora_alpha": ("peft=lora", lambda c: c.peft.enabled),
    "peft.lora_dropout": ("peft=lora", lambda c: c.peft.enabled),
    "peft.target_modules": ("peft=lora", lambda c: c.peft.enabled),
    "samples.judge_model": (
        "samples.count > 0 and samples.judge=reward_model or pairwise_lm",
        lambda c: judge_kind(c) in ("reward_model", "pairwise_lm"),
    ),
}


def _check_ignored(cfg: DictConfig) -> None:
    """A key typed on the command line (hydra.overrides.task: preflight's configs have it, a saved job's not) with a
    value other than its default, that its group option would ignore."""
    defaults = OmegaConf.structured(Config)
    for override in OmegaConf.select(cfg, "hydra.overrides.task", default=None) or ():
        key = str(override).split("=", 1)[0].lstrip("+~")
        for prefix, (option, used) in ONLY_UNDER.items():
            if (key == prefix or key.startswith(prefix + ".")) and not used(cfg):
                given, default = OmegaConf.select(cfg, key), OmegaConf.select(defaults, key)
                _check(
                    given == default,
                    f"{override} changes nothing without {option}, so the run would train on something else than "
                    f"you meant: add {option} to the command line (or drop {key}).",
                )


def validate(cfg: DictConfig) -> None:
    """Raise UserError naming the offending key and a fix for the first problem found."""
    _check_known_keys(cfg)
    tree = OmegaConf.to_container(cfg, resolve=False)
    tree.pop("hydra", None)
    for bad in _non_finite(tree):
        _check(False, f"{bad} is not a finite number: give a finite value.")
    _check_ignored(cfg)
    _check(
        cfg.method.name in methods.NAMES,
        f"method.name={cfg.method.name!r}: use one of {', '.join(methods.NAMES)} (method=NAME).",
    )
    method = methods.get(cfg.method.name)
    for key, value in cfg.method.items():
        _check(
            key in ("name", "beta_grid", "point") or key in method.params or value is None,
            f"method.{key}={value} is not a setting of method={method.name} (its own: "
            f"{', '.join(method.params) or 'none'}); drop it or choose the method it belongs to.",
        )
    _check(
        cfg.method.point is None or cfg.method.point in cfg.method.beta_grid,
        f"method.point={cfg.method.point!r}: use one of {', '.join(cfg.method.beta_grid)} (method.beta_grid).",
    )
    method.check(cfg)
    methods.trl_classes(method)  # a TRL without the method's classes fails here, before any job starts

    for problem in _group_problems(cfg):  # each group's own ranges (config.py); what follows spans groups
        _check(False, problem)

    t = cfg.trainer
    reason = precision.check(t.precision, t.extra)
    _check(reason is None, reason)
    _check_device(cfg)
    _check_distributed(cfg, method)
    if cfg.peft.enabled:
        _check(
            not t.extra.get("sync_ref_model", False),
            "trainer.extra.sync_ref_model=true does not work with LoRA (TRL has no separate reference to sync): "
            "use peft=none or drop sync_ref_model.",
        )

    if cfg.model.source == "smollm2":
        gguf_file()  # installed, or a UserError with the command that installs it
    if cfg.data.source == "sentiment":
        _check_sentiment(cfg)
    trainer_args.check_extra(cfg)
    _check_samples(cfg)
    _check_objective(cfg)
    _check(
        not (t.extra.get("sync_ref_model", False) and t.precompute_ref_log_probs),
        "trainer.extra.sync_ref_model=true with trainer.precompute_ref_log_probs=true: precomputed reference "
        "log-probs go stale when the reference is synced. Add trainer.precompute_ref_log_probs=false (a live "
        "reference) or drop sync_ref_model.",
    )
    liger = t.extra.get("liger_kernel_config")
    _check(
        liger is None or isinstance(liger, DictConfig),
        f"trainer.extra.liger_kernel_config={liger}: give Liger's options as a mapping "
        "(+trainer.extra.liger_kernel_config={rope:true}), or leave it unset.",
    )
    _check(
        not (liger or {}).get("fused_linear_cross_entropy", False),
        "trainer.extra.liger_kernel_config.fused_linear_cross_entropy=true is rejected by TRL's DPOTrainer (it "
        "drops the fused LM head DPO needs); leave it unset.",
    )


# Launchers that run a sweep's jobs on this machine, whose devices preflight can see (submitit's LocalLauncher too;
# its SlurmLauncher runs them on nodes with GPUs this machine may lack).
LOCAL_LAUNCHERS = ("BasicLauncher", "JoblibLauncher", "LocalLauncher")


def _group_problems(cfg: DictConfig):
    """Each config group's own range checks (`problems` beside its dataclass in config.py)."""
    yield from Config.problems(cfg)
    yield from TrainerConfig.problems(cfg.trainer)
    yield from PeftConfig.problems(cfg.peft)
    yield from DataConfig.problems(cfg.data)
    yield from SamplesConfig.problems(cfg.samples)
    yield from RewardModelConfig.problems(cfg.reward_model)
    yield from ToyConfig.problems(cfg.toy)
    yield from SftConfig.problems(cfg.sft)
    if cfg.data.source == "sentiment":
        yield from SentimentConfig.problems(cfg.sentiment)


def _check_device(cfg: DictConfig) -> None:
    """Where the job runs on this machine (a single run, or a sweep launched here), the device trainer.device
    resolves to must exist and run trainer.precision: fp16 needs CUDA, and would fail every job of a sweep."""
    from dpo_lab.modeling import pick_device

    launcher = OmegaConf.select(cfg, "hydra.launcher._target_", default=None)  # None: a single run, here
    if launcher is not None and not str(launcher).endswith(LOCAL_LAUNCHERS):
        return
    t = cfg.trainer
    device = pick_device(t.device)  # a UserError for trainer.device=cuda without CUDA
    # (not precision.resolve: asking CUDA whether it has bf16 would hold a context on a GPU the jobs need)
    _check(
        not (device == "cpu" and precision.LEGACY.get(t.precision, t.precision) == "fp16-mixed"),
        f"trainer.precision={t.precision} needs a CUDA GPU (fp16 autocast with loss scaling), and trainer.device="
        f"{t.device} runs this job on the CPU{' (no CUDA device is visible)' if t.device == 'auto' else ''}. Use "
        "trainer.precision=auto (fp32 on CPU), fp32 or bf16-mixed.",
    )


def _check_distributed(cfg: DictConfig, method) -> None:
    """A job on several processes (trainer.processes, nodes, distributed): distributed.check, with the GPUs nvidia-smi
    lists where the job runs on this machine."""
    from dpo_lab import distributed
    from dpo_lab.gpus import card_memory

    launcher = OmegaConf.select(cfg, "hydra.launcher._target_", default=None)
    here = launcher is None or str(launcher).endswith(LOCAL_LAUNCHERS)
    gpus = len(card_memory()) if here and distributed.world_size(cfg.trainer) > 1 else 0
    for problem in distributed.check(cfg, here, gpus, method.reference):
        _check(False, problem)


def _check_samples(cfg: DictConfig) -> None:
    s, t = cfg.samples, cfg.trainer
    _check(
        s.best_metric == "auto" or s.best_metric in BETTER,
        f"samples.best_metric={s.best_metric!r}: use auto or one of {', '.join(BETTER)}.",
    )
    _check(
        s.best_metric != "task_score" or cfg.data.source == "toy",
        "samples.best_metric=task_score needs the toy data (it scores required words); use repetition or distinct_2.",
    )
    _check(
        s.best_metric != "reward" or judge_kind(cfg) not in ("none", "pairwise_lm"),
        "samples.best_metric=reward needs a judge that scores each answer: samples.judge=sentiment, reward_model "
        "or task (pairwise_lm only compares two answers).",
    )
    _check(
        s.judge != "task" or cfg.data.source == "toy",
        "samples.judge=task needs the toy data (it scores required words); use samples.judge=reward_model with "
        "samples.judge_model=<a reward model dir or hub id>.",
    )
    _check(
        s.judge != "reward_model" or s.judge_model or cfg.data.source == "toy",
        "samples.judge=reward_model needs samples.judge_model (a sequence-classification reward model dir or hub "
        "id) on data other than the toy data, which has its own.",
    )
    _check(
        s.judge != "sentiment" or _installed("vaderSentiment"),
        f"samples.judge=sentiment scores answers with vaderSentiment, which is not installed:\n  {INSTALL}",
    )
    _check(
        s.best_metric != "win_rate" or s.count == 0 or judge_kind(cfg) != "none",
        "samples.best_metric=win_rate needs a judge: set samples.judge (and samples.judge_model off toy data).",
    )
    _check(
        not s.keep_best or t.save_steps % t.eval_steps == 0,
        f"samples.keep_best=true loads the best checkpoint, so every save must follow an eval: trainer.save_steps="
        f"{t.save_steps} must be a multiple of trainer.eval_steps={t.eval_steps}.",
    )


def _check_sentiment(cfg: DictConfig) -> None:
    from dpo_lab.sentiment import INSTRUCTIONS, TOPICS

    s, total = cfg.sentiment, len(TOPICS) * len(INSTRUCTIONS)
    _check(
        cfg.model.source != "tiny",
        "data=sentiment samples its answers from the starting model, and the tiny toy "
        "model writes only toy stories: use model=smollm2 or model=hf model.path=<a chat model>.",
    )
    _check(
        _installed("vaderSentiment"),
        f"data=sentiment scores answers with vaderSentiment, which is not installed:\n  {INSTALL}",
    )
    _check(
        s.n_train_prompts + s.n_eval_prompts <= total,
        f"sentiment.n_train_prompts + n_eval_prompts = {s.n_train_prompts + s.n_eval_prompts}, but there are "
        f"{total} distinct prompts ({len(TOPICS)} topics x {len(INSTRUCTIONS)} instructions); for more pairs raise "
        "sentiment.pairs_per_prompt (with answers_per_prompt at least twice it).",
    )


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _check_objective(cfg: DictConfig) -> None:
    name = cfg.objective
    _check(
        name == "auto" or name in quality.OBJECTIVES,
        f"objective={name!r} is not one of auto or:\n{quality.choices()}\n(auto: win_rate where a judge is on, "
        "else logratio_margin).",
    )
    _check(
        name != "reward" or judge_kind(cfg) not in ("none", "pairwise_lm"),
        "objective=reward needs checkpoint samples and a judge that scores each answer: samples.judge=sentiment, "
        "reward_model or task.",
    )
    _check(
        name not in ("win_rate", "task_score") or cfg.samples.count > 0,
        f"objective={name} is measured on checkpoint samples, and samples.count=0 turns them off.",
    )
    _check(
        name != "win_rate" or judge_kind(cfg) != "none",
        "objective=win_rate needs a judge (samples.judge); without one use objective=logratio_margin or accuracy.",
    )
    _check(name != "task_score" or cfg.data.source == "toy", "objective=task_score needs the toy data.")
