"""What a person sees in the terminal: one log format (also into the job's train.log)."""

import logging
import os
from typing import List, Optional

from dpo_lab import files


def setup_logging(job_dir: Optional[str] = None) -> None:
    handlers: List[logging.Handler] = [logging.StreamHandler()]
    if job_dir:
        handlers.append(logging.FileHandler(os.path.join(job_dir, files.LOG)))
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s", handlers=handlers, force=True)
