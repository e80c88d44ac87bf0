"""What dpo-lab adds to every method's TRL trainer (`LabTrainer`, a mixin), and the class that puts it over the
chosen method's trainer (`trainer_class`)."""

import os
from typing import Dict, Optional

import torch
from accelerate.utils import is_peft_model

from trl.trainer.utils import generate_model_card

from dpo_lab import perf, reuse
from dpo_lab.methods import trl_classes
from dpo_lab.methods.base import Method


class LabTrainer:
    """Mixed in before the method's TRL trainer: what a sweep shares (reuse.py: tokenized data and reference
    log-probs), the cost counters (`reference_batches`, `meter`: tokens, padding, tokens/s and MFU in this process,
    and transformers' checkpointed `state.num_input_tokens_seen`), the β-free and `perf/` metrics in `log`, the
    length-grouped sampler (trainer.group_by_length), the step loss for callbacks.StepGuard, and one model card,
    written by `model_card` into final/. TRL writes its card into checkpoints/ at every save, names no base model
    when that is a local checkpoint ("fine-tuned version of [None]"), and reads the wandb run's URL, which warns at
    every save of an offline run."""

    method: Method  # set by trainer_class

    def __init__(self, *args, **kwargs):
        self.reference_logps: Dict[str, str] = {}  # split -> computed | reused (filled during TRL's __init__)
        self.reference_batches = 0  # batches the reference model scored: precomputed or live
        self.meter = perf.Meter()  # this process's tokens (state.num_input_tokens_seen: since step 0)
        self.step_loss = None  # this optimizer step's loss, summed over micro-batches, for the step guard
        super().__init__(*args, **kwargs)
        a = self.args
        compute = "bfloat16" if a.bf16 else "float16" if a.fp16 else str(next(self.model.parameters()).dtype)[6:]
        live = self.method.reference and not getattr(a, "precompute_ref_log_probs", False)
        peak = perf.peak_flops(str(a.device), compute)
        self.meter.flops_per_token = perf.flops_per_token(perf.base_params(self.model), is_peft_model(self.model), live)
        self.meter.peak = peak * a.world_size if peak else None  # the meter counts every rank's tokens

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.step_loss = loss.detach() if self.step_loss is None else self.step_loss + loss.detach()
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.method.reference and not self.args.precompute_ref_log_probs:  # TRL runs the reference on this batch
            self.reference_batches += 1
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _track_num_input_tokens(self, inputs):
        """Count the batch's tokens (transformers counts only an `input_ids`/`attention_mask` batch, which CPO's
        and ORPO's are not) into the checkpointed state.num_input_tokens_seen, and its padded size into the meter."""
        masks = [inputs[k] for k in self.method.token_masks]
        real = sum(m.sum() for m in masks)  # on the batch's device: accelerate's dataloader already moved it
        counts = torch.stack([real, torch.tensor(sum(m.numel() for m in masks), device=real.device)])
        n, padded = self.accelerator.gather(counts.to(self.args.device)).view(-1, 2).sum(0).tolist()
        self.state.num_input_tokens_seen += n
        self.meter.count(n, padded)

    def _get_train_sampler(self, train_dataset=None):
        """trainer.group_by_length: transformers' LengthGroupedSampler, given each row's length (a preference row
        has no input_ids for it to count); eval is grouped too, as transformers does, with its seeded generator."""
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        dataset = self.train_dataset if train_dataset is None else train_dataset
        return _grouped(dataset, self.args.train_batch_size * self.args.gradient_accumulation_steps)

    def _get_eval_sampler(self, eval_dataset):
        if self.args.train_sampling_strategy != "group_by_length" or eval_dataset is None:
            return super()._get_eval_sampler(eval_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return _grouped(eval_dataset, self.args.eval_batch_size, torch.Generator().manual_seed(seed))

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        compute = lambda: super(LabTrainer, self)._prepare_dataset(dataset, processing_class, args, dataset_name)  # noqa: E731
        if not self.method.shares:
            return compute()
        return reuse.tokenized(dataset, processing_class, args, dataset_name, compute)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        compute = lambda ds: super(LabTrainer, self)._precompute_ref_logps(ds, name, batch_size)  # noqa: E731
        if not self.method.shares:
            return compute(dataset)
        return reuse.reference_logps(self, dataset, name, compute)

    def compute_ref_log_probs(self, model, inputs):
        self.reference_batches += 1
        return super().compute_ref_log_probs(model, inputs)

    def create_model_card(self, *args, **kwargs):
        pass  # the per-checkpoint card: see the class docstring

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        """Add the method's β-free metrics (its `derive`) to what TRL averages and logs, and to a training log the
        `perf/` metrics since the last one (perf.Meter)."""
        self.method.derive(self, self.model.training)
        if "loss" in logs:
            logs.update(self.meter.interval())
        super().log(logs, start_time)

    def model_card(self, out_dir: str, base_model: str, run) -> None:
        if not self.is_world_process_zero():
            return
        card = generate_model_card(
            base_model=base_model,
            model_name=os.path.basename(os.path.dirname(os.path.abspath(out_dir))),
            hub_model_id=os.path.abspath(out_dir),
            dataset_name=None,
            tags=list(getattr(self, "_tag_names", [])),
            wandb_url=run.url if run is not None and not run.offline else None,
            trackio_url=None,
            trainer_name=getattr(self, "_name", self.method.title),
            trainer_citation=getattr(self, "_paper", {}).get("citation"),
            template_file=getattr(self, "_template_file", None),
            paper_title=getattr(self, "_paper", {}).get("title"),
            paper_id=getattr(self, "_paper", {}).get("id"),
        )
        if os.path.isdir(base_model):  # the template links huggingface.co/<base>: name the local checkpoint
            card.text = card.text.replace(
                f"[{base_model}](https://huggingface.co/{base_model})", f"the local checkpoint `{base_model}`"
            )
        card.save(os.path.join(out_dir, "README.md"))


def _grouped(dataset, batch_size: int, generator=None):
    """A LengthGroupedSampler over `dataset`, a row's length being the sum of its token columns (*_ids)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    columns = [dataset[c] for c in dataset.column_names if c.endswith("_ids")]
    lengths = [sum(map(len, row)) for row in zip(*columns)]
    return LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)


def trainer_class(method: Method) -> type:
    """`LabTrainer` over the method's TRL trainer class (imported now: experimental ones only when chosen)."""
    base = trl_classes(method)[1]
    return type(f"Lab{base.__name__}", (LabTrainer, base), {"method": method, "__module__": __name__})
