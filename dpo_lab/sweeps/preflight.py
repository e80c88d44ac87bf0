"""Preflight: compose and check every job of a sweep before the first one starts.

A typo in job 7 should cost seconds, not the hours jobs 1-6 take. Each job's config is composed exactly as the
launcher will compose it, then checked: types (by composition), ranges and combinations (validate.py), data files
readable and well-formed, model path present.
"""

import itertools
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from dpo_lab.errors import UserError


def task_overrides(config: DictConfig) -> List[str]:
    """The command line's overrides as typed: `wandb.group=g${hydra:job.num}` stays an interpolation for each job to
    resolve as its own (resolving it here, before any job exists, fails: HydraConfig was not set)."""
    return [str(o) for o in OmegaConf.to_container(config.hydra.overrides.task, resolve=False)]


def expand_jobs(config: DictConfig) -> Optional[List[List[str]]]:
    """The override list of every job, in the order Hydra's basic sweeper runs them (None for other sweepers):
    the cross product of the sweep overrides, sweeper `params` first, parsed by Hydra's public override parser."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    choices = []
    for o in OverridesParser.create().parse_overrides(params + task_overrides(config)):
        key = o.get_key_element()
        if o.is_sweep_override() and not o.is_discrete_sweep():
            raise UserError(
                f"{o.input_line}: the basic sweeper takes lists (a,b,c or choice(a,b)); a range or interval "
                "needs a sweeper that samples, e.g. hydra/sweeper=optuna."
            )
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        choices.append([f"{key}={v}" for v in values])
    return [list(job) for job in itertools.product(*choices)]


def check_job(cfg: DictConfig, seen_files: Dict[tuple, object]) -> Optional[int]:
    """Raise UserError for anything that would fail this job before its first training step; return the data's
    longest prompt + answer in tokens where preflight reads the data (None: generated data). `seen_files` caches
    across the jobs of a sweep: the data outcome per (data config, tokenizer, max_length), and each tokenizer."""
    import json

    from dpo_lab import methods, trainer_args
    from dpo_lab.data import load_preferences
    from dpo_lab.modeling import check_model_path, load_tokenizer
    from dpo_lab.validate import validate

    validate(cfg)
    check_cache(cfg)
    trainer_args.preflight(cfg)
    if cfg.model.source == "hf":
        check_model_path(cfg.model.path)
    _check_model(cfg, seen_files)
    if cfg.samples.count and cfg.samples.judge_model:
        from dpo_lab.modeling import check_judge_model
        from dpo_lab.samples.judges import judge_kind

        judge = check_model_path(cfg.samples.judge_model, "samples.judge_model")
        check_judge_model(judge, judge_kind(cfg), cfg.samples.judge_trust_remote_code)
    if cfg.data.source in ("files", "hub"):
        # The run's own path (read, check, format, drop rows that would train on nothing, split, eval rows train
        # holds) with the job's tokenizer, so a file whose every prompt is too long stops here too; a sweep over loss
        # and beta reads its rows once. Generated data is not checked here: toy's is built right, sentiment's is the
        # model's own answers.
        if cfg.model.source == "tiny":
            from dpo_lab.toy.task import ensure_toy

            model = (ensure_toy(**OmegaConf.to_container(cfg.toy))["model"], None, False)
        elif cfg.model.source == "smollm2":
            from dpo_lab.smollm2 import ensure_smollm2

            model = (ensure_smollm2(), None, False)
        else:
            model = (check_model_path(cfg.model.path), cfg.model.revision, cfg.model.trust_remote_code)
        data = json.dumps(OmegaConf.to_container(cfg.data, resolve=True), sort_keys=True)
        key, tokenizer = ("data", data, model, cfg.trainer.max_length), ("tokenizer", model)
        if key not in seen_files:
            try:
                if tokenizer not in seen_files:
                    seen_files[tokenizer] = load_tokenizer(*model)  # a UserError when it cannot load, as in the job
                prefs = load_preferences(cfg.data, seen_files[tokenizer], cfg.trainer.max_length)
                seen_files[key] = (prefs.shape, prefs.longest)
            except UserError as e:
                seen_files[key] = UserError(str(e))
        if isinstance(seen_files[key], UserError):
            raise seen_files[key]
        shape, longest = seen_files[key]
        methods.check_data(methods.get(cfg.method.name), shape, cfg.data.train_file or cfg.data.source)
        return longest
    return None


def local_model(cfg: DictConfig) -> Optional[str]:
    """The job's starting checkpoint where it is on this machine (the toy model and SmolLM2 once built into the
    cache, a local model.path), else None."""
    from dpo_lab.modeling import check_model_path

    if cfg.model.source == "tiny":
        from dpo_lab.toy.task import cached_toy

        path = cached_toy(**OmegaConf.to_container(cfg.toy))["model"]
    elif cfg.model.source == "smollm2":
        from dpo_lab.smollm2 import cached_smollm2

        path = cached_smollm2()
    else:
        path = check_model_path(cfg.model.path)
    return path if os.path.isdir(path) else None


def _check_model(cfg: DictConfig, seen: Dict[tuple, object]) -> None:
    """modeling.check_model on the job's starting checkpoint where it is on this machine (the toy model and SmolLM2
    once built into the cache, a local model.path); once per model and LoRA settings in a sweep."""
    import json

    from dpo_lab.modeling import check_model, load_tokenizer

    path = local_model(cfg)
    if path is None:
        return  # built by the job, or a hub id: checked when it loads
    model = (path, cfg.model.revision, cfg.model.trust_remote_code)
    key = ("model", model, json.dumps(OmegaConf.to_container(cfg.peft), sort_keys=True))
    if key not in seen:
        try:
            if ("tokenizer", model) not in seen:
                seen[("tokenizer", model)] = load_tokenizer(*model)
            check_model(path, cfg.model, cfg.peft, seen[("tokenizer", model)])
            seen[key] = None
        except UserError as e:
            seen[key] = UserError(str(e))
    if seen[key] is not None:
        raise seen[key]


def check_cache(cfg: DictConfig) -> None:
    """UserError if the cache cannot be written and lacks an artifact the job builds on first use (a shared,
    pre-built cache on a read-only file system): said before the job starts, with the command that builds them."""
    import shlex

    from dpo_lab import cache

    if cache.writable():
        return
    from dpo_lab.train import first_use  # the one list of what a job builds into the cache

    missing = [(d, what) for d, what, _ in first_use(cfg, "cpu") if cache.done_params(d) is None]
    if missing:
        task = list(cfg.hydra.overrides.task) if "hydra" in cfg else []
        kept = [o for o in task if o.split("=", 1)[0].lstrip("+~") not in ("max_steps", "preflight_only")]
        command = " ".join(["python run.py", *map(shlex.quote, [o for o in kept if not o.startswith("hydra.")])])
        raise cache.missing_error(missing, f"{command} max_steps=1" if "hydra" in cfg else "")


def explain(error: Exception, overrides: List[str] = ()) -> str:
    """A composition error (Hydra's, OmegaConf's) as one paragraph in dpo-lab's words. Hydra's own text is several
    lines and suggests `+key=value` for an unknown key, which validate() refuses."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    from dpo_lab.validate import unknown_key

    cause = error.__cause__
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and "/" in error.missing_cfg_file:
        group, option = error.missing_cfg_file.rsplit("/", 1)
        valid = [
            line.strip()
            for line in str(error).split("Available options in")[-1].splitlines()[1:]
            if line.startswith("\t") and "provider=" not in line
        ]
        return f"{group}={option} is not a {group} option. Valid: {', '.join(valid)}."
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and getattr(cause, "full_key", None):
        return unknown_key(cause.full_key)
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        given = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=", 1)[0] == cause.full_key), None)
        what = f"{cause.full_key}={given}" if given is not None else cause.full_key
        return (
            f"{what}: {str(cause).splitlines()[0]}. python run.py --cfg job prints every key with its default "
            "(dpo_lab/config.py has their types)."
        )
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if "An item is already at" in text:  # `+beta=0.1`: the key exists, so it is set without the +
        key = text.split("An item is already at '", 1)[1].split("'", 1)[0]
        return f"+{key}=...: {key} is already a config key; set it without the + ({key}=VALUE)."
    return text.replace(" See https://hydra.cc", ". See https://hydra.cc")  # the override grammar's parse errors


def check_command_line(argv: List[str]) -> Optional[DictConfig]:
    """UserError if the command line's overrides do not compose into a config (an unknown key or group option, a
    value of the wrong type, a list of values without -m), said before Hydra makes any directory; else the config
    its single-valued overrides compose (None for Hydra's own commands). A sweep's values are composed job by job at
    preflight."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser  # the parser @hydra.main itself uses
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args, _ = get_args_parser().parse_known_args(argv)
    if (
        args.help
        or args.hydra_help
        or args.info
        or args.shell_completion
        or args.config_path
        or args.config_dir
        or args.config_name
        or args.experimental_rerun
    ):
        return None  # Hydra's own commands, or a config other than ours
    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except Exception as e:  # hydra.errors.OverrideParseException: the override's syntax
        raise UserError(explain(e)) from None
    swept = [o.input_line for o in parsed if o.is_sweep_override()]
    if swept and not args.multirun:
        raise UserError(
            f"{' '.join(swept)}: several values for one key sweep over them, which needs -m (python "
            f"run.py -m {' '.join(args.overrides)}); a single run takes one value per key."
        )
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    conf = str(Path(__file__).resolve().parents[2] / "conf")  # the repo's conf/, beside the dpo_lab package
    try:
        with initialize_config_dir(config_dir=conf, version_base="1.3"):
            return compose(config_name="config", overrides=plain, return_hydra_config=True)
    except Exception as e:
        raise UserError(explain(e, plain)) from None


def check_run(config: DictConfig) -> None:
    """Preflight of a single run (Hydra's on_run_start, before it makes the run dir): what a sweep checks per job,
    so a mistake costs no job dir and no wandb run."""
    check_job(config, {})


def preflight(config: DictConfig) -> Tuple[List[List[str]], List[Tuple[List[str], str]], List[Optional[float]]]:
    """Compose and check every job; return (jobs, failures as (overrides, reason), each job's memory estimate in
    bytes for jobs_per_gpu=auto on a GPU machine: None where it cannot be made before the job starts, else [])."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    jobs = expand_jobs(config)
    numbered = jobs is not None  # the basic sweeper's job i runs in sweep dir's subdir i: a relaunch finds it there
    if jobs is None:  # optuna & co. choose values as they go: check the base config only
        jobs = [[o for o in task_overrides(config) if "," not in o and "(" not in o]]
    failures, seen, ranked_by, estimates = [], {}, {}, []
    if str(config.jobs_per_gpu) == "auto":
        from dpo_lab.gpus import card_memory

        estimate = bool(card_memory())  # without a GPU auto is 1: no estimate needed
    else:
        estimate = False
    for num, overrides in enumerate(jobs):
        try:
            job = loader.load_sweep_config(config, list(overrides))
            longest = check_job(job, seen)
            if estimate:
                estimates.append(_estimate(job, longest))
            ranked_by[job.method.name] = comparable(job)
            if numbered:
                check_job_dir(job, num)
        except UserError as e:
            failures.append((overrides, str(e)))
        except Exception as e:  # composition errors: unknown key, bad type, missing group option
            failures.append((overrides, explain(e, list(overrides))))
    if len(ranked_by) > 1 and not all(ranked_by.values()) and not failures:
        raise UserError(
            f"the sweep compares methods ({', '.join(ranked_by)}), and their eval metrics are not "
            "comparable (each method's margin and accuracy measure its own loss): rank them on what their "
            "answers say. Turn on checkpoint samples with a judge (samples.count > 0 and "
            "samples.judge=reward_model with samples.judge_model=..., or the toy data's default judge), "
            "or set objective=win_rate, reward or task_score. Nothing was started."
        )
    return jobs, failures, estimates


def _estimate(job: DictConfig, longest: Optional[int]) -> Optional[float]:
    """memory.job_estimate of a job whose model is here, padding to the data's longest (or trainer.max_length)."""
    from dpo_lab.memory import job_estimate

    if job.model.source == "tiny":  # built in seconds; its warm-up, the model that trains, has its shape
        from dpo_lab.toy.task import ensure_toy

        ensure_toy(**OmegaConf.to_container(job.toy))
    path = local_model(job)
    return job_estimate(path, job, longest or job.trainer.max_length) if path else None


def comparable(job: DictConfig) -> bool:
    """Whether the job's objective ranks runs of different methods fairly: one measured on checkpoint samples."""
    from dpo_lab.quality import ACROSS_METHODS
    from dpo_lab.samples.judges import judge_kind

    if job.objective != "auto":
        return job.objective in ACROSS_METHODS
    return judge_kind(job) != "none"  # auto ranks by the judge's win rate where there is one


def check_writable_dir(path: str, key: str) -> None:
    """UserError naming `key` unless directory `path` exists or can be made, and takes files; leaves nothing behind
    (a preflight that fails must not leave empty directories)."""
    import tempfile

    full = os.path.abspath(os.path.expanduser(str(path)))
    created = []
    try:
        missing, parent = [], full
        while not os.path.lexists(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        for d in reversed(missing):
            try:
                os.mkdir(d)
                created.append(d)
            except FileExistsError:  # another sweep made it meanwhile
                pass
        fd, probe = tempfile.mkstemp(dir=full, prefix=".dpo-lab-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(
            f"{key}={path} cannot be written: {_why_not_writable(full, e)}. Point {key} at a directory "
            f"you can write to ({key}=/path/you/own/...), or fix the permissions."
        ) from None
    finally:
        for d in reversed(created):
            try:
                os.rmdir(d)
            except OSError:  # someone else's files arrived in it: theirs now
                pass


def _why_not_writable(path: str, error: OSError) -> str:
    """The reason in words: which part of `path` is a file, or which existing directory refuses writes."""
    parent = path
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is a file, not a directory"
    if parent == path:
        return f"{path} refuses new files ({error.strerror})"
    return f"{parent} refuses new directories ({error.strerror})"


def check_dirs(config: DictConfig) -> None:
    """The sweep's directory and its report's (results_dir) must be writable: found here, not after the jobs ran."""
    check_writable_dir(config.hydra.sweep.dir, "hydra.sweep.dir")
    check_writable_dir(config.results_dir, "results_dir")


def check_launcher(config: DictConfig) -> None:
    """UserError for a launcher setting that joblib or submitit would refuse only once the sweep is under way (after
    sweep.json and multirun.yaml were written), naming the key and what it takes."""
    launcher = config.hydra.launcher
    target = str(launcher.get("_target_", ""))
    if target.endswith("JoblibLauncher"):
        batch, timeout = str(launcher.get("batch_size")), launcher.get("timeout")
        rules = [
            ("n_jobs", launcher.get("n_jobs") == 0, "how many jobs run at once: N >= 1, or -1 for one per CPU core"),
            ("batch_size", batch != "auto" and not (batch.isdigit() and int(batch) > 0), "auto or a positive integer"),
            ("timeout", timeout is not None and timeout <= 0, "a number > 0 (seconds a job may take), or null"),
        ]
    elif ".submitit_launcher." in target:
        rules = [
            ("timeout_min", launcher.get("timeout_min", 1) < 1, "the minutes a job may take, >= 1"),
            ("nodes", launcher.get("nodes", 1) < 1, "1 or more"),
            ("tasks_per_node", launcher.get("tasks_per_node", 1) < 1, "1 or more"),
            ("array_parallelism", launcher.get("array_parallelism", 1) < 1, "how many jobs run at once, >= 1"),
        ]
    else:
        return
    for key, refused, takes in rules:
        if refused:
            raise UserError(
                f"hydra.launcher.{key}={launcher.get(key)}: the {target.rsplit('.', 1)[-1]} cannot run the sweep's "
                f"jobs with it. Set hydra.launcher.{key} to {takes}; nothing was started."
            )


def check_job_dir(job: DictConfig, num: int) -> None:
    """UserError if job `num`'s directory already holds another config. Checked here, before sweep.json and Hydra's
    multirun.yaml are rewritten, rather than by each job (jobdir.completed_result) once the relaunch is under way. The
    dir is resolved as Hydra's launchers resolve it (hydra.job.num and id set, HydraConfig current), and the configs
    are compared as completed_result compares them (resolved, without the hydra node)."""
    import copy

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict, read_write

    from dpo_lab.files import read_json
    from dpo_lab.jobdir import same_config

    if not os.path.isdir(str(job.hydra.sweep.dir)):  # a new sweep: nothing to clash with
        return
    cfg = copy.deepcopy(job)
    joblib = str(cfg.hydra.launcher.get("_target_", "")).endswith("JoblibLauncher")
    hydra = HydraConfig.instance()
    previous = hydra.cfg
    try:
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.job.num = num
            cfg.hydra.job.id = f"{cfg.hydra.job.name}_{num}" if joblib else num
            job_dir = os.path.join(
                str(OmegaConf.select(cfg, "hydra.sweep.dir")), str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
            )
            cfg.hydra.runtime.output_dir = os.path.abspath(job_dir)
        saved = os.path.join(job_dir, "config.yaml")
        if not os.path.isfile(saved):
            return
        hydra.set_config(cfg)  # ${hydra:...} in the job's config resolves as it did in the job
        with read_write(cfg), open_dict(cfg):
            del cfg["hydra"]
        now = OmegaConf.to_container(cfg, resolve=True)
    finally:
        hydra.cfg = previous
    if not same_config(saved, now):
        earlier = (read_json(os.path.join(str(job.hydra.sweep.dir), "sweep.json")) or {}).get("overrides")
        again = f": python run.py -m {' '.join(earlier)} hydra.sweep.dir={job.hydra.sweep.dir}" if earlier else ""
        raise UserError(
            f"{job_dir} already holds job {num} of an earlier launch with a different config, so it can be "
            "neither skipped nor resumed; nothing was changed. Launch into a new directory "
            f"(hydra.sweep.dir=multirun/NEW_NAME), or finish the earlier sweep with its own values{again}."
        )
