"""The cache (dpo_lab/cache.py): a hit takes no lock and records its use, a shared read-only cache serves a run,
and `python -m dpo_lab cache list / prune` show and trim it. Every test uses its own tmp cache, never the user's."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from filelock import FileLock
from helpers import ROOT, TINY, run_py

from dpo_lab import cache
from dpo_lab.errors import UserError

DAY = 86400


def writer(size: int):
    """A tiny artifact writer: one file of `size` bytes."""
    return lambda tmp: (tmp / "blob").write_bytes(b"x" * size)


def aged(out_dir, days_ago: float) -> None:
    """Make the artifact's last use `days_ago` days old (DONE's build time as well, so it stays <= last use)."""
    then = time.time() - days_ago * DAY
    os.utime(out_dir / "DONE", (then, then))
    os.utime(out_dir, (then, then))


def test_a_hit_takes_no_lock_and_records_its_use(tmp_path):
    out = cache.ensure("blob", {"n": 1}, writer(10), tmp_path)
    (tmp_path / f"{out.name}.lock").unlink()
    aged(out, 3)
    built = (out / "DONE").stat().st_mtime

    def never(tmp):
        raise AssertionError("a finished artifact was built again")

    assert cache.ensure("blob", {"n": 1}, never, tmp_path) == out
    assert not (tmp_path / f"{out.name}.lock").exists()  # no lock file made: a read-only cache serves the same way
    [entry] = cache.entries(tmp_path)
    assert entry.built == built and time.time() - entry.last_used < 60  # the use is recorded, the build time kept


def test_a_missing_artifact_in_a_cache_that_cannot_be_written_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    root = tmp_path / "file" / "cache"  # below a file: nothing can be made there, also for root
    assert not cache.writable(root)
    with pytest.raises(UserError) as e:
        cache.ensure("blob", {"n": 1}, writer(10), root)
    message = str(e.value)
    assert "\n" not in message and f"DPO_LAB_CACHE={root}" in message and "is a file" in message
    assert "blob-" in message and "python run.py" in message and "max_steps=1" in message


def test_entries_lists_artifacts_killed_builds_and_stale_locks(tmp_path):
    small = cache.ensure("blob", {"n": 1}, writer(1000), tmp_path)
    big = cache.ensure("blob", {"n": 2}, writer(3 * 2**20), tmp_path)
    aged(small, 2)
    aged(big, 1)
    (tmp_path / f".{big.name}.tmp-abc123").mkdir()  # a build killed before its rename
    (tmp_path / "sft-0123456789ab.lock").touch()  # a lock whose build never finished
    (tmp_path / "wandb").mkdir()  # not dpo-lab's: never listed, never pruned
    found = cache.entries(tmp_path)
    assert [(e.kind, e.path.name) for e in found][:2] == [("blob", small.name), ("blob", big.name)]  # oldest use first
    assert {e.kind for e in found[2:]} == {"orphan", "lock"} and not any(e.building for e in found)
    assert found[0].params == {"n": 1} and found[1].size >= 3 * 2**20
    assert cache.human_size(found[1].size) == "3.0 MB" and cache.human_size(5 * 2**30) == "5.0 GB"


def test_prune_older_than_removes_only_what_was_not_used_since(tmp_path):
    old = cache.ensure("blob", {"n": 1}, writer(10), tmp_path)
    new = cache.ensure("blob", {"n": 2}, writer(10), tmp_path)
    aged(old, 40)
    aged(new, 40)
    cache.ensure("blob", {"n": 2}, writer(10), tmp_path)  # used today: kept
    assert [e.path for e in cache.prune(tmp_path, older_than_days=30, dry_run=True)] == [old]
    assert old.exists()  # a dry run removes nothing
    assert [e.path for e in cache.prune(tmp_path, older_than_days=30)] == [old]
    assert not old.exists() and not (tmp_path / f"{old.name}.lock").exists() and new.exists()
    assert cache.done_params(new) == {"n": 2}


def test_prune_max_size_removes_the_least_recently_used_first(tmp_path):
    outs = [cache.ensure("blob", {"n": n}, writer(2**20), tmp_path) for n in range(4)]
    for days, out in zip((1, 4, 2, 3), outs):
        aged(out, days)
    removed = cache.prune(tmp_path, max_size=cache.parse_size("2.5MB"))
    assert [e.path for e in removed] == [outs[1], outs[3]]  # 4 and 3 days unused
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == sorted(
        o.name for o in (outs[0], outs[2])
    )


def test_prune_removes_killed_builds_and_stale_locks_but_never_a_held_lock(tmp_path):
    busy = cache.ensure("blob", {"n": 1}, writer(10), tmp_path)
    aged(busy, 100)
    orphan = tmp_path / ".blob-0123456789ab.tmp-dead"
    orphan.mkdir()
    (orphan / "half").write_text("x")
    stale = tmp_path / "blob-ba9876543210.lock"
    stale.touch()
    building = tmp_path / ".blob-aaaaaaaaaaaa.tmp-live"  # a build in progress: its lock is held
    building.mkdir()
    with FileLock(str(tmp_path / f"{busy.name}.lock")), FileLock(str(tmp_path / "blob-aaaaaaaaaaaa.lock")):
        listed = {e.path.name: e.building for e in cache.entries(tmp_path)}
        assert listed[busy.name] and listed[building.name] and not listed[orphan.name]
        removed = cache.prune(tmp_path, older_than_days=1, max_size=0)
    assert {e.path for e in removed} == {orphan, stale}
    assert busy.exists() and building.exists() and not orphan.exists() and not stale.exists()


def test_sizes_are_parsed_and_a_bad_one_is_a_user_error():
    assert [cache.parse_size(s) for s in ("0", "500MB", "20G", "1.5 GB", "2KiB")] == [
        0,
        500 * 2**20,
        20 * 2**30,
        int(1.5 * 2**30),
        2048,
    ]
    for bad in ("lots", "10XB", "-1GB"):
        with pytest.raises(UserError, match="not a size"):
            cache.parse_size(bad)


# Commands as a user runs them, on real read-only directories.


def read_only(path, command):
    """`command` run with `path` read-only: in a private mount namespace with a read-only bind mount as root (chmod
    does not stop root), else with write permission taken away and given back after."""
    if os.geteuid() != 0:
        chmod = 'chmod -R a-w "$0"; "$@"; rc=$?; chmod -R u+w "$0"; exit $rc'
        return ["sh", "-c", chmod, str(path), *command]
    mount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    probe = ["unshare", "-m", "sh", "-c", mount, str(path), "true"]
    if shutil.which("unshare") is None or subprocess.run(probe, capture_output=True).returncode:
        pytest.skip("root without mount namespaces (unshare -m): no way to make a directory read-only here")
    return ["unshare", "-m", "sh", "-c", mount, str(path), *command]


def run(command, cache_dir, cwd):
    env = {**os.environ, "DPO_LAB_CACHE": str(cache_dir)}
    return subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A cache holding everything `experiment=tiny` needs, built by a real run."""
    tmp = tmp_path_factory.mktemp("built")
    env = {**os.environ, "DPO_LAB_CACHE": str(tmp / "cache")}
    run_py(TINY, "max_steps=1", f"hydra.run.dir={tmp / 'run'}", cwd=tmp, env=env, check=True)
    return tmp / "cache"


def snapshot(directory):
    return sorted(p.relative_to(directory) for p in directory.rglob("*"))


@pytest.mark.e2e
def test_a_read_only_cache_that_holds_the_artifacts_serves_a_run(built, tmp_path):
    before = snapshot(built)
    command = [sys.executable, str(ROOT / "run.py"), TINY, "max_steps=2", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run(read_only(built, command), built, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "completed" and result["reference_logps"] == "reused"
    assert "cannot be written" not in proc.stdout and snapshot(built) == before  # all hits, nothing written


@pytest.mark.e2e
def test_a_read_only_cache_without_the_shared_data_computes_it_in_the_job(built, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    for toy in built.glob("toy-*"):
        if toy.is_dir():
            shutil.copytree(toy, shared / toy.name)
    command = [sys.executable, str(ROOT / "run.py"), TINY, "max_steps=2", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run(read_only(shared, command), shared, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "completed" and result["reference_logps"] == "computed"
    assert proc.stdout.count(f"DPO_LAB_CACHE={shared} cannot be written: this job computes") == 1
    assert sorted(p.name for p in shared.iterdir()) == [toy.name for toy in built.glob("toy-*") if toy.is_dir()]


@pytest.mark.e2e
def test_an_empty_read_only_cache_is_refused_before_the_run_starts(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    command = [sys.executable, str(ROOT / "run.py"), TINY, "loss=ipo", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run(read_only(empty, command), empty, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    [paragraph] = [line for line in proc.stdout.splitlines() if line.startswith("Preflight:")]
    assert f"DPO_LAB_CACHE={empty} cannot be written" in paragraph and "the toy data and model (toy-" in paragraph
    assert f"DPO_LAB_CACHE={empty} python run.py {TINY} loss=ipo max_steps=1" in paragraph
    assert not (tmp_path / "run").exists() and not any(empty.iterdir())


@pytest.mark.e2e
def test_cache_list_and_prune_commands(built, tmp_path):
    mine = tmp_path / "cache"
    shutil.copytree(built, mine)
    (mine / ".toy-0123456789ab.tmp-x").mkdir()
    dpo_lab_cache = [sys.executable, "-m", "dpo_lab", "cache"]
    listing = run([*dpo_lab_cache, "list"], mine, tmp_path)
    assert listing.returncode == 0, listing.stdout
    toy = next(p.name for p in mine.glob("toy-*") if p.is_dir())
    assert toy.split("-")[1] in listing.stdout and "n_train=48" in listing.stdout and "killed build" in listing.stdout
    assert "entries" in listing.stdout.splitlines()[-1] and "temp dirs of killed builds: 1" in listing.stdout
    dry = run([*dpo_lab_cache, "prune", "--max-size", "0", "--dry-run"], mine, tmp_path)
    assert dry.returncode == 0 and "Would remove" in dry.stdout and toy.split("-")[1] in dry.stdout, dry.stdout
    assert (mine / toy).exists()
    bad = run([*dpo_lab_cache, "prune", "--max-size", "lots"], mine, tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stdout and "--max-size lots: not a size" in bad.stdout
    refused = run(read_only(mine, [*dpo_lab_cache, "prune", "--older-than", "0"]), mine, tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stdout, refused.stdout
    assert f"DPO_LAB_CACHE={mine} cannot be pruned" in refused.stdout and (mine / toy).exists()
    pruned = run([*dpo_lab_cache, "prune", "--max-size", "0"], mine, tmp_path)
    assert pruned.returncode == 0 and not (mine / toy).exists() and not list(mine.iterdir()), pruned.stdout
