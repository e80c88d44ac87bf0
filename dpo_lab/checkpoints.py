"""Which of a job's checkpoints a resume may trust.

transformers writes a checkpoint file by file (weights, optimizer, scheduler, RNG states) and `trainer_state.json`
last; a kill or a full disk in between leaves a directory that `Trainer.train(resume_from_checkpoint=...)` cannot
load, and since it is the newest, every relaunch would pick it again. So `trainer_state.json` is the commit marker,
and the files before it are checked to be whole (a safetensors header that covers the file; a torch zip archive
whose central directory, written last, is there). A broken checkpoint is moved aside (kept, not deleted) and the
resume steps back to the newest complete one.
"""

import glob
import json
import logging
import os
import re
import struct
import zipfile
from typing import List, Optional, Tuple

log = logging.getLogger(__name__)

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
TRAINING_STATE = ("optimizer.pt", "scheduler.pt")  # absent when save_only_model=true
BROKEN_PREFIX = "incomplete-"


def _safetensors_whole(path: str) -> bool:
    """The header parses and its tensors end where the file ends (a cut-off write leaves it shorter)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return False
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        return 8 + n + end == size
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return False


def _torch_file_whole(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as z:  # torch.save's format; the directory at its end is written last
            return bool(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def problem(path: str) -> Optional[str]:
    """Why the checkpoint directory `path` cannot be resumed from, or None if it looks complete."""
    state = os.path.join(path, "trainer_state.json")
    try:
        with open(state) as f:
            json.load(f)
    except (OSError, ValueError):
        return "no readable trainer_state.json (the save was cut off before its last file)"
    weights = [w for w in WEIGHTS if os.path.isfile(os.path.join(path, w))]
    if not weights:
        return "no model weights"
    shards = glob.glob(os.path.join(path, "*.safetensors"))
    for shard in shards:
        if not _safetensors_whole(shard):
            return f"{os.path.basename(shard)} is truncated or corrupt"
    for name in TRAINING_STATE:
        file = os.path.join(path, name)
        if os.path.exists(file) and not _torch_file_whole(file):
            return f"{name} is truncated or corrupt"
    return None


def _newest_first(checkpoints_dir: str) -> List[str]:
    """The trainer's checkpoint-N directories (not the incomplete ones set aside), highest step first."""
    found = [p for p in glob.glob(os.path.join(checkpoints_dir, "checkpoint-*")) if re.search(r"checkpoint-\d+$", p)]
    return sorted(found, key=lambda p: int(p.rsplit("-", 1)[1]), reverse=True)


def resumable(checkpoints_dir: str) -> Tuple[Optional[str], List[Tuple[str, str]]]:
    """(the newest complete checkpoint or None, [(path, problem)] of newer broken ones, which are moved aside to
    `incomplete-checkpoint-N` so that neither a resume nor the trainer's rotation picks them up)."""
    broken, good = [], None
    for path in _newest_first(checkpoints_dir):
        reason = problem(path)
        if reason is None:
            good = path
            break
        aside = os.path.join(checkpoints_dir, BROKEN_PREFIX + os.path.basename(path))
        if os.path.exists(aside):  # an earlier cut-off save of the same step
            aside += f"-{len(glob.glob(aside + '*'))}"
        os.replace(path, aside)
        log.warning("%s is incomplete: %s. Moved it to %s.", path, reason, aside)
        broken.append((path, reason))
    if broken:
        log.warning(
            "Stepping back past %d incomplete checkpoint(s): %s.",
            len(broken),
            f"resuming from {good}" if good else "no complete checkpoint is left, so training starts over",
        )
    return good, broken


def latest(checkpoints_dir: str) -> Optional[str]:
    """The newest complete checkpoint, moving nothing (for a result's `last_checkpoint`)."""
    return next((p for p in _newest_first(checkpoints_dir) if problem(p) is None), None)
