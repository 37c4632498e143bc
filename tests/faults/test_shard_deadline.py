"""A shard that stalls where no timeout inside it can reach (SIGALRM blocked, as a parser stuck
in C code would have it) is killed at the stage's hard deadline and handed to the stage's
on_crash, on the local pool and on Dask, and the other shards finish."""

from __future__ import annotations

import signal
import time

import pytest

from tasks.executor import ShardFailed, executor_scope, map_shards
from tests.helpers import quarantined


def stall_on_one(i):
    if i == 1:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGINT, signal.SIGTERM})
        time.sleep(120)
    return {"i": i}


# the test waits out the deadline three times; good shards need a fraction of it (three of them on
# fresh children: 0.7-0.9 s in all on one CPU shared with two busy processes)
DEADLINE_S = 1.5


def test_a_stalled_shard_is_killed_at_its_deadline_and_quarantined(engine, tmp_path):
    jobs = [(f"part {i}", i) for i in range(3)]
    started = time.monotonic()
    with executor_scope(engine):
        results, ran = map_shards(stall_on_one, jobs, tmp_path, [], workers=2, on_crash=quarantined, deadline_s=DEADLINE_S)
        assert time.monotonic() - started < 60  # before: the stage waited out the 120 s stall
        assert ran == 3 and results[0] == {"i": 0} and results[2] == {"i": 2}
        assert results[1] == {"i": 1, "crashed": f"the shard ran past its deadline of {DEADLINE_S:g} s and its process was killed"}
        with pytest.raises(ShardFailed, match=r"shard 1 of 3 \(part 1\) failed after 2 tries.*past its deadline"):
            map_shards(stall_on_one, jobs, tmp_path / "again", [], workers=2, deadline_s=DEADLINE_S)  # no on_crash: the stage fails, named
