"""dpo-lab entry point: one trl.DPOTrainer run per composed config.

    python run.py                                   # the default job (tiny model, toy data, offline wandb)
    python run.py -m loss=sigmoid,ipo beta=0.1,0.5  # a sweep: one job (and one wandb run) per combination
"""

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from dpo_lab.config import register_configs
from dpo_lab.job import launch, prepare

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = list(hc.overrides.task)
    group = cfg.wandb.group or (f"{cfg.name}-{os.path.basename(os.path.normpath(hc.sweep.dir))}" if multirun else None)
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and v is not None}
    job_dir = hc.runtime.output_dir
    prepare(cfg, job_dir, name=",".join(overrides) or "default", group=group, overrides=overrides, choices=choices)
    # A fresh process per job keeps a sweep's jobs from leaking memory or state into each other.
    result = launch(job_dir, isolate=cfg.isolate == "always" or (cfg.isolate == "auto" and multirun))
    if not multirun and result["status"] != "completed":
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
