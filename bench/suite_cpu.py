"""Where the test suite's CPU goes: a pytest plugin that records, per test, the CPU seconds of the
xdist worker itself and of the child processes it reaped during the test (servers, trainers,
`llmill run`s), with the test's wall time; and a summary of the records.

    make test PYTEST_ARGS="-p bench.suite_cpu"      # records into $LLMILL_SUITE_CPU_DIR (default bench/.work/suite-cpu)
    .venv/bin/python -m bench.suite_cpu             # the tests by CPU, each worker's total

A child is counted when it is reaped, so a session fixture's server counts in the test during
which it stopped: read a short test with a large CPU figure as that. Where the worker is pinned to
one CPU (`make test` pins one worker per CPU), the record also has that CPU's idle seconds during
the test, from /proc/stat: exact, whoever's process ran there, and the figure to shrink for wall.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import pytest

DEFAULT_DIR = Path(__file__).parent / ".work" / "suite-cpu"


def _report_dir() -> Path:
    return Path(os.environ.get("LLMILL_SUITE_CPU_DIR", DEFAULT_DIR))


def _cpu() -> tuple[float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _idle_of_own_cpu() -> float | None:
    """Idle + iowait seconds so far of the one CPU this process is pinned to; None if not pinned."""
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) != 1:
        return None
    (cpu,) = os.sched_getaffinity(0)
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields[0] == f"cpu{cpu}":
            return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    own0, children0 = _cpu()
    idle0 = _idle_of_own_cpu()
    start = time.monotonic()
    yield
    own1, children1 = _cpu()
    idle1 = _idle_of_own_cpu()
    folder = _report_dir()
    folder.mkdir(parents=True, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(folder / f"{worker}-{os.getpid()}.jsonl", "a") as f:
        f.write(json.dumps({"test": item.nodeid, "own_s": own1 - own0, "children_s": children1 - children0,
                            "wall_s": time.monotonic() - start,
                            "idle_s": None if idle0 is None or idle1 is None else idle1 - idle0}) + "\n")


def summary(folder: Path, top: int = 30) -> str:
    lines, rows = [], []
    for path in sorted(folder.glob("*.jsonl")):
        worker = [json.loads(line) for line in path.read_text().splitlines() if line]
        rows += worker
        lines.append(f"{path.stem}: {len(worker)} tests, {sum(r['wall_s'] for r in worker):.0f} s wall, "
                     f"{sum(r['own_s'] + r['children_s'] for r in worker):.0f} s CPU")
    rows.sort(key=lambda r: -(r["own_s"] + r["children_s"]))
    lines.append(f"all: {len(rows)} tests, {sum(r['own_s'] + r['children_s'] for r in rows):.0f} s CPU")
    lines.append("   CPU s  wall s  idle s  test")
    lines += [f"{r['own_s'] + r['children_s']:8.1f} {r['wall_s']:7.1f} {_idle(r):>7}  {r['test']}" for r in rows[:top]]
    idle = [r for r in rows if r.get("idle_s") is not None]
    if idle:
        idle.sort(key=lambda r: -r["idle_s"])
        lines.append(f"\nthe workers' own CPUs idle during tests: {sum(r['idle_s'] for r in idle):.0f} s; the most:")
        lines.append("  idle s  wall s  test")
        lines += [f"{r['idle_s']:8.1f} {r['wall_s']:7.1f}  {r['test']}" for r in idle[:top]]
    return "\n".join(lines)


def _idle(record: dict) -> str:
    return "" if record.get("idle_s") is None else f"{record['idle_s']:.1f}"


if __name__ == "__main__":
    print(summary(Path(sys.argv[1]) if len(sys.argv) > 1 else _report_dir()))
