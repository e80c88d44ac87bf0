"""One DPO run the way our first user wrote it: a plain TRL script, one process per run, TRL's live reference.

    python benchmarks/plain_dpo.py --model DIR --train_file F --eval_file F --loss sigmoid --beta 0.1 --out DIR

benchmarks/sweep.py runs it once per job as the baseline a dpo-lab sweep must beat. The DPOConfig is the one a
dpo-lab job builds for the same settings with samples off (conf/trainer/default.yaml: batch 8/16, eval and save
every 50 steps, max_length 512, lr 5e-5, linear schedule with 10% warm-up, no activation checkpointing on a model
this small, bf16 autocast on CUDA), so the two must end on the same eval metrics. It writes `metrics.json` with
its final eval and its wall time.
"""

import argparse
import json
import os
import time

started = time.time()

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402


def rows(path):
    return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in json.load(open(path))])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--train_file", required=True)
    p.add_argument("--eval_file", required=True)
    p.add_argument("--loss", default="sigmoid")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max_steps", type=int, default=-1)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(a.model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    cuda = torch.cuda.is_available()
    args = DPOConfig(
        output_dir=os.path.join(a.out, "checkpoints"),
        beta=a.beta,
        loss_type=[a.loss],
        learning_rate=a.lr,
        num_train_epochs=1,
        max_steps=a.max_steps,
        seed=42,
        data_seed=42,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        eval_strategy="steps",
        eval_steps=50,
        eval_on_start=True,
        save_steps=50,
        save_total_limit=2,
        logging_steps=10,
        max_length=512,
        warmup_steps=0.1,
        lr_scheduler_type="linear",
        gradient_checkpointing=False,
        bf16=cuda,
        use_cpu=not cuda,
        report_to=[],
        disable_tqdm=True,
    )
    # The model by name: TRL loads it (fp32) and its reference copy, as TRL's scripts/dpo.py does.
    trainer = DPOTrainer(
        model=a.model,
        args=args,
        train_dataset=rows(a.train_file),
        eval_dataset=rows(a.eval_file),
        processing_class=tokenizer,
    )
    trainer.train()
    metrics = trainer.evaluate()  # the final model's eval
    trainer.save_model(os.path.join(a.out, "final"))
    metrics = {k.replace("eval_", "eval/"): v for k, v in metrics.items()}
    with open(os.path.join(a.out, "metrics.json"), "w") as f:
        json.dump({**metrics, "seconds": round(time.time() - started, 1)}, f, indent=2)


if __name__ == "__main__":
    main()
