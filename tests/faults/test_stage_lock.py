"""Two runs of one stage at once (a scheduled refresh meeting a manual run): the second waits,
bounded, then finds the first's dataset; after a failed run, later runs still take turns.
Runs are threads here: flock locks belong to open files, so two opens in one process conflict
exactly as two processes do."""

from __future__ import annotations

import threading
import time

import pytest
from pydantic import BaseModel

import tasks.stage as stage
from formats.manifest import is_dataset
from tasks.stage import StageLock, run_stage, stage_dir


class Cfg(BaseModel):
    n: int = 1


def slow_writer(calls: list, seconds: float):
    def write(inputs, cfg, out, progress):
        calls.append(("start", time.monotonic()))
        time.sleep(seconds)
        (out / "rows.txt").write_text("x\n" * cfg.n)
        calls.append(("end", time.monotonic()))
        return {"rows": cfg.n}

    return write


def in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run():
        try:
            result["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, result


def test_a_second_run_waits_for_the_first_and_finds_its_dataset(tmp_path, capsys):
    first_calls, second_calls = [], []
    t, first = in_thread(run_stage, "make", 1, slow_writer(first_calls, 1.5), {}, Cfg(), tmp_path)
    while not first_calls:
        time.sleep(0.01)
    second = run_stage("make", 1, slow_writer(second_calls, 0), {}, Cfg(), tmp_path)  # before: failed at once
    t.join(10)
    assert "error" not in first and second == first["value"] and is_dataset(second)
    assert second_calls == []  # found, not computed again
    assert "waiting for another run writing" in capsys.readouterr().out


def test_after_a_failed_run_two_later_runs_never_write_at_once(tmp_path):
    def broken(inputs, cfg, out, progress):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_stage("make", 1, broken, {}, Cfg(), tmp_path)
    lock = stage_dir(tmp_path, "make", 1, Cfg(), {}).with_suffix(".lock")
    assert lock.exists()  # before: unlinked on the way out, so the next two runs could lock two different files
    calls: list = []
    holder = StageLock(lock)
    holder.__enter__()
    waiting, waiting_result = in_thread(run_stage, "make", 1, slow_writer(calls, 0.5), {}, Cfg(n=1), tmp_path)
    time.sleep(0.3)  # the second run now waits on the lock file's descriptor
    holder.__exit__(None, None, None)
    late, late_result = in_thread(run_stage, "make", 1, slow_writer(calls, 0.5), {}, Cfg(n=1), tmp_path)
    waiting.join(10)
    late.join(10)
    assert "error" not in waiting_result and "error" not in late_result
    starts = [t for kind, t in calls if kind == "start"]
    ends = [t for kind, t in calls if kind == "end"]
    assert len(starts) == 1 and len(ends) == 1  # one computed it, the other found it
    assert waiting_result["value"] == late_result["value"]


def test_the_wait_is_bounded_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(stage, "LOCK_WAIT_S", 0.5)
    lock = stage_dir(tmp_path, "make", 1, Cfg(), {}).with_suffix(".lock")
    with StageLock(lock):
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="waited .* for another run writing"):
            run_stage("make", 1, slow_writer([], 0), {}, Cfg(), tmp_path)
        assert 0.5 <= time.monotonic() - started < 5


def test_gc_removes_a_lock_only_while_holding_it(tmp_path):
    lock = tmp_path / "make" / "k.lock"
    with StageLock(lock):
        assert not StageLock.remove_if_free(lock) and lock.exists()
    assert StageLock.remove_if_free(lock) and not lock.exists()


def test_two_trainings_of_an_embedded_run_take_turns_on_the_accelerator(tmp_path, monkeypatch):
    """No Prefect server defines the limit here (before: `Concurrency limits ['llmill-accelerator']
    do not exist - skipping acquisition`, and both trained at once)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.orchestration import accelerator_slot

    monkeypatch.setenv("LLMILL_CACHE_DIR", str(tmp_path / "cache"))
    spans: list[tuple[float, float]] = []

    def train():
        with accelerator_slot():
            start = time.monotonic()
            time.sleep(0.4)
            spans.append((start, time.monotonic()))

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        threads = [in_thread(train)[0] for _ in range(3)]
        for t in threads:
            t.join(10)
    spans.sort()
    assert len(spans) == 3 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # one at a time
