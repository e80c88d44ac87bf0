"""Every hook dpo-lab adds to a transformers/TRL trainer, one class each: what they watch lives with its owner
(precision.DtypeReport, sampling.Sampler, tracking); these only connect it to the training loop."""

import math
import time

import psutil
import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.integrations import WandbCallback
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import has_length

from dpo_lab import faults, tracking


class StepGuard(TrainerCallback):
    """Stop at the first step whose loss or gradient norm is NaN/inf, before the optimizer applies it: a run that
    went on would save checkpoints of NaN weights and sample from them (faults.Diverged -> status `diverged`, the
    last checkpoint untouched). Across ranks the loss and norm are summed first (a NaN or inf anywhere stays one), so
    every rank stops at the same step."""

    def __init__(self, trainer):
        self.trainer = trainer  # its `step_loss`: the optimizer step's loss (methods/trainer.py)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads).float() if grads else torch.zeros(())  # clipped: NaN stays NaN
        loss, self.trainer.step_loss = self.trainer.step_loss, None
        loss = torch.zeros((), device=norm.device) if loss is None else loss.float().to(norm.device)
        both = torch.stack([loss, norm])
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(both)
        loss, norm = both.tolist()  # one host sync per optimizer step
        for key, value in (("loss", loss), ("grad_norm", norm)):
            if not math.isfinite(value):
                raise faults.Diverged(key, value, state.global_step + 1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        value = (logs or {}).get("eval_loss")
        if value is not None and not math.isfinite(value):
            raise faults.Diverged("eval_loss", value, state.global_step)


class FirstStepClock(TrainerCallback):
    """Seconds from this process's start to the training loop: imports, data, weights, reference log-probs."""

    seconds = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.seconds is None:
            self.seconds = round(time.time() - psutil.Process().create_time(), 1)


class Progress(ProgressCallback):
    """transformers' ProgressCallback without the raw metrics dict it writes at every log: the training bar says
    what trains (`label`: the warm-up, the reward model, the run's method and name) and the eval bar says "eval";
    the last train loss rides on the bar, each eval prints one line (step, loss, margin, accuracy), the end of
    training one more."""

    def __init__(self, label: str):
        super().__init__()
        self.label = label

    # The parent's bars, made with their labels (set later, the first line drawn would have none).
    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.training_bar = tqdm(total=state.max_steps, desc=self.label, dynamic_ncols=True)
        self.current_step = 0

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if state.is_world_process_zero and self.prediction_bar is None and has_length(eval_dataloader):
            self.prediction_bar = tqdm(
                total=len(eval_dataloader), desc="eval", leave=self.training_bar is None, dynamic_ncols=True
            )
        super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        nan = float("nan")
        if "eval_loss" in logs:
            tqdm.write(
                f"step {state.global_step}/{state.max_steps}  eval loss {logs['eval_loss']:.4g}  "
                f"margin {logs.get('eval_rewards/margins', nan):.4g}  "
                f"accuracy {logs.get('eval_rewards/accuracies', nan):.3g}"
            )
        elif "train_runtime" in logs:
            tqdm.write(
                f"trained {state.global_step} steps in {logs['train_runtime']:.1f} s, "
                f"mean loss {logs.get('train_loss', nan):.4g}"
            )
        elif "loss" in logs and self.training_bar is not None:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4g}", refresh=False)


class DtypeWatch(TrainerCallback):
    """Feeds a precision.DtypeReport: the first training forward's compute dtype, then the rest after one step."""

    def __init__(self, report):
        self.report = report

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.report.watch(model)

    def on_step_end(self, args, state, control, **kwargs):
        if not self.report.dtypes:
            self.report.read()


class Samples(TrainerCallback):
    """Runs a sampling.Sampler: the baseline at the start, then at every save (and eval, where asked)."""

    def __init__(self, sampler):
        self.sampler = sampler

    def on_train_begin(self, args, state, control, **kwargs):
        self.sampler.start(state.global_step)  # the baseline (step 0) and the reference's answers

    def on_save(self, args, state, control, **kwargs):
        self.sampler(state.global_step)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.sampler.s.on_eval or self.sampler.s.keep_best:
            value = self.sampler(state.global_step).get(self.sampler.metric)
            if metrics is not None and value is not None:  # what load_best_model_at_end ranks by
                metrics[f"eval_samples_{self.sampler.metric}"] = value


class TrainerLogger(WandbCallback):
    """transformers' WandbCallback, except that the TrainingArguments it logs go under `trl` in the run's config:
    merged flat (its default) they would bury ours and overwrite keys such as `max_steps` (null -> -1) or
    `run_name`, and a config read back from wandb would no longer rerun. The `perf/` metrics keep their names (the
    parent would log them as train/perf/...). Metrics, summaries and WANDB_LOG_MODEL artifacts are the parent's, each
    call guarded by tracking.safely; WANDB_WATCH is not supported."""

    def setup(self, args, state, model, **kwargs):
        self._initialized = True
        if state.is_world_process_zero and self._wandb.run is not None:
            tracking.safely(lambda: self._wandb.run.config.update({"trl": args.to_dict()}, allow_val_change=True))

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        logs = logs or {}
        perf = {k: v for k, v in logs.items() if k.startswith("perf/")}
        rest = {k: v for k, v in logs.items() if k not in perf}
        WandbCallback.on_log(self, args, state, control, model=model, logs=rest, **kwargs)
        if perf and state.is_world_process_zero and self._wandb.run is not None:
            self._wandb.log({**perf, "train/global_step": state.global_step})


for _event in ("on_train_begin", "on_train_end", "on_save", "on_predict"):  # what WandbCallback does
    setattr(TrainerLogger, _event, tracking.guarded(getattr(WandbCallback, _event)))
TrainerLogger.on_log = tracking.guarded(TrainerLogger.on_log)
