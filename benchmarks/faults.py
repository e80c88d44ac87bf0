"""Faults injected into real jobs, and what each ends in: status, message, what was kept. CPU or GPU.

    python benchmarks/faults.py [OUT_DIR]

1. Out of memory. GPU: the job runs through the same path as a sweep's (job.execute -> train) in a process whose
   GPU memory is capped at a sliver (torch.cuda.set_per_process_memory_fraction). Expected: status `oom` with the
   hint. CPU: the job's own process (isolate=always) gets SIGKILL mid-training, as from the kernel's OOM killer.
   Expected: status `killed` with the same hint.
2. Divergence: lr=1e30 (NaN gradients from the first updates). Expected: status `diverged` with step and value,
   every saved checkpoint finite.
3. SIGTERM to a training job's process mid-run, then the same command again. Expected: `interrupted`, then
   `completed` after resuming from the last checkpoint.
Prints one line per fault; exit 1 if any ends otherwise. wandb is off (GPU machines may lack it).
"""

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["experiment=tiny", "wandb.mode=disabled"]


def run(out: Path, *overrides: str, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *TINY, *overrides, f"hydra.run.dir={out}"],
        cwd=out.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )


def result(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())


OOM_CHILD = """
import sys, torch
sys.path.insert(0, {root!r})
torch.cuda.set_per_process_memory_fraction(1e-6)  # a few KB of the GPU: the first weights do not fit
from hydra import compose, initialize_config_dir
from dpo_lab.config import register_configs
from dpo_lab.job import execute
from dpo_lab.jobdir import prepare
from dpo_lab.train import train
register_configs()
with initialize_config_dir(config_dir={conf!r}, version_base="1.3"):
    cfg = compose(config_name="config", overrides={overrides!r})
prepare(cfg, {out!r}, name="oom", group=None, overrides=[], choices={{}})
print(execute({out!r}, train)["status"])
"""


def oom(out: Path) -> str:
    import torch

    if torch.cuda.is_available():
        code = OOM_CHILD.format(root=str(ROOT), conf=str(ROOT / "conf"), overrides=TINY, out=str(out))
        subprocess.run([sys.executable, "-c", code], cwd=out.parent, capture_output=True, text=True, timeout=600)
    else:  # the job in a process of its own; kill it as the OOM killer would, once it trains
        proc = run(out, "isolate=always", "max_steps=400", "trainer.save_steps=20", "trainer.eval_steps=400")
        deadline = time.time() + 600
        while not glob.glob(str(out / "checkpoints/checkpoint-*/trainer_state.json")):
            if proc.poll() is not None or time.time() > deadline:
                return f"out of memory: the job ended before its first checkpoint (exit {proc.returncode})"
            time.sleep(0.2)
        os.kill(result(out)["pid"], signal.SIGKILL)
        proc.wait(timeout=120)
    r = result(out) if (out / "result.json").exists() else {"status": "no result"}
    return f"out of memory: status {r['status']} ({str(r.get('error'))[:200]})"


def diverge(out: Path) -> str:
    run(out, "lr=1e30", "max_steps=20").wait(timeout=600)
    r = result(out)
    import torch
    from safetensors.torch import load_file

    finite = all(
        torch.isfinite(t).all()
        for f in glob.glob(str(out / "checkpoints/*/model.safetensors"))
        for t in load_file(f).values()
    )
    kept = sorted(os.path.basename(p) for p in glob.glob(str(out / "checkpoints/checkpoint-*")))
    return (
        f"divergence: status {r['status']} at step {r.get('diverged_step')} ({r.get('diverged_metric')} = "
        f"{r.get('diverged_value')}); checkpoints kept {kept}, all finite: {finite}"
    )


def sigterm(out: Path) -> str:
    args = ("max_steps=400", "trainer.save_steps=20", "trainer.eval_steps=400", "trainer.logging_steps=50")
    proc = run(out, *args)
    deadline = time.time() + 600
    while not glob.glob(str(out / "checkpoints/checkpoint-*/trainer_state.json")):
        if proc.poll() is not None or time.time() > deadline:
            return f"sigterm: the job ended before its first checkpoint (exit {proc.returncode})"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    first = result(out)
    again = run(out, *args)
    again.wait(timeout=900)
    second = result(out)
    return (
        f"sigterm: status {first['status']} (exit {proc.returncode}, last checkpoint "
        f"{os.path.basename(first.get('last_checkpoint') or 'none')}); relaunched: {second['status']}, resumed from "
        f"{os.path.basename(second.get('resumed_from') or 'none')}, {second.get('steps')} steps"
    )


def main() -> None:
    base = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="faults-")).resolve()
    base.mkdir(parents=True, exist_ok=True)
    import torch

    print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU", flush=True)
    expected = {
        "out of memory": "status oom" if torch.cuda.is_available() else "status killed",
        "divergence": "status diverged",
        "sigterm": "relaunched: completed",
    }
    failed = False
    for name, check in (("oom", oom), ("diverge", diverge), ("sigterm", sigterm)):
        started = time.time()
        line = check(base / name)
        ok = any(line.startswith(k) and v in line for k, v in expected.items())
        failed |= not ok
        print(f"{'ok  ' if ok else 'FAIL'} {line} [{time.time() - started:.0f} s]", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
