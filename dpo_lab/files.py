"""What a job directory holds, and the JSON helpers every module reads and writes it with.

    <job dir>/config.yaml     the fully resolved config (what `python -m dpo_lab rerun` reads)
    <job dir>/job.json        run name, wandb group, overrides, chosen group options, wandb run id
    <job dir>/run_info.json   seed, package versions, git commit, command line
    <job dir>/result.json     status, error, final eval metrics, timings, wandb run id
    <job dir>/samples.jsonl   checkpoint samples, one row per prompt and step
    <job dir>/train.log       the job's log; wandb/, checkpoints/ and final/ beside it

The lowest module of the package: it imports nothing of dpo_lab, so anything may import it.
"""

import json
import os
from typing import Any, Dict, List, Optional

CONFIG, JOB, RUN_INFO, RESULT, SAMPLES, LOG = "config.yaml", "job.json", "run_info.json", "result.json", "samples.jsonl", "train.log"


def is_main_rank() -> bool:
    """Under `accelerate launch` / torchrun every rank runs the job; only rank 0 writes its files and logs to wandb."""
    return int(os.environ.get("RANK", "0")) == 0


def write_json(path: str, obj: Any) -> None:
    """Write `obj` atomically (rank 0 only): a killed job never leaves half a file."""
    if not is_main_rank():
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


def read_json(path: str) -> Optional[Dict[str, Any]]:
    """The object in `path`, or None if it is missing or not (yet) valid JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_jsonl(path: str) -> List[Dict[str, Any]]:
    """The rows of a JSON Lines file (samples.jsonl); empty if the file does not exist."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
