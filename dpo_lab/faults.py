"""What went wrong with a job, in the user's terms: each fault becomes a status and one paragraph that says what to do.

    completed    trained, evaluated and saved
    failed       a user mistake (UserError), a full disk, or a bug (then the log has the traceback and says so)
    diverged     the loss or gradient norm became NaN/inf; stopped at that step, before any save or sample
    oom          out of memory (CUDA, or a MemoryError on the host)
    killed       the job's process died from a signal it could not catch (kill -9, the kernel's OOM killer)
    interrupted  stopped by Ctrl-C or SIGTERM; its last checkpoint is kept and a relaunch resumes from it

Every status but `completed` leaves the job's last complete checkpoint in place, so relaunching the same command
resumes it (checkpoints.py steps back past a checkpoint a fault cut short).
"""

import errno
import signal
import threading
from contextlib import contextmanager
from typing import Any, Dict, Iterator

STATUSES = ("completed", "failed", "diverged", "oom", "killed", "interrupted")

RESUME = (
    "Relaunching resumes from the last complete checkpoint (a sweep: the same command; a single run: the same "
    "command plus hydra.run.dir=<its job dir>)."
)
OOM_HINT = (
    "Lower trainer.per_device_train_batch_size (raise trainer.gradient_accumulation_steps to keep the "
    "effective batch), set trainer.activation_checkpointing=true, lower trainer.max_length, or train LoRA "
    "adapters (peft=lora)."
)


class Diverged(RuntimeError):
    """Training produced a non-finite loss or gradient norm at `step`."""

    def __init__(self, key: str, value: float, step: int):
        self.key, self.value, self.step = key, value, step
        super().__init__(
            f"{key} became {value} at step {step}; stopped before that step's update, so no checkpoint "
            "or sample holds broken weights. Lower lr (or beta), check trainer.precision (fp16 overflows "
            "where bf16 does not), or look for empty answers in the data."
        )


WRITE_ERRORS = (
    "iostream error",
    "PytorchStreamWriter",
    "file write failed",
    "No space left",
    "File too large",
    "Disk quota exceeded",
)  # how torch's and safetensors' native writers report a failed write


def _write_failed(e: BaseException) -> bool:
    """A full disk, quota or file-size limit anywhere in the exception's chain: an OSError says so by errno; torch's
    zip writer and safetensors' Rust writer only in their message (torch's without a cause: `iostream error`)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return True
        if (isinstance(e, RuntimeError) or type(e).__name__ == "SafetensorError") and any(
            w in str(e) for w in WRITE_ERRORS
        ):
            return True
        e = e.__cause__ or e.__context__
    return False


def classify(e: BaseException) -> Dict[str, Any]:
    """The result fields (status, error, ...) for an exception that ended a job; `bug` marks what a user cannot fix."""
    if isinstance(e, Diverged):
        return {
            "status": "diverged",
            "error": str(e),
            "diverged_step": e.step,
            "diverged_metric": e.key,
            "diverged_value": e.value,
        }
    name = type(e).__name__
    cpu_alloc = isinstance(e, RuntimeError) and "can't allocate memory" in str(e)  # torch's CPU allocator
    if name == "OutOfMemoryError" or isinstance(e, MemoryError) or cpu_alloc:  # torch.OutOfMemoryError: CUDA
        where = "on the GPU" if name == "OutOfMemoryError" else "in host memory"
        first_line = (str(e).splitlines() or [name])[0][:200]
        return {"status": "oom", "error": f"Out of memory {where} ({first_line}). {OOM_HINT} {RESUME}"}
    if _write_failed(e):
        return {
            "status": "failed",
            "error": f"Writing to disk failed ({name}: {str(e).splitlines()[0] if str(e) else ''}): "
            "the disk is full, or a quota or file-size limit was hit (`df -h` on the job dir). Free space (old "
            f"checkpoints; trainer.save_total_limit keeps fewer), then: {RESUME}",
        }
    return {"status": "failed", "error": f"{name}: {e}", "bug": True}


def from_exitcode(code: int) -> Dict[str, Any]:
    """The result fields for a job process that ended with `code` without recording a result."""
    if code is not None and code < 0:
        sig = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        if -code == signal.SIGKILL:
            return {
                "status": "killed",
                "error": f"The job's process was killed ({sig}), most often by the kernel's "
                f"out-of-memory killer (`dmesg | grep -i oom` says). {OOM_HINT} {RESUME}",
            }
        if -code in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            return {"status": "interrupted", "error": f"stopped by {sig}. {RESUME}"}
        return {"status": "killed", "error": f"The job's process died from {sig}. {RESUME}"}
    return {
        "status": "failed",
        "error": f"The job's process exited with code {code} without recording a result; see its train.log.",
    }


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within: SIGTERM (and SIGHUP) raise KeyboardInterrupt as Ctrl-C does, so `kill PID` stops a job or a sweep
    through the same cleanup (status `interrupted`, wandb run closed, child job stopped) instead of killing it
    mid-write. Python runs signal handlers in the main thread only; elsewhere this changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
