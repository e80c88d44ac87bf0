"""GPUs for jobs a launcher runs at once on one machine: `jobs_per_gpu` jobs per GPU (1: a GPU each).

A job claims the first slot whose lock file it can take and keeps it until it ends; slot i is GPU i mod the GPU
count, so jobs spread over the GPUs before they share one. The launcher's other jobs wait for a free slot. With one
GPU visible every job uses it (the launcher's n_jobs says how many at once). Schedulers that already pin GPUs (SLURM
sets CUDA_VISIBLE_DEVICES) are left alone.
"""

import os
import time
from contextlib import contextmanager
from typing import Iterator, Optional

from filelock import FileLock, Timeout


@contextmanager
def claim_slot(lock_dir: str, count: int, poll_s: float = 2.0) -> Iterator[int]:
    """Hold one of `count` slots (lock files in `lock_dir`) for the duration of the block; yields its index."""
    os.makedirs(lock_dir, exist_ok=True)
    while True:
        for index in range(count):
            lock = FileLock(os.path.join(lock_dir, f"gpu{index}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                yield index
            finally:
                lock.release()
            return
        time.sleep(poll_s)


def visible_gpu_count() -> int:
    """GPUs this process may use (0 when the scheduler already pinned them or there are none)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return 0
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


@contextmanager
def gpu_env(lock_dir: str, jobs_per_gpu: int = 1) -> Iterator[Optional[dict]]:
    """The environment for a job's process: pinned to a GPU with a free slot when several are visible, else
    unchanged."""
    count = visible_gpu_count()
    if count < 2:
        yield None
        return
    with claim_slot(lock_dir, count * jobs_per_gpu) as index:
        yield {**os.environ, "CUDA_VISIBLE_DEVICES": str(index % count)}
