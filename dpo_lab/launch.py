"""Where a job runs: in this process, or in a fresh one per job. A fresh process is how a sweep stays clean (no
memory, CUDA context, wandb run or cache survives from one job to the next); forking it from a server that already
imported the training stack makes it start in about a second."""

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Optional, Tuple, Union

from omegaconf import DictConfig

from dpo_lab import checkpoints, distributed, faults, files
from dpo_lab.errors import EXIT_BUSY, EXIT_FAILED, EXIT_INTERRUPTED
from dpo_lab.job import Task, execute, exit_code
from dpo_lab.jobdir import JobBusy, load_config

log = logging.getLogger(__name__)


# What every job imports. A fork server (multiprocessing's forkserver) imports them once, before anything touches
# CUDA, and forks each job's process from itself: a fresh process per job without paying ~7 s of imports each time.
PRELOAD = [
    "torch",
    "transformers",
    "datasets",
    "peft",
    "accelerate",
    "wandb",
    "trl.trainer.dpo_trainer",
    "dpo_lab.train",
]
STOP_GRACE_S = 30  # after Ctrl-C, how long a job may take to record its status and close wandb before SIGTERM


def cpu_threads(concurrent: int) -> Optional[int]:
    """torch threads for each of `concurrent` jobs sharing this machine's cores (None: one job, torch's default;
    `concurrent` <= 0, joblib's n_jobs=-1: one job per core)."""
    cores = len(os.sched_getaffinity(0))
    concurrent = concurrent if concurrent > 0 else cores
    return None if concurrent == 1 else max(1, cores // concurrent)


def _context(start_method: str):
    import multiprocessing

    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        # torch's CUDA check through NVML creates no CUDA context, so the server stays safe to fork from.
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _start(proc, start_method: str) -> None:
    """Start `proc` with this process's default start method set to `start_method` meanwhile: the child is told
    the parent's default, and under Hydra's joblib launcher that is loky's, which a plain child cannot set up."""
    import multiprocessing

    start_server(start_method)  # unless started already: how it starts matters (SIGINT)
    current = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method(start_method, force=True)
    try:
        proc.start()
    finally:
        multiprocessing.set_start_method(current, force=True)


def start_server(start_method: str) -> None:
    """Start the fork server now: it imports PRELOAD in the background, ready for the first job (no-op for spawn).
    It starts with SIGINT ignored (inherited through its exec), so a Ctrl-C meant for the sweep does not end it
    mid-import with a traceback; multiprocessing sets its own handlers only after the preload, and each job sets
    its own (_child)."""
    if start_method != "forkserver":
        return
    import threading
    from multiprocessing import forkserver

    _context(start_method)
    if threading.current_thread() is not threading.main_thread():  # signal handlers are the main thread's
        forkserver.ensure_running()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)


def stop_server() -> None:
    """Stop a fork server this process started, at once: left alone it lives on until its preload is imported,
    seconds after a stopped or failed preflight has ended the sweep."""
    from multiprocessing import forkserver

    server = forkserver._forkserver  # multiprocessing's own instance; it has no public stop
    if server._forkserver_pid is None:
        return
    try:
        os.kill(server._forkserver_pid, signal.SIGKILL)  # it holds nothing yet: no job was forked from it
    except ProcessLookupError:
        pass
    server._stop()  # closes its pipe, reaps it, removes its socket


def _child(
    job_dir: str, task: Union[str, Task], env: Dict[str, str], threads: Optional[int], parent: int, sigint: bool
) -> None:
    """A job's process: this job's environment, log file and CPU threads, then `execute`; its exit status
    (job.exit_code). Ctrl-C stops it as Ctrl-C stops its launcher (`sigint`: the launcher does not ignore SIGINT),
    whatever the fork server it came from ignores."""
    signal.signal(signal.SIGINT, signal.default_int_handler if sigint else signal.SIG_IGN)
    os.environ.clear()
    os.environ.update(env)
    from dpo_lab import console

    console.setup_logging(job_dir)
    import torch

    if torch.cuda._is_in_bad_fork():  # CUDA was initialised before the fork: it would fail at the first CUDA call
        log.error(
            "This job was forked from a process that had initialised CUDA. Run the sweep with start_method=spawn."
        )
        sys.exit(EXIT_FAILED)
    stop_with(parent)
    _use_threads(threads)
    try:
        sys.exit(exit_code(execute(job_dir, task)))
    except KeyboardInterrupt:  # recorded as `interrupted` by execute
        sys.exit(EXIT_INTERRUPTED)
    except JobBusy as e:
        log.error("%s", e)
        sys.exit(EXIT_BUSY)


def _stop(proc, grace_s: float) -> None:
    """Stop a job (a multiprocessing Process, or a launch group's Popen): a Ctrl-C in the terminal reached it too (one
    process group), so it gets `grace_s` to record `interrupted` and close its wandb run before the SIGTERM, which
    would cut that short; a job still running then (or at once, grace 0: the sweep itself was sent SIGTERM) gets the
    SIGTERM and ends the same way (accelerate's launcher passes it to every rank)."""
    if isinstance(proc, subprocess.Popen):
        join, alive = (lambda t=None: _wait(proc, t)), (lambda: proc.poll() is None)
    else:
        join, alive = proc.join, proc.is_alive
    try:
        join(grace_s)
    except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
        pass
    if alive():
        proc.terminate()
    join()


def _wait(proc: subprocess.Popen, timeout: Optional[float]) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass


def stop_with(parent: int) -> None:
    """Stop this job (SIGTERM to itself: `interrupted`, checkpoints kept) when the sweep process `parent` is gone,
    e.g. killed with -9: a job must not train on as an orphan in a dir a relaunch will want. A watcher thread, as
    the kernel's parent-death signal would fire on the fork server's death, which the job itself keeps alive."""
    import signal
    import threading

    import psutil

    def watch():
        while True:
            try:
                if psutil.Process(parent).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(1)
        log.error("The sweep process (pid %d) is gone; stopping this job.", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-sweep", daemon=True).start()


def _use_threads(threads: Optional[int]) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def launch(
    job_dir: str,
    task: Union[str, Task],
    isolate: bool,
    cfg: Optional[DictConfig] = None,
    meta: Optional[Dict[str, Any]] = None,
    start_method: str = "forkserver",
    threads: Optional[int] = None,
    jobs_per_gpu: int = 1,
    at_once: int = 1,
) -> Dict[str, Any]:
    """Run a prepared job and return its result: here, or (`isolate`) in a process of its own, started by
    `start_method` (forkserver: forked from a server that preloaded PRELOAD; spawn: a fresh interpreter), with
    `threads` CPU threads for torch (None: torch's default), on a GPU of its own or shared by `jobs_per_gpu` jobs (one
    visible GPU: by the `at_once` jobs the launcher runs together; gpus.gpu_env). A job of trainer.processes > 1 runs
    as an `accelerate launch` group (distributed.py) on GPUs of its own, whatever `isolate` says."""
    cfg = cfg if cfg is not None else load_config(os.path.join(job_dir, files.CONFIG))
    processes = 1 if distributed.in_launch() else distributed.world_size(cfg.trainer)
    if not isolate and processes == 1:
        _use_threads(threads)
        try:
            return execute(job_dir, task, cfg, meta)
        except JobBusy as e:
            log.error("%s", e)
            return {"status": "failed", "error": str(e), "job_dir": job_dir}
    from dpo_lab.gpus import gpu_env

    locks = os.path.join(os.path.dirname(os.path.abspath(job_dir)), ".gpu-locks")
    per_node = int(cfg.trainer.processes)
    with gpu_env(locks, jobs_per_gpu, at_once, per_node) as env:
        # WANDB_SERVICE would attach the job to a wandb service an earlier wandb user in this process tree started,
        # whose runs outlive their jobs: a job relaunched after a kill then finds its run id "in use". Own service.
        env = {k: v for k, v in (env or os.environ).items() if k != "WANDB_SERVICE"}
        if processes > 1:
            node = distributed.node(cfg.trainer)
            exitcode, failed_first = _run_group(job_dir, cfg, node, env, threads)
            if node.rank > 0:  # node 0's rank 0 records the job's result
                return files.read_json(os.path.join(job_dir, files.RESULT)) or {}
        else:
            exitcode, failed_first = _run_process(job_dir, task, env, threads, start_method), None
    if exitcode == EXIT_BUSY:
        return {
            "status": "failed",
            "error": f"{job_dir} is in use by another process; not started.",
            "job_dir": job_dir,
        }
    path = os.path.join(job_dir, files.RESULT)
    result = files.read_json(path) or {}
    if failed_first and result.get("status") != "completed" and (failed_first[0] > 0 or failed_first[1] < 0):
        # another rank died first (or rank 0 was killed): what rank 0 recorded, if anything, is the aftermath
        rank, code = failed_first
        what = (
            faults.from_exitcode(code)
            if code < 0
            else {
                "status": "failed",
                "error": f"It exited with code {code}: its [rank {rank}] lines in train.log say why.",
            }
        )
        result.update(
            status=what["status"],
            error=f"Rank {rank} of the job's {processes} processes ended first, and accelerate stopped the others. "
            + what["error"],
            job_dir=job_dir,
        )
    elif result.get("status") in (None, "running"):  # killed (OOM killer, kill -9) before it could record anything
        result.update(faults.from_exitcode(exitcode), job_dir=job_dir)
    else:
        return result
    if not result.get("last_checkpoint"):  # what a relaunch resumes from, as execute records it
        result["last_checkpoint"] = checkpoints.latest(os.path.join(job_dir, "checkpoints"))
    log.error("Job %s: %s", result["status"], result["error"])
    files.write_json(path, result)
    return result


def _run_process(job_dir: str, task: Union[str, Task], env: Dict[str, str], threads, start_method: str) -> int:
    """Run the job in a process of its own (forked from the server, or spawned); its exit code."""
    proc = _context(start_method).Process(
        target=_child,
        args=(job_dir, task, env, threads, os.getpid(), signal.getsignal(signal.SIGINT) is not signal.SIG_IGN),
        name=f"job {job_dir}",
    )
    with faults.sigterm_interrupts():  # `kill` on the sweep stops its job through the same path as Ctrl-C
        _start(proc, start_method)
        try:
            proc.join()
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP to the sweep (sigterm_interrupts names it)
            _stop(proc, 0 if e.args else STOP_GRACE_S)
            raise
    return proc.exitcode


def _run_group(
    job_dir: str, cfg: DictConfig, node: distributed.Node, env: Dict[str, str], threads: Optional[int]
) -> Tuple[int, Optional[Tuple[int, int]]]:
    """Run the job as this node's `accelerate launch` group (distributed.Node.command): (its exit code, (local rank,
    exit code) of the rank that failed first, or None). The ranks run `python -m dpo_lab execute JOB_DIR`, stop with
    this process (SWEEP_PID_ENV) and share its `threads`."""
    t = cfg.trainer
    env = {**env, distributed.SWEEP_PID_ENV: str(os.getpid())}
    if threads or "OMP_NUM_THREADS" not in env:  # torchrun would set 1 thread per rank
        cores = threads or len(os.sched_getaffinity(0))
        env[distributed.THREADS_BEFORE_ENV] = env.get("OMP_NUM_THREADS", "")
        env["OMP_NUM_THREADS"] = str(max(1, cores // int(t.processes)))
    log.info(
        "Job %s: %d processes (%s%s) on %s, rendezvous %s:%d",
        job_dir,
        distributed.world_size(t),
        t.distributed,
        f", node {node.rank} of {node.count}" if node.count > 1 else "",
        f"GPUs {env['CUDA_VISIBLE_DEVICES']}" if env.get("CUDA_VISIBLE_DEVICES") else "this machine",
        node.main,
        node.port,
    )
    proc = subprocess.Popen(node.command(cfg, job_dir), env=env, stderr=subprocess.PIPE)
    failures = []  # torch's elastic agent names the rank that failed first on stderr; passed through as it comes
    tee = threading.Thread(target=_tee, args=(proc.stderr, failures), name="group-stderr", daemon=True)
    tee.start()
    with faults.sigterm_interrupts():
        try:
            proc.wait()
        except KeyboardInterrupt as e:
            _stop(proc, 0 if e.args else STOP_GRACE_S)
            raise
        finally:
            tee.join(5)
    return proc.returncode, failures[0] if failures else None


FAILED_RANK = re.compile(rb"failed \(exitcode: (-?\d+)\) local_rank: (\d+)")  # torch.distributed.elastic's line


def _tee(stream, failures: list) -> None:
    """Copy a launch group's stderr to ours as it comes (bytes: progress bars keep their carriage returns), noting
    each (local rank, exit code) the elastic agent reports failed."""
    out, tail = getattr(sys.stderr, "buffer", None), b""
    for chunk in iter(lambda: os.read(stream.fileno(), 65536), b""):
        if out is not None:
            out.write(chunk)
            out.flush()
        else:  # a stderr without bytes (pytest's capture)
            sys.stderr.write(chunk.decode(errors="replace"))
        tail = (tail + chunk)[-4096:]
        for m in FAILED_RANK.finditer(tail):
            failures.append((int(m.group(2)), int(m.group(1))))
        if FAILED_RANK.search(tail):
            tail = b""
