"""Rerun a saved job exactly (same resolved config and seed), or with a few overrides.

python -m dpo_lab rerun multirun/dpo/2026-11-24_10-00-00/3            # same config, new dir
python -m dpo_lab rerun multirun/dpo/2026-11-24_10-00-00/3 lr=1e-5   # changed
python -m dpo_lab rerun wandb:ENTITY/PROJECT/RUN_ID                     # from an online run's config
"""

import itertools
import logging
import math
import os
import time
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

from dpo_lab.config import Config
from dpo_lab.console import setup_logging
from dpo_lab.errors import EXIT_OK, EXIT_USER_ERROR, UserError
from dpo_lab.files import CONFIG, read_json
from dpo_lab.job import TRAIN, exit_code
from dpo_lab.jobdir import check_free, completed_result, load_config, prepare
from dpo_lab.launch import launch
from dpo_lab.sweeps.preflight import check_job

log = logging.getLogger(__name__)


def _from_wandb(ref: str) -> str:
    """Write a job-like config.yaml from an online run's logged config; return its directory, which stands for the
    original job (the rerun goes to its reruns/<time>/ or --out, as from any job dir)."""
    import wandb

    try:
        run = wandb.Api().run(ref)
    except (wandb.errors.Error, ValueError) as e:  # no login, no network, no such run, a malformed path
        raise UserError(
            f"wandb:{ref}: wandb cannot fetch this run ({type(e).__name__}: {' '.join(str(e).split())}). Give it as "
            "wandb:ENTITY/PROJECT/RUN_ID (the end of the run page's URL), after `wandb login` with network access; "
            "or rerun a job directory: python -m dpo_lab rerun JOB_DIR."
        ) from None
    job_dir = os.path.join("outputs", "from-wandb", run.id)
    write_logged_config(dict(run.config), job_dir)
    return job_dir


def write_logged_config(logged: Dict[str, Any], job_dir: str) -> None:
    """The dpo-lab config inside a run's wandb config (beside it: overrides, choices, resolved, dtypes, trl) as
    `job_dir`/config.yaml. A remote config is data, never code: only dpo-lab's own keys are kept, `_target_` entries
    are dropped (nothing here instantiates, and nothing later should get the chance), model.trust_remote_code is
    turned off (an override turns it back on), and an interpolation is refused, since `${oc.env:HF_TOKEN}` would
    copy this machine's secrets into the new run's config and wandb run."""
    saved = {k: _inert(v, k) for k, v in logged.items() if k in Config.__dataclass_fields__}
    model = saved.get("model")
    if isinstance(model, dict) and model.get("trust_remote_code"):  # code from the hub runs only when asked here
        model["trust_remote_code"] = False
        log.warning(
            "The logged config ran %s with model.trust_remote_code=true; a rerun from it does not trust remote "
            "code unless you add model.trust_remote_code=true to the rerun's command line.",
            model.get("path"),
        )
    os.makedirs(job_dir, exist_ok=True)
    OmegaConf.save(OmegaConf.create(saved), os.path.join(job_dir, "config.yaml"))


def _inert(value: Any, key: str) -> Any:
    """`value` without `_target_` entries; UserError naming `key` for an interpolation."""
    if isinstance(value, dict):
        if "_target_" in value:
            log.warning(
                "Dropped %s._target_=%r from the logged config: a rerun instantiates nothing it names.",
                key,
                value["_target_"],
            )
        return {k: _inert(v, f"{key}.{k}") for k, v in value.items() if k != "_target_"}
    if isinstance(value, list):
        return [_inert(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        raise UserError(
            f"The run's logged config sets {key}={value!r}, an interpolation, which a rerun from a remote "
            "config does not resolve: it could read this machine's environment (its tokens) into the new "
            "run. dpo-lab logs resolved values, so someone edited this one: put the config you mean in a "
            "directory's config.yaml and rerun that (python -m dpo_lab rerun DIR)."
        )
    return value


def new_rerun_dir(job_dir: str) -> str:
    """A fresh `job_dir`/reruns/<time>/, made here: two reruns started in the same second get <time> and <time>-2
    (os.mkdir either makes the directory or fails, so they cannot both take one)."""
    base = os.path.join(job_dir, "reruns", time.strftime("%Y-%m-%d_%H-%M-%S"))
    try:
        os.makedirs(os.path.dirname(base), exist_ok=True)
        for n in itertools.count(1):
            path = base if n == 1 else f"{base}-{n}"
            try:
                os.mkdir(path)
                return path
            except FileExistsError:
                continue
    except OSError as e:
        reruns = os.path.dirname(base)
        why = "a file, not a directory" if os.path.lexists(reruns) and not os.path.isdir(reruns) else e.strerror
        raise UserError(
            f"Cannot make the rerun's directory under {reruns} ({why}). Give it another place: "
            "python -m dpo_lab rerun JOB_DIR --out DIR."
        ) from None


def rerun(job_dir: str, overrides: List[str], out: Optional[str] = None) -> int:
    try:
        if job_dir.startswith("wandb:"):
            job_dir = _from_wandb(job_dir[len("wandb:") :])
        path = os.path.join(job_dir, "config.yaml")
        if not os.path.isfile(path):
            raise UserError(
                f"{job_dir} has no config.yaml, so it is not a dpo-lab job directory (one of "
                "outputs/<name>/<time>/ or multirun/<name>/<time>/<n>/)."
            )
        cfg = load_config(path, overrides)
        check_job(cfg, {})  # the preflight a run gets: a changed value a library would refuse stops here
        done = _check_out(out, cfg) if out else None
        out = out or new_rerun_dir(job_dir)
    except UserError as e:
        log.error("%s", e)
        return EXIT_USER_ERROR
    if done:
        log.info("%s already holds this rerun, completed; not running it again.", out)
        _compare(read_json(os.path.join(job_dir, "result.json")) or {}, done)
        return EXIT_OK
    meta = read_json(os.path.join(job_dir, "job.json")) or {
        "name": "rerun",
        "group": None,
        "overrides": [],
        "choices": {},
    }
    prepare(
        cfg,
        out,
        name=rerun_name(meta["name"], overrides),
        group=meta["group"],
        overrides=meta["overrides"] + list(overrides),
        choices=meta["choices"],
    )
    setup_logging(out)  # the rerun's log goes to its own train.log too
    _warn_on_version_drift(job_dir, out)
    result = launch(out, TRAIN, isolate=False, cfg=cfg)
    _compare(read_json(os.path.join(job_dir, "result.json")) or {}, result)
    return exit_code(result)


def _check_out(out: str, cfg) -> Optional[Dict[str, Any]]:
    """`--out DIR` may be new, empty, or hold this very rerun (same resolved config: it then resumes, or is done, as
    a relaunch is); anything else in it is someone's results, so UserError, and nothing in DIR changes. Returns the
    saved result when DIR already completed this rerun."""
    fix = "Give the rerun another --out DIR, or leave --out out (the rerun then goes to JOB_DIR/reruns/<time>/)."
    if not os.path.lexists(out):
        return None
    if not os.path.isdir(out):
        raise UserError(f"--out {out} is a file, not a directory. {fix}")
    if os.path.isfile(os.path.join(out, CONFIG)):
        check_free(out)  # a process training there: its files are not ours to rewrite
        return completed_result(cfg, out, fix)
    found = sorted(os.listdir(out))
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise UserError(
            f"--out {out} is not empty ({shown}) and holds no dpo-lab job, so the rerun would mix its files with "
            f"these; nothing in it was changed. {fix}"
        )
    return None


def rerun_name(name: str, overrides: List[str]) -> str:
    """`loss=sigmoid,beta=0.1,lr=1e-5 (rerun)`: the original's name with what the rerun changed; an override of a key
    the name holds replaces it there."""
    parts = [] if name in ("default", "rerun") else name.removesuffix(" (rerun)").split(",")
    for override in overrides:
        key = override.split("=", 1)[0]
        same = [i for i, part in enumerate(parts) if part.split("=", 1)[0] == key]
        if same:
            parts[same[0]] = override
        else:
            parts.append(override)
    return f"{','.join(parts) or 'default'} (rerun)"


def _warn_on_version_drift(old_dir: str, new_dir: str) -> None:
    old, new = read_json(os.path.join(old_dir, "run_info.json")), read_json(os.path.join(new_dir, "run_info.json"))
    if not old or not new:
        return
    drift = {k: (v, new["versions"].get(k)) for k, v in old["versions"].items() if new["versions"].get(k) != v}
    if drift:
        log.warning("Package versions differ from the original run, so results may too: %s", drift)
    if old.get("git") and new.get("git") and old["git"]["commit"] != new["git"]["commit"]:
        log.warning(
            "Code differs: original ran at commit %s, this at %s.", old["git"]["commit"][:10], new["git"]["commit"][:10]
        )


def _compare(original: dict, result: dict) -> None:
    keys = [k for k in original if k.startswith("eval/") and isinstance(original[k], (int, float)) and k in result]
    if not keys:
        return
    lines = [f"{'metric':32} {'original':>12} {'rerun':>12} {'|diff|':>10}"]
    for k in keys:
        lines.append(f"{k:32} {original[k]:12.6f} {result[k]:12.6f} {abs(original[k] - result[k]):10.2e}")
    worst = max(abs(original[k] - result[k]) for k in keys)
    lines.append(f"largest difference: {worst:.2e}" + ("" if math.isfinite(worst) else " (non-finite)"))
    log.info("Rerun vs original:\n%s", "\n".join(lines))
