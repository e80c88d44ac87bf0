"""Jobs that span several processes (trainer.processes, trainer.nodes, trainer.distributed): each an `accelerate
launch` group over gloo on this CPU machine. Same numbers as one process with the global batch kept, one wandb run
and one result per job, reference log-probs shared by every rank, SIGTERM / kill -9 / divergence on any rank, the
submitit launcher, and two SLURM-style nodes on one machine. FSDP2 and DeepSpeed need GPUs: here they are refused."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import ROOT, TINY, compose_cfg, run_py

from dpo_lab import distributed
from dpo_lab.errors import EXIT_INTERRUPTED
from dpo_lab.launch import FAILED_RANK

# 12 steps of 8 pairs, a checkpoint every 2: long enough to stop one midway
JOB = [TINY, "max_steps=12", "trainer.save_steps=2", "trainer.eval_steps=4"]
TWO = ["trainer.processes=2", "trainer.distributed=ddp"]
METRICS = ("eval/loss", "eval/rewards/margins", "eval/logratios/margins", "eval/rewards/accuracies")


def result(job_dir: Path) -> dict:
    return json.loads((job_dir / "result.json").read_text())


def same_metrics(a: dict, b: dict, rel: float) -> None:
    for key in METRICS:
        assert a[key] == pytest.approx(b[key], rel=rel, abs=rel), key


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """The same 2-job sweep on 2 processes x 4 pairs and on 1 process x 8 pairs, from a cache of their own: the
    2-process sweep's first job computes the reference log-probs."""
    tmp = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "DPO_LAB_CACHE": str(tmp / "cache")}
    common = ["-m", *JOB, "loss=sigmoid,ipo", f"results_dir={tmp / 'results'}"]
    two = run_py(*common, *TWO, f"hydra.sweep.dir={tmp / 'two'}", cwd=tmp, env=env)
    one = run_py(*common, "trainer.per_device_train_batch_size=8", f"hydra.sweep.dir={tmp / 'one'}", cwd=tmp, env=env)
    return tmp, two, one


@pytest.mark.slow
def test_two_process_jobs_train_what_one_process_trains_with_the_same_global_batch(sweeps):
    """Each optimizer step sees the same 8 pairs either way (accelerate hands rank r every other micro-batch of the
    seeded order), and DDP's averaged gradient of two 4-pair halves is the 8-pair mean gradient: only float32
    summation order differs. After 12 Adam steps that moves the metrics by about 1e-5 relative (measured): 1e-3."""
    tmp, two, one = sweeps
    assert two.returncode == 0, two.stdout[-3000:]
    assert one.returncode == 0, one.stdout[-3000:]
    assert "2/2 jobs completed" in two.stdout
    for job in ("0", "1"):
        a, b = result(tmp / "two" / job), result(tmp / "one" / job)
        assert a["status"] == "completed" and a["world_size"] == 2 and a["steps"] == 12
        assert b["world_size"] == 1 and a["per_device_train_batch_size"] * 2 == b["per_device_train_batch_size"]
        assert a["global_batch_size"] == b["global_batch_size"] == 8
        same_metrics(a, b, rel=1e-3)
        assert len(list((tmp / "two" / job / "wandb").glob("offline-run-*"))) == 1  # rank 0's run only
        log = (tmp / "two" / job / "train.log").read_text()
        assert "[rank 0] " in log and "[rank 1] " in log
    # Reference log-probs: computed once, by both ranks together; the second job loads them on both ranks.
    first, second = result(tmp / "two" / "0"), result(tmp / "two" / "1")
    assert first["reference_logps"] == "computed" and all(n > 0 for n in first["reference_batches_by_rank"])
    assert second["reference_logps"] == "reused" and second["reference_batches_by_rank"] == [0, 0]


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_two_process_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_py("-m", TINY, *TWO, "hydra/launcher=local", "loss=ipo", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0 and "1/1 jobs completed" in proc.stdout, proc.stdout[-3000:]
    done = result(sweep / "0")
    assert done["status"] == "completed" and done["world_size"] == 2 and (sweep / ".submitit").is_dir()


def _ranks(pid: int) -> list:
    """The ranks (python -m dpo_lab execute) among the sweep's descendants, by their RANK."""
    found = {}
    for p in psutil.Process(pid).children(recursive=True):
        cmd = p.cmdline()
        if cmd[-3:-1] == ["dpo_lab", "execute"] and "dpo_lab.distributed" not in cmd:
            found[int(p.environ()["RANK"])] = p
    return [found[r] for r in sorted(found)]


@pytest.fixture
def start_sweep():
    """Start `run.py -m` with the 2-process job in the background (its output in <sweep>.log); whatever a failed
    test leaves running is killed."""
    started = []

    def start(sweep: Path, *overrides) -> subprocess.Popen:
        cmd = [sys.executable, str(ROOT / "run.py"), "-m", *JOB, *TWO, *overrides, f"hydra.sweep.dir={sweep}"]
        log = open(f"{sweep}.log", "w")
        started.append(
            subprocess.Popen(cmd, cwd=sweep.parent, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, Path(f"{path.parents[2]}.log").read_text()[-3000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.2)


@pytest.mark.slow
def test_sigterm_stops_every_rank_and_a_relaunch_resumes_to_the_same_metrics(sweeps, start_sweep, tmp_path):
    sweep = tmp_path / "sweep"
    proc = start_sweep(sweep, "loss=sigmoid,ipo", f"results_dir={tmp_path / 'results'}")
    _wait_for(sweep / "0" / "checkpoints" / "checkpoint-4", proc)
    ranks = _ranks(proc.pid)
    assert len(ranks) == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == EXIT_INTERRUPTED
    gone, alive = psutil.wait_procs(ranks, timeout=30)
    assert not alive, "a rank outlived the sweep"
    assert "Traceback" not in Path(f"{sweep}.log").read_text()  # torch's agent raises once it stopped the ranks
    stopped = result(sweep / "0")
    assert stopped["status"] == "interrupted" and "SIGTERM" in stopped["error"]
    assert stopped["last_checkpoint"] and not (sweep / "1" / "result.json").exists()

    again = run_py(
        "-m",
        *JOB,
        *TWO,
        "loss=sigmoid,ipo",
        f"results_dir={tmp_path / 'results'}",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stdout[-3000:]
    resumed = result(sweep / "0")
    assert resumed["status"] == "completed" and resumed["resumed_from"] == stopped["last_checkpoint"]
    for job in ("0", "1"):  # as the uninterrupted sweep ended: RNG, optimizer and data order resume exactly
        same_metrics(result(sweep / job), result(sweeps[0] / "two" / job), rel=1e-6)


@pytest.mark.slow
def test_a_killed_rank_fails_its_job_and_the_sweep_goes_on_where_a_diverged_rank_stops_all(start_sweep, tmp_path):
    """Job 0: rank 1 is killed (kill -9) midway; job 1: lr=1e30 turns the gradients NaN at step 3 on every rank."""
    sweep = tmp_path / "sweep"
    proc = start_sweep(sweep, "lr=5e-5,1e30", f"results_dir={tmp_path / 'results'}")
    _wait_for(sweep / "0" / "checkpoints" / "checkpoint-4", proc)
    ranks = _ranks(proc.pid)
    assert len(ranks) == 2
    ranks[1].kill()
    assert proc.wait(timeout=300) == 1  # a job did not complete
    out = Path(f"{sweep}.log").read_text()
    killed = result(sweep / "0")
    assert killed["status"] == "killed", killed
    assert killed["error"].startswith("Rank 1 of the job's 2 processes ended first") and "SIGKILL" in killed["error"]
    assert killed["last_checkpoint"]
    diverged = result(sweep / "1")
    assert diverged["status"] == "diverged" and diverged["diverged_step"] == 3, diverged
    log = (sweep / "1" / "train.log").read_text()
    for rank in (0, 1):  # both ranks stopped at the same step
        assert f"[rank {rank}] Job diverged: " in log and "at step 3" in log
    # the agent's failures: job 0's killed rank; in job 1 only rank 0 exits 1, so nothing stops it before it records
    assert FAILED_RANK.findall(out.encode()) == [(b"-9", b"1"), (b"1", b"0")]  # (exit code, local rank)
    assert re.search(r"\| 0 +\| 5e-05 +\| killed +\|", out) and re.search(r"\| 1 +\| 1e\+30 +\| diverged +\|", out)


@pytest.mark.slow
def test_two_nodes_of_a_slurm_job_make_one_job(tmp_path):
    """What hydra/launcher=slurm starts on each node of a 2-node job (one task per node), with SLURM's variables set
    by hand and both "nodes" on this machine: node 0 prepares the dir and records, node 1 joins its group."""
    job = tmp_path / "job"
    args = [str(ROOT / "run.py"), TINY, "trainer.nodes=2", f"hydra.run.dir={job}"]
    slurm = {"SLURM_JOB_ID": str(os.getpid()), "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "localhost"}

    def both_nodes():
        procs = [
            subprocess.Popen(
                [sys.executable, *args],
                cwd=tmp_path,
                env={**os.environ, **slurm, "SLURM_NODEID": str(node)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for node in (0, 1)
        ]
        outs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
        return outs

    outs = both_nodes()
    done = result(job)
    assert done["status"] == "completed" and done["world_size"] == 2 and done["steps"] == 4
    assert "node 1 of 2" in outs[1] and "node 0 of 2" in outs[0]
    assert len(list((job / "wandb").glob("offline-run-*"))) == 1
    outs = both_nodes()  # the array task requeued after it finished: both nodes skip it, neither waits for the other
    assert "already completed" in outs[0] and "processes" not in outs[1] and result(job) == done


def test_what_cannot_work_is_refused_at_preflight(monkeypatch):
    """Each refusal names the fix. FSDP and DeepSpeed under accelerate run on GPUs only: on CPU processes accelerate
    would train plain DDP without a word."""
    cfg = lambda *o: compose_cfg([TINY, *o])  # noqa: E731
    check = lambda c, here=True, gpus=0: " ".join(distributed.check(c, here, gpus, True))  # noqa: E731
    assert check(cfg(*TWO)) == ""
    assert check(cfg()) == ""  # one process: nothing to check
    zero = check(cfg("trainer.processes=2", "trainer.distributed=zero3"), here=False)
    assert ("pip install deepspeed" in zero) == (distributed.importlib.util.find_spec("deepspeed") is None)
    assert "GPUs only" in check(cfg("trainer.processes=2", "trainer.distributed=fsdp2"))
    fsdp = check(cfg("trainer.processes=2", "trainer.distributed=fsdp2"), here=False)  # on SLURM's GPUs
    assert "trl#6470" in fsdp and "trainer.precompute_ref_log_probs=false" in fsdp
    assert (
        check(
            cfg("trainer.processes=2", "trainer.distributed=fsdp2", "trainer.precompute_ref_log_probs=false"),
            here=False,
        )
        == ""
    )
    assert "machine with 1 GPU(s)" in check(cfg("trainer.processes=2"), gpus=1)
    assert "hydra/launcher=slurm" in check(cfg("trainer.nodes=2"))
    assert "leave jobs_per_gpu at auto" in check(cfg(*TWO, "jobs_per_gpu=2"))
    monkeypatch.setenv("WORLD_SIZE", "2")  # under an accelerate launch of the user's own
    assert "of your own" in check(cfg(*TWO))


@pytest.mark.e2e
def test_a_run_py_sweep_refuses_deepspeed_without_it(tmp_path):
    if distributed.importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("DeepSpeed is installed here")
    proc = run_py("-m", TINY, "trainer.processes=2", "trainer.distributed=zero2", "loss=sigmoid,ipo", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout
    assert "2 of 2 jobs would fail" in proc.stdout and "pip install deepspeed" in proc.stdout


def test_slurm_nodes_agree_on_the_group_without_talking(monkeypatch):
    cfg = compose_cfg([TINY, "trainer.processes=8", "trainer.nodes=2", "trainer.distributed=fsdp2"])
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    nodes = []
    for rank in (0, 1):
        monkeypatch.setenv("SLURM_NODEID", str(rank))
        nodes.append(distributed.node(cfg.trainer))
        assert distributed.joining(cfg.trainer) == (rank == 1)
    assert [(n.rank, n.count, n.main) for n in nodes] == [(0, 2, "gpu07"), (1, 2, "gpu07")]
    assert nodes[0].port == nodes[1].port
    cmd = nodes[1].command(cfg, "/jobs/0")
    flag = lambda name: cmd[cmd.index(name) + 1]  # noqa: E731
    assert flag("--num_processes") == "16" and flag("--machine_rank") == "1" and flag("--num_machines") == "2"
    assert flag("--config_file").endswith("accelerate_configs/fsdp2.yaml") and cmd[-3:] == [
        "dpo_lab",
        "execute",
        "/jobs/0",
    ]
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "1")  # a 1-node allocation for a 2-node job
    with pytest.raises(distributed.UserError, match="not a task of a 2-node SLURM job"):
        distributed.node(cfg.trainer)


def test_a_job_of_n_processes_takes_n_whole_gpus(tmp_path, monkeypatch):
    from contextlib import ExitStack

    from dpo_lab import gpus

    monkeypatch.setattr(gpus, "visible_gpu_count", lambda: 5)
    with ExitStack() as held:  # 5 GPUs, 2 per job: 2 jobs at once, the fifth GPU idle
        envs = [held.enter_context(gpus.gpu_env(str(tmp_path), processes=2)) for _ in range(2)]
        assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0,1", "2,3"]
        with gpus.claim_slot(str(tmp_path), 5) as one:  # a one-GPU job beside them gets a GPU they do not hold
            assert one == 4
