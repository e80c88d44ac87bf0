"""A job on several processes: trainer.processes per node x trainer.nodes, run as one `accelerate launch` group
with TRL's accelerate config for trainer.distributed (launch.py starts it where it would start a one-process job).
This module says which command, which node this is and what cannot work; accelerate and torch.distributed do the
rest. Every rank runs `python -m dpo_lab execute JOB_DIR`; rank 0 writes the job's files and its wandb run.

Nodes: one task per node (SLURM) runs the same launcher, whose group joins the others through node 0's address and a
port taken from the SLURM job id, so every node agrees without talking first. Node 0 prepares the job dir on the
shared filesystem; the other nodes wait for it.
"""

import importlib.util
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import List

from dpo_lab.errors import UserError

# trainer.distributed -> TRL's accelerate config (trl/accelerate_configs/)
CONFIGS = {"ddp": "multi_gpu", "fsdp2": "fsdp2", "zero2": "zero2", "zero3": "zero3"}
SWEEP_PID_ENV = "DPO_LAB_SWEEP_PID"  # the ranks stop when the sweep process that started them is gone
# OMP_NUM_THREADS before the group set its per-rank share ("": unset): what a model trained for the cache gets back,
# so the warm-up a rank builds is the one a one-process job builds (thread counts change float sums)
THREADS_BEFORE_ENV = "DPO_LAB_OMP_NUM_THREADS_BEFORE"
PORTS = (29500, 9000)  # a multi-node job's rendezvous port: first + SLURM job id mod span
NODE_WAIT_S = 600  # how long a node other than node 0 waits for node 0 to prepare the job dir


def world_size(t) -> int:
    """Processes one job spans (`t`: the trainer config)."""
    return int(t.processes) * int(t.nodes)


def in_launch() -> bool:
    """Whether this process is a rank of a torchrun / accelerate launch group already."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def config_file(kind: str) -> str:
    import trl

    return os.path.join(os.path.dirname(trl.__file__), "accelerate_configs", f"{CONFIGS[str(kind)]}.yaml")


def check(cfg, here: bool, gpus: int, method_reference: bool) -> List[str]:
    """What cannot work with the job's trainer.processes / nodes / distributed: each a sentence naming the fix.
    `here`: the job runs on this machine (not through SLURM), which has `gpus` GPUs. In a rank of the job's own
    launch group there is nothing left to check."""
    t, kind = cfg.trainer, str(cfg.trainer.distributed)
    n, problems = world_size(t), []
    if in_launch():
        if n > 1 and not os.environ.get(SWEEP_PID_ENV):
            problems.append(
                f"trainer.processes={t.processes} (trainer.nodes={t.nodes}) under an `accelerate launch` / torchrun "
                "of your own: dpo-lab starts the job's processes itself. Drop the outer launch (python run.py ... "
                f"trainer.processes={t.processes}), or keep it and leave trainer.processes at 1."
            )
        return problems
    if n == 1:
        return problems
    if kind in ("zero2", "zero3") and importlib.util.find_spec("deepspeed") is None:
        problems.append(
            f"trainer.distributed={kind} needs DeepSpeed, which is not installed: pip install deepspeed (on the GPU "
            "machines), or use trainer.distributed=fsdp2 (torch's own sharding) or ddp."
        )
    device = "cpu" if str(t.device) == "cpu" or (here and not gpus) else "cuda"
    if kind != "ddp" and device == "cpu":
        problems.append(
            f"trainer.distributed={kind} on the CPU: accelerate runs FSDP and DeepSpeed on GPUs only (on CPU "
            "processes it would quietly train plain DDP). Use trainer.distributed=ddp for CPU processes."
        )
    if kind == "fsdp2" and method_reference and t.precompute_ref_log_probs:
        problems.append(
            "trainer.distributed=fsdp2 with trainer.precompute_ref_log_probs=true: TRL 1.16 scores the reference "
            "before FSDP places the model and fails on a device mismatch (huggingface/trl#6470, open). Add "
            "trainer.precompute_ref_log_probs=false (a live reference), or use trainer.distributed=zero3 or ddp."
        )
    if here and device == "cuda" and t.processes > gpus:
        problems.append(
            f"trainer.processes={t.processes} on a machine with {gpus} GPU(s): one process per GPU. Use "
            f"trainer.processes={max(gpus, 1)} or fewer, or trainer.device=cpu for CPU processes (gloo)."
        )
    if here and t.nodes > 1 and not in_slurm_job(t):
        problems.append(
            f"trainer.nodes={t.nodes} runs one job across machines, which takes a cluster launcher: add "
            "hydra/launcher=slurm (it asks SLURM for trainer.nodes nodes with trainer.processes GPUs each)."
        )
    if str(cfg.jobs_per_gpu) not in ("auto", "1"):
        problems.append(
            f"jobs_per_gpu={cfg.jobs_per_gpu} shares a GPU between one-process jobs, and a job of "
            f"trainer.processes={t.processes} takes whole GPUs: leave jobs_per_gpu at auto."
        )
    return problems


@dataclass
class Node:
    """This machine's place in a job's launch group."""

    rank: int
    count: int
    main: str  # node 0's address
    port: int  # the group's rendezvous port

    def command(self, cfg, job_dir: str) -> List[str]:
        """The `accelerate launch` that runs this node's share of the job's ranks."""
        t = cfg.trainer
        return [
            sys.executable,
            "-m",
            "dpo_lab.distributed",  # accelerate launch (main, below)
            "--config_file",
            config_file(t.distributed),
            "--num_processes",
            str(world_size(t)),  # accelerate's count is all machines' processes
            "--num_machines",
            str(self.count),
            "--machine_rank",
            str(self.rank),
            "--main_process_ip",
            self.main,
            "--main_process_port",
            str(self.port),
            "--mixed_precision",
            "no",  # the job's TrainingArguments set its precision; TRL's configs would force bf16 on fp32 jobs
            "--dynamo_backend",
            "no",
            "-m",
            "dpo_lab",
            "execute",
            job_dir,
        ]


def node(t) -> Node:
    """This machine's place: node 0 of 1 with a free local port, or its SLURM node id, node 0's host and a port
    every node derives from the job id."""
    if int(t.nodes) == 1:
        return Node(0, 1, "127.0.0.1", free_port())
    from submitit.slurm.slurm import SlurmJobEnvironment

    env = SlurmJobEnvironment()
    if not in_slurm_job(t):
        raise UserError(
            f"trainer.nodes={t.nodes}, but this process is not a task of a {t.nodes}-node SLURM job "
            f"(SLURM_JOB_NUM_NODES={os.environ.get('SLURM_JOB_NUM_NODES')}): launch the sweep with "
            "hydra/launcher=slurm, which asks for the nodes."
        )
    return Node(env.node, env.num_nodes, env.hostnames[0], PORTS[0] + int(env.raw_job_id) % PORTS[1])


def free_port() -> int:
    """A TCP port free on this machine now (the OS picks it), for one job's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_slurm_job(t) -> bool:
    """Whether this process is a task of a SLURM job of trainer.nodes nodes (one task per node)."""
    return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_JOB_NUM_NODES", "1")) == int(t.nodes)


def joining(t) -> bool:
    """Whether this process runs a node other than 0 of a multi-node job: node 0 prepares the job dir and holds
    its lock, this one only starts its share of the ranks."""
    return int(t.nodes) > 1 and in_slurm_job(t) and int(os.environ.get("SLURM_NODEID", "0")) > 0


def wait_for_node_zero(job_dir: str) -> None:
    """On a node other than 0: wait until node 0 has prepared the job dir (its job.json)."""
    deadline = time.time() + NODE_WAIT_S
    while not os.path.exists(os.path.join(job_dir, "job.json")):
        if time.time() > deadline:
            raise UserError(
                f"node 0 did not prepare {job_dir} within {NODE_WAIT_S} s: is the job dir on a filesystem every node "
                "shares (hydra.sweep.dir)?"
            )
        time.sleep(1)


def main(argv: List[str]) -> int:
    """`accelerate launch ARGV`, ending with 128 + the signal when stopped: torch's elastic agent stops the ranks on
    SIGTERM / SIGINT and then raises SignalException, whose traceback would be the last thing a stopped sweep prints."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException

    try:
        launch_command(launch_command_parser().parse_args(argv))
    except SignalException as e:
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
