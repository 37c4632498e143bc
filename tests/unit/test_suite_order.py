"""A run of the suite names the seed of its order even under `-q`, so a failure can be replayed."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_quiet_run_prints_the_seed_that_replays_its_order():
    # a short module of this suite, in a pytest of its own: the conftest's summary hook runs there
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/unit/test_urls.py"]
    first = subprocess.run([*cmd, "-q"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-2000:]
    seeds = re.findall(r"Using --randomly-seed=(\d+) \(make test PYTEST_ARGS=--randomly-seed=\1 replays this order\)", first.stdout)
    assert len(seeds) == 1, first.stdout[-2000:]
    # the seed named replays the same order
    order = [*cmd, "-v", f"--randomly-seed={seeds[0]}"]
    runs = [subprocess.run(order, cwd=ROOT, capture_output=True, text=True, timeout=300) for _ in range(2)]
    passed = [re.findall(r"^(\S+::\S+) PASSED", r.stdout, re.M) for r in runs]
    assert len(passed[0]) > 3 and passed[0] == passed[1]
