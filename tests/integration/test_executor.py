"""The shard executors, local and a real Dask cluster: failures named, crashes isolated,
a rerun that runs only what is unfinished, and a cluster of other code refused."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path

import pytest

from tasks.executor import ExecutorConfig, ShardFailed, executor_scope, map_shards
from tests.helpers import DaskCluster, quarantined

ROOT = Path(__file__).resolve().parents[2]


def fail_when_flagged(args):
    i, flag = args
    if i == 2 and Path(flag).exists():
        raise ValueError("shard two is bad")
    return {"i": i, "pid": os.getpid()}


def crash_on_three(i):
    if i == 3:
        os.kill(os.getpid(), signal.SIGSEGV)
    return {"i": i, "main_thread": threading.current_thread() is threading.main_thread()}


def test_a_failed_shard_is_named_and_a_rerun_runs_only_it(engine, tmp_path):
    flag = tmp_path / "flag"
    flag.touch()
    jobs = [(f"part {i}", (i, str(flag))) for i in range(5)]
    with executor_scope(engine):
        with pytest.raises(ShardFailed, match=r"shard 2 of 5 \(part 2\) failed after 2 tries: .*ValueError: shard two is bad"):
            map_shards(fail_when_flagged, jobs, tmp_path, [], workers=2)
        assert sorted(p.name for p in (tmp_path / ".shards").iterdir()) == [f"{i:05d}.json" for i in (0, 1, 3, 4)]
        flag.unlink()
        done = []
        results, ran = map_shards(fail_when_flagged, jobs, tmp_path, [], progress=lambda d, t: done.append((d, t)), workers=2)
    assert ran == 1 and [r["i"] for r in results] == [0, 1, 2, 3, 4]
    assert done[0] == (4, 5) and done[-1] == (5, 5)
    assert os.getpid() not in {r["pid"] for r in results}  # shards run in child processes


def test_a_crashed_shard_goes_to_the_stage_and_shards_run_on_a_main_thread(engine, tmp_path):
    jobs = [(f"part {i}", i) for i in range(5)]
    with executor_scope(engine):
        results, ran = map_shards(crash_on_three, jobs, tmp_path, [], workers=2, on_crash=quarantined)
        assert ran == 5
        assert results[3] == {"i": 3, "crashed": "the shard's process was killed by signal 11"}
        # SIGALRM timeouts need a main thread: the child's, though Dask and the local pool call from threads
        assert all(r["main_thread"] for i, r in enumerate(results) if i != 3)
        with pytest.raises(ShardFailed, match=r"shard 3 of 5 \(part 3\).*killed by signal 11"):
            map_shards(crash_on_three, jobs, tmp_path / "again", [], workers=2)


@pytest.mark.dask_cluster
def test_a_cluster_running_other_code_is_refused(tmp_path):
    other = tmp_path / "other"
    for package in ("tasks", "model", "flows", "tests"):
        shutil.copytree(ROOT / package, other / package, ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "tasks" / "clean.py", "a") as f:
        f.write("\n# a local edit\n")
    with DaskCluster(tmp_path, workers=1, code=other) as cluster:
        with executor_scope(ExecutorConfig(kind="dask", address=cluster.address)):
            with pytest.raises(RuntimeError, match=r"1 of 1 Dask workers at tcp://127\.0\.0\.1:\d+ run other llmill code"):
                map_shards(crash_on_three, [("part 0", 0)], tmp_path / "out", [])


def test_no_scheduler_is_a_clear_error(tmp_path):
    with executor_scope(ExecutorConfig(kind="dask", address="tcp://127.0.0.1:9", connect_timeout_s=2)):
        with pytest.raises(RuntimeError, match=r"no Dask scheduler answers at tcp://127\.0\.0\.1:9"):
            map_shards(crash_on_three, [("part 0", 0)], tmp_path, [])


def test_dask_without_an_address_is_refused_at_load():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs executor.address"):
        ExecutorConfig(kind="dask")
