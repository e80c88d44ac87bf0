"""GPUs for jobs a launcher runs at once on one machine: `jobs_per_gpu` jobs per GPU (1: a GPU each; auto: as many
as their memory estimates fit, `auto_jobs_per_gpu`).

A job claims the first slot whose lock file it can take and keeps it until it ends; slot i is GPU i mod the GPU
count, so jobs spread over the GPUs before they share one. The launcher's other jobs wait for a free slot. With one
GPU visible every job uses it (the launcher's n_jobs says how many at once). Schedulers that already pin GPUs (SLURM
sets CUDA_VISIBLE_DEVICES) are left alone. Jobs that share a card plan their memory with their share of it
(memory.SHARE_ENV): they start at once, and each would see the others' memory as free. A job of trainer.processes
= N takes N whole GPUs of its own (slot i: GPUs i*N .. i*N + N - 1), so GPUs // N such jobs run at once.
"""

import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple

from filelock import FileLock, Timeout

from dpo_lab.memory import GB, HEADROOM, SHARE_ENV

MAX_JOBS_PER_GPU = 8  # auto's ceiling: past it a tiny job's CPU-side work, not the card, sets the pace


@contextmanager
def claim_slot(lock_dir: str, count: int, poll_s: float = 2.0, size: int = 1) -> Iterator[int]:
    """Hold one of `count` slots for the duration of the block; yields its index. Slot i holds the lock files
    gpu{i*size} .. gpu{i*size + size - 1} in `lock_dir`: a job of `size` GPUs holds each of its GPUs' locks."""
    os.makedirs(lock_dir, exist_ok=True)
    while True:
        for index in range(count):
            held = []
            for gpu in range(index * size, (index + 1) * size):
                lock = FileLock(os.path.join(lock_dir, f"gpu{gpu}.lock"))
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    break
                held.append(lock)
            if len(held) < size:
                for lock in held:
                    lock.release()
                continue
            try:
                yield index
            finally:
                for lock in held:
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
def gpu_env(lock_dir: str, jobs_per_gpu: int = 1, at_once: int = 1, processes: int = 1) -> Iterator[Optional[dict]]:
    """The environment for a job's process: pinned to a GPU with a free slot when several are visible (sharing it
    with jobs_per_gpu - 1 others), else on the one GPU with the `at_once` jobs the launcher runs together; a job of
    `processes` processes gets that many GPUs of its own (the box's GPUs // processes such jobs run at once). None:
    unchanged."""
    count = visible_gpu_count()
    if processes > 1:
        if count < processes:  # CPU processes, or GPUs the scheduler pinned: the launch group uses what it sees
            yield None
            return
        with claim_slot(lock_dir, count // processes, size=processes) as index:
            gpus = range(index * processes, (index + 1) * processes)
            yield {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))}
        return
    if count < 2:
        yield {**os.environ, SHARE_ENV: str(1 / at_once)} if at_once > 1 else None
        return
    with claim_slot(lock_dir, count * jobs_per_gpu) as index:
        yield {**os.environ, "CUDA_VISIBLE_DEVICES": str(index % count), SHARE_ENV: str(1 / jobs_per_gpu)}


def card_memory() -> List[Tuple[float, float]]:
    """(free, total) bytes of each GPU nvidia-smi lists, in CUDA_VISIBLE_DEVICES' order where it is set; [] without
    nvidia-smi. Read without CUDA, so the sweep's own process holds no CUDA context."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.free,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    cards = [tuple(float(x) * 2**20 for x in line.split(",")) for line in out.strip().splitlines() if line.strip()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        picked = [int(i) for i in visible.split(",") if i.strip().isdigit() and int(i) < len(cards)]
        cards = [cards[i] for i in picked]
    return cards


def auto_jobs_per_gpu(estimates: Sequence[Optional[float]], cards: List[Tuple[float, float]]) -> Tuple[int, str]:
    """jobs_per_gpu=auto: (how many jobs share each GPU, why): as many of the largest job's estimate (bytes) as fit
    HEADROOM of the fullest card's free memory, 1 .. MAX_JOBS_PER_GPU, at most the jobs per GPU there are."""
    if not cards:
        return 1, "auto: no GPU visible (nvidia-smi lists none), 1"
    if not estimates or any(e is None for e in estimates):
        return 1, "auto: 1, as not every job's memory could be estimated before it starts (its model is not here yet)"
    free = min(f for f, _ in cards)
    largest = max(estimates)
    fit = int(HEADROOM * free // largest) if largest > 0 else MAX_JOBS_PER_GPU
    per_gpu = -(-len(estimates) // len(cards))  # jobs each GPU gets when they spread
    n = max(1, min(fit, MAX_JOBS_PER_GPU, per_gpu))
    return n, (
        f"auto: {n} (the largest job's estimate {largest / GB:.3g} GB fits {fit} times in {HEADROOM:.0%} of "
        f"{free / GB:.1f} GB free; at most {MAX_JOBS_PER_GPU}, and {len(estimates)} job(s) on {len(cards)} GPU(s))"
    )
