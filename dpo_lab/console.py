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
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s", handlers=handlers, force=True)


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


def progress_callback(label: str):
    """transformers' ProgressCallback without the raw metrics dict it writes at every log: the training bar says what
    trains (`label`: the warm-up, the reward model, the DPO run's name) and the eval bar says "eval"; the last train
    loss rides on the bar, each eval prints one line (step, loss, margin, accuracy), the end of training one more."""
    from tqdm.auto import tqdm
    from transformers.trainer_callback import ProgressCallback
    from transformers.trainer_utils import has_length

    class Progress(ProgressCallback):
        # The parent's bars, made with their labels (set later, the first line drawn would have none).
        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.training_bar = tqdm(total=state.max_steps, desc=label, dynamic_ncols=True)
            self.current_step = 0

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            if state.is_world_process_zero and self.prediction_bar is None and has_length(eval_dataloader):
                self.prediction_bar = tqdm(total=len(eval_dataloader), desc="eval", leave=self.training_bar is None,
                                           dynamic_ncols=True)  # fmt: skip
            super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            nan = float("nan")
            if "eval_loss" in logs:
                tqdm.write(f"step {state.global_step}/{state.max_steps}  eval loss {logs['eval_loss']:.4g}  "
                           f"margin {logs.get('eval_rewards/margins', nan):.4g}  "
                           f"accuracy {logs.get('eval_rewards/accuracies', nan):.3g}")  # fmt: skip
            elif "train_runtime" in logs:
                tqdm.write(f"trained {state.global_step} steps in {logs['train_runtime']:.1f} s, "
                           f"mean loss {logs.get('train_loss', nan):.4g}")  # fmt: skip
            elif "loss" in logs and self.training_bar is not None:
                self.training_bar.set_postfix(loss=f"{logs['loss']:.4g}", refresh=False)

    return Progress()
