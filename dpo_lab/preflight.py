"""Preflight: compose and check every job of a sweep before the first one starts.

A typo in job 7 should cost seconds, not the hours jobs 1-6 take. Each job's config is composed exactly as the
launcher will compose it, then checked: types (by composition), ranges and combinations (validate.py), data files
readable and well-formed, model path present.
"""

from typing import Dict, List, Optional, Tuple

from omegaconf import DictConfig

from dpo_lab.errors import UserError


def expand_jobs(config: DictConfig) -> Optional[List[List[str]]]:
    """The override list of every job, as Hydra's basic sweeper will run them (None for other sweepers)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def check_job(cfg: DictConfig, seen_files: Dict[str, Optional[str]]) -> None:
    """Raise UserError for anything that would fail this job before its first training step."""
    from dpo_lab.data import check_rows, read_rows
    from dpo_lab.modeling import check_model_path
    from dpo_lab.validate import validate

    validate(cfg)
    if cfg.model.source == "hf":
        check_model_path(cfg.model.path)
    if cfg.data.source == "files":
        for path in (cfg.data.train_file, cfg.data.eval_file):
            if path and path not in seen_files:  # 15k rows read once per sweep, not once per job
                try:
                    check_rows(read_rows(path), path)
                    seen_files[path] = None
                except UserError as e:
                    seen_files[path] = str(e)
            if path and seen_files[path]:
                raise UserError(seen_files[path])


def preflight(config: DictConfig) -> Tuple[List[List[str]], List[Tuple[List[str], str]]]:
    """Compose and check every job; return (jobs, failures as (overrides, reason))."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    jobs = expand_jobs(config)
    if jobs is None:  # optuna & co. choose values as they go: check the base config only
        jobs = [[o for o in config.hydra.overrides.task if "," not in o and "(" not in o]]
    failures, seen = [], {}
    for overrides in jobs:
        try:
            check_job(loader.load_sweep_config(config, list(overrides)), seen)
        except UserError as e:
            failures.append((overrides, str(e)))
        except Exception as e:  # composition errors: unknown key, bad type, missing group option
            failures.append((overrides, f"{type(e).__name__}: {e}".replace("\n", " ")))
    return jobs, failures
