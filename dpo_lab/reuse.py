"""What the jobs of a sweep compute once and share: the tokenized data and the reference model's log-probs.

Both are cache artifacts (cache.py: `$DPO_LAB_CACHE/<kind>-<hash>`, written to a temp dir and renamed, so a killed
job leaves none half-written) keyed by everything that changes them, so any later job or rerun with the same inputs
loads them instead of computing them again:

    tokens-*      TRL's tokenized rows: the rows' content, the tokenizer (vocabulary, chat template), max_length and
                  truncation_mode (TRL drops rows whose prompt fills max_length), TRL's version
    ref-logps-*   per-pair reference log-probs: the reference weights (LoRA: the base without the adapter, so LoRA
                  jobs share with each other and with full fine-tuning in the same dtype), the token ids, max_length,
                  truncation_mode, ld_alpha, autocast dtype, device type, attention implementation, TRL's version

TRL's own `precompute_ref_log_probs` cache cannot hit across a sweep: its key includes the fingerprint of a `filter`
whose closure captures the whole DPOConfig (beta, lr, output_dir), and in-memory datasets get random fingerprints.
The hooks below sit on TRL's `_prepare_dataset` / `_precompute_ref_logps` and call them on a miss, so what is
computed is exactly what TRL computes.

One process waits under a file lock while another builds an artifact; under torchrun / accelerate launch the ranks
follow rank 0's view of the cache (a computation takes every rank), rank 0 writes it, and every rank reads it back.
In a cache the job cannot write (a shared read-only one), a hit is read as usual and a miss is computed in the job,
unshared, with one warning line.
"""

import contextlib
import hashlib
import json
import logging
from typing import Any, Callable, Dict, Tuple

from dpo_lab import cache

log = logging.getLogger(__name__)

TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
LOGP_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
_said_unshared = False  # an unwritable cache is said once per process, not once per split and kind


def _hash_table(dataset, columns=None) -> str:
    """Content hash of `columns` (all if None) of a datasets.Dataset, rows in order (any indices mapping applied).
    Not datasets' Hasher: it pickles a memory-mapped table as its file path, so a loaded copy would hash apart."""
    import pyarrow as pa

    table = (dataset.select_columns(list(columns)) if columns else dataset).with_format("arrow")[:]
    h = hashlib.sha256()
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        h.update(f"{name}:{column.type}".encode())
        if pa.types.is_list(column.type) and pa.types.is_integer(column.type.value_type):  # token ids: as arrays
            h.update(column.value_lengths().to_numpy(zero_copy_only=False).tobytes())
            h.update(column.flatten().to_numpy(zero_copy_only=False).tobytes())
        else:  # text, chat messages: as JSON
            h.update(json.dumps(column.to_pylist(), sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def weights_hash(trainer) -> str:
    """Hash of the reference's weights: TRL's frozen copy, or the policy before training with any LoRA adapter left
    out (the adapter-disabled base is LoRA's reference). Names lose peft's prefixes so a LoRA job keys like full
    fine-tuning from the same weights in the same dtype."""
    import torch
    from accelerate.utils import is_peft_model

    model = trainer.accelerator.unwrap_model(trainer.ref_model or trainer.model)
    state = model.state_dict()
    if is_peft_model(model):
        state = {
            k.replace("base_model.model.", "", 1).replace(".base_layer", ""): v
            for k, v in state.items()
            if "lora_" not in k
        }
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        tensor = tensor.detach().cpu()
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update((tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy().tobytes())
    return h.hexdigest()


def _shared(acc, kind: str, params: Dict[str, Any], compute: Callable[[], Any]) -> Tuple[Any, str]:
    """The cached dataset for `params`, or `compute()`'s, cached now: (dataset, "reused" | "computed"). `acc`: the
    run's accelerate PartialState (TrainingArguments.distributed_state)."""
    from accelerate.utils import broadcast_object_list
    from datasets import load_from_disk
    from filelock import FileLock

    global _said_unshared
    out = cache.path(kind, params)
    # The ranks follow rank 0's view of the cache. A hit takes no lock, so a shared read-only cache serves it.
    hit, can_write = [cache.done_params(out) == params], [cache.writable(out.parent)]
    broadcast_object_list(hit)
    broadcast_object_list(can_write)
    if hit[0]:
        cache.touch(out)
    elif not can_write[0]:
        if not _said_unshared:
            _said_unshared = True
            log.warning(
                "DPO_LAB_CACHE=%s cannot be written: this job computes its tokenized data and reference log-probs "
                "itself, without sharing them with later jobs.",
                out.parent,
            )
        return compute(), "computed"
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        # Rank 0 holds the lock: another job building the same artifact is waited for, and a prune leaves this build
        # alone. The other ranks cannot queue on it one by one (a computation is collective): they follow rank 0.
        with FileLock(f"{out}.lock") if acc.is_main_process else contextlib.nullcontext():
            hit = [cache.done_params(out) == params]
            broadcast_object_list(hit)
            if not hit[0]:
                data = compute()
                if acc.is_main_process:
                    cache.build(out, params, lambda tmp: data.save_to_disk(str(tmp / "data")))
                acc.wait_for_everyone()
    # Every rank reads the artifact, computed or not: a computed dataset's files sit in its own process's temp dir,
    # and TRL's reference log-probs cache (written by rank 0 beside the dataset's files) must be one all ranks open.
    # In a cache this job cannot write, datasets' own cache files (a map or flatten of the loaded rows) go to memory.
    return load_from_disk(str(out / "data"), keep_in_memory=not can_write[0]), "reused" if hit[0] else "computed"


def tokenized(dataset, tokenizer, args, name: str, compute: Callable[[], Any]):
    """TRL's prepared (tokenized, filtered) `dataset`, from the cache when a job already prepared the same rows."""
    import trl
    from datasets.fingerprint import Hasher

    params = {
        "split": name,
        "rows": _hash_table(dataset),
        "tokenizer": Hasher.hash(tokenizer),
        "max_length": args.max_length,
        "truncation_mode": args.truncation_mode,
        "trl": trl.__version__,
    }
    data, how = _shared(args.distributed_state, "tokens", params, compute)
    log.info("Tokenized %s data (%d rows): %s.", name, len(data), how)
    return data


def reference_logps(trainer, dataset, name: str, compute: Callable[[Any], Any]):
    """`dataset` with TRL's ref_chosen_logps / ref_rejected_logps columns, computed once per key (module docstring).
    `compute(dataset)`: TRL's own precompute."""
    import trl
    from datasets import concatenate_datasets

    if not hasattr(trainer, "_reference_weights"):  # once per trainer: hashing reads every weight
        trainer._reference_weights = weights_hash(trainer)
    params = {
        "split": name,
        "weights": trainer._reference_weights,
        "tokens": _hash_table(dataset, TOKEN_COLUMNS),
        "max_length": trainer.args.max_length,
        "truncation_mode": trainer.args.truncation_mode,
        "ld_alpha": trainer.ld_alpha,
        "autocast": trainer.accelerator.mixed_precision,
        "device": trainer.accelerator.device.type,
        "trl": trl.__version__,
        "attention": trainer.accelerator.unwrap_model(trainer.model).config._attn_implementation,
    }
    # TRL caches its result beside the dataset's files, keyed by the dataset's fingerprint and its own model hash,
    # which miss ld_alpha, autocast and more: under our full key as the fingerprint, its file can only be a true hit.
    keyed = dataset.select(range(len(dataset)), new_fingerprint=cache.path("ref-logps", params).name)
    columns, how = _shared(
        trainer.args.distributed_state, "ref-logps", params, lambda: compute(keyed).select_columns(list(LOGP_COLUMNS))
    )
    trainer.reference_logps[name] = how
    out = cache.path("ref-logps", params)
    log.info(
        "Reference log-probs of the %s data (%d pairs): %s (%s).",
        name,
        len(columns),
        how,
        out if out.exists() else "not shared: the cache cannot be written",
    )
    return concatenate_datasets(
        [dataset.select_columns([c for c in dataset.column_names if c not in LOGP_COLUMNS]), columns], axis=1
    )


def status(trainer) -> str:
    """`live` (a reference forward at every step), `reused` (every split's log-probs loaded), `computed`, or `none`
    (a reference-free method)."""
    if not trainer.method.reference:
        return "none"
    if not trainer.args.precompute_ref_log_probs:
        return "live"
    return "reused" if set(trainer.reference_logps.values()) == {"reused"} else "computed"
