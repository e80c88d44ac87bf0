"""What a person sees in the terminal: one log format (also into the job's train.log), and training progress as a
bar plus one readable line per eval instead of transformers' raw metric dicts."""

import logging
import os
from typing import List, Optional

from dpo_lab import files


def setup_logging(job_dir: Optional[str] = None) -> None:
    handlers: List[logging.Handler] = [logging.StreamHandler()]
    if job_dir:
        handlers.append(logging.FileHandler(os.path.join(job_dir, files.LOG)))
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s", handlers=handlers, force=True
    )


def tag_rank() -> None:
    """Under torchrun / accelerate launch, start every log line with its rank: the ranks share one console (and
    train.log), and the rank that failed first is the one to read."""
    launch = files.launch_id()
    if launch is None:
        return
    prefix, make = f"[rank {os.environ.get('RANK', '0')}] ", logging.getLogRecordFactory()

    def record(*args, **kwargs):
        r = make(*args, **kwargs)
        r.msg = f"{prefix}{r.msg}"
        return r

    logging.setLogRecordFactory(record)
