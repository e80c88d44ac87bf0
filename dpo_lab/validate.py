"""Semantic checks on a composed config that types alone cannot express. Run before anything loads."""

import dataclasses
from typing import Any, Dict, Iterator

from omegaconf import DictConfig, OmegaConf

from dpo_lab import memory, methods, precision, quality
from dpo_lab.config import PROMPT_FORMATS, Config
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


def validate(cfg: DictConfig) -> None:
    """Raise UserError naming the offending key and a fix for the first problem found."""
    _check_known_keys(cfg)
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

    _check(cfg.beta > 0, f"beta={cfg.beta} must be > 0 (typical values: 0.01 .. 0.5).")
    _check(cfg.lr > 0, f"lr={cfg.lr} must be > 0.")
    _check(cfg.epochs > 0 or (cfg.max_steps or 0) > 0, f"epochs={cfg.epochs} must be > 0 (or set max_steps).")
    _check(
        cfg.max_steps is None or cfg.max_steps > 0, f"max_steps={cfg.max_steps} must be > 0, or null to train `epochs`."
    )

    t = cfg.trainer
    reason = precision.check(t.precision, t.extra)
    _check(reason is None, reason)
    _check_device(cfg)
    _check(
        str(t.activation_checkpointing).lower() in memory.SETTINGS,
        f"trainer.activation_checkpointing={t.activation_checkpointing!r}: use auto, true or false.",
    )
    for key in (
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "eval_steps",
        "save_steps",
        "logging_steps",
        "max_length",
    ):
        _check(t[key] > 0, f"trainer.{key}={t[key]} must be > 0.")
    if t.save_total_limit is not None:
        _check(t.save_total_limit > 0, f"trainer.save_total_limit={t.save_total_limit} must be > 0 or null (keep all).")
    if cfg.peft.enabled:
        _check(cfg.peft.r > 0, f"peft.r={cfg.peft.r} must be > 0.")
        _check(
            not t.extra.get("sync_ref_model", False),
            "trainer.extra.sync_ref_model=true does not work with LoRA (TRL has no separate reference to sync): "
            "use peft=none or drop sync_ref_model.",
        )

    d = cfg.data
    no_file = OmegaConf.is_missing(d, "train_file") or d.train_file is None
    _check(
        d.source != "files" or not no_file,
        "data=json needs data.train_file: your preference file (JSON array, "
        "JSON Lines, .parquet or .csv with prompt, chosen, rejected), e.g. data.train_file=train.jsonl.",
    )
    _check(
        d.source != "hub" or bool(d.name),
        "data=hub needs data.name: a hub dataset id, e.g. data.name=trl-lib/ultrafeedback_binarized.",
    )
    _check(0.0 < d.eval_fraction < 1.0, f"data.eval_fraction={d.eval_fraction} must lie in (0, 1).")
    fmt = d.prompt_format
    _check(
        fmt == "chat" or fmt in PROMPT_FORMATS or "{prompt}" in fmt,
        f"data.prompt_format={fmt!r} is neither 'chat', a named format ({', '.join(PROMPT_FORMATS)}) "
        "nor a format string containing {prompt}.",
    )
    if cfg.model.source == "smollm2":
        gguf_file()  # installed, or a UserError with the command that installs it
    if d.source == "sentiment":
        _check_sentiment(cfg)
    _check(cfg.jobs_per_gpu >= 1, f"jobs_per_gpu={cfg.jobs_per_gpu}: use 1 or more.")
    _check(
        cfg.cpu_threads is None or cfg.cpu_threads >= 1,
        f"cpu_threads={cfg.cpu_threads}: use a number >= 1, or leave it unset.",
    )
    _check_extra_trainer_keys(t.extra)
    _check_samples(cfg)
    _check_objective(cfg)
    _check(
        not (t.extra.get("sync_ref_model", False) and t.precompute_ref_log_probs),
        "trainer.extra.sync_ref_model=true with trainer.precompute_ref_log_probs=true: precomputed reference "
        "log-probs go stale when the reference is synced. Add trainer.precompute_ref_log_probs=false (a live "
        "reference) or drop sync_ref_model.",
    )
    _check(
        not (t.extra.get("liger_kernel_config") or {}).get("fused_linear_cross_entropy", False),
        "trainer.extra.liger_kernel_config.fused_linear_cross_entropy=true is rejected by TRL's DPOTrainer (it "
        "drops the fused LM head DPO needs); leave it unset.",
    )


# Launchers that run a sweep's jobs on this machine, whose devices preflight can see (submitit's LocalLauncher too;
# its SlurmLauncher runs them on nodes with GPUs this machine may lack).
LOCAL_LAUNCHERS = ("BasicLauncher", "JoblibLauncher", "LocalLauncher")


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


def _check_samples(cfg: DictConfig) -> None:
    s, t = cfg.samples, cfg.trainer
    _check(s.count >= 0, f"samples.count={s.count} must be >= 0 (0 turns samples off).")
    _check(s.max_new_tokens > 0, f"samples.max_new_tokens={s.max_new_tokens} must be > 0.")
    _check(s.temperature > 0, f"samples.temperature={s.temperature} must be > 0 (greedy: samples=greedy).")
    _check(s.top_p is None or 0 < s.top_p <= 1, f"samples.top_p={s.top_p} must lie in (0, 1] or be null.")
    _check(s.top_k is None or s.top_k >= 0, f"samples.top_k={s.top_k} must be >= 0 or null.")
    _check(
        s.best_metric == "auto" or s.best_metric in BETTER,
        f"samples.best_metric={s.best_metric!r}: use auto or one of {', '.join(BETTER)}.",
    )
    _check(
        s.best_metric != "task_score" or cfg.data.source == "toy",
        "samples.best_metric=task_score needs the toy data (it scores required words); use repetition or distinct_2.",
    )
    _check(not s.keep_best or s.count > 0, "samples.keep_best=true needs samples (samples.count > 0).")
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
        s.judge != "pairwise_lm" or s.judge_model,
        "samples.judge=pairwise_lm needs samples.judge_model: an instruction-tuned causal LM dir or hub id.",
    )
    _check(
        s.best_metric != "win_rate" or s.count == 0 or judge_kind(cfg) != "none",
        "samples.best_metric=win_rate needs a judge: set samples.judge (and samples.judge_model off toy data).",
    )
    _check(cfg.reward_model.steps > 0, f"reward_model.steps={cfg.reward_model.steps} must be > 0.")
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
        s.n_train_prompts > 0 and s.n_eval_prompts > 0,
        f"sentiment.n_train_prompts={s.n_train_prompts} and sentiment.n_eval_prompts={s.n_eval_prompts} must be > 0.",
    )
    _check(
        s.n_train_prompts + s.n_eval_prompts <= total,
        f"sentiment.n_train_prompts + n_eval_prompts = {s.n_train_prompts + s.n_eval_prompts}, but there are "
        f"{total} distinct prompts ({len(TOPICS)} topics x {len(INSTRUCTIONS)} instructions); for more pairs raise "
        "sentiment.pairs_per_prompt (with answers_per_prompt at least twice it).",
    )
    _check(
        s.answers_per_prompt >= 2 * max(s.pairs_per_prompt, 1),
        f"sentiment.answers_per_prompt={s.answers_per_prompt} gives at most {s.answers_per_prompt // 2} pair(s) per "
        f"prompt, and sentiment.pairs_per_prompt={s.pairs_per_prompt}: raise answers_per_prompt to at least "
        f"{2 * max(s.pairs_per_prompt, 1)} or lower pairs_per_prompt (>= 1).",
    )
    _check(
        s.pairs_per_prompt >= 1 and s.batch_size >= 1,
        f"sentiment.pairs_per_prompt={s.pairs_per_prompt} and sentiment.batch_size={s.batch_size} must be >= 1.",
    )
    _check(
        s.max_new_tokens > 0 and s.temperature > 0,
        f"sentiment.max_new_tokens={s.max_new_tokens} and sentiment.temperature={s.temperature} must be > 0.",
    )
    _check(0 <= s.min_gap < 2, f"sentiment.min_gap={s.min_gap} must lie in [0, 2): VADER scores lie in [-1, 1].")


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


def _check_extra_trainer_keys(extra) -> None:
    from trl import DPOConfig

    owned = {
        "bf16": "trainer.precision",
        "fp16": "trainer.precision",
        "gradient_checkpointing": "trainer.activation_checkpointing",
        "activation_checkpointing": "trainer.activation_checkpointing",
    }
    for key in extra:
        _check(
            key not in owned,
            f"trainer.extra.{key} is set by {owned.get(key)}: use that instead (see the README's "
            "'Precision and memory').",
        )
    valid = DPOConfig.__dataclass_fields__
    unknown = [k for k in extra if k not in valid]
    _check(
        not unknown,
        f"trainer.extra has keys {unknown} that trl.DPOConfig does not have. trainer.extra passes fields straight "
        "to DPOConfig; check the spelling against TRL's DPOConfig documentation.",
    )
