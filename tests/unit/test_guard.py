"""The start guard behind the test tiers (tests/guard/): what counts as a trainer, a Prefect
server, a browser or a database, and that a start without the mark is refused in the pytest
process and in a Python process it starts."""

import subprocess
import sys

import pytest

import llmill_test_guard as guard


def test_command_lines_are_classified():
    py = sys.executable
    assert guard.kind_of([py, "-m", "model.train", "--spec", "run.json"]) == "trainer"
    assert guard.kind_of([py, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "model.train", "--spec", "x"]) == "trainer"
    assert guard.kind_of(["/v/bin/accelerate", "launch", "--num_processes", "2", "-m", "model.train"]) == "trainer"
    assert guard.kind_of([py, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"]) == "prefect_server"
    assert guard.kind_of(["/v/bin/prefect", "server", "start", "--host", "127.0.0.1"]) == "prefect_server"
    assert guard.kind_of(["prefect", "worker", "start", "--pool", "p"]) == "prefect_server"
    assert guard.kind_of(["/usr/bin/chromium", "--headless"]) == "browser"
    assert guard.kind_of(["/v/bin/dask", "scheduler", "--port", "0"]) == guard.kind_of(["dask", "worker", "tcp://h:1"]) == "dask_cluster"
    assert guard.kind_of(["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/initdb", "-D", "d"]) == "database"
    for harmless in ([py, "-m", "flows.cli", "run", "--set", "crawl.bogus=1"], ["prefect", "work-pool", "create", "p"], ["git", "ls-files"],
                     [py, "bench/gpu_check.py", "--allow-cpu"], "echo model.train", ["dask", "--version"]):
        assert guard.kind_of(harmless) is None, harmless


def test_an_unmarked_start_is_refused_here_and_in_a_child(tmp_path, monkeypatch):
    log = tmp_path / "guard.log"
    monkeypatch.setenv(guard.LOG, str(log))  # not the session's log: this test's own refusals are expected
    monkeypatch.setenv(guard.ALLOW, "")
    with pytest.raises(guard.GuardError, match="started a trainer without @pytest.mark.trainer"):
        subprocess.run([sys.executable, "-m", "model.train", "--help"], capture_output=True)
    # a child Python process gets the same patch through sitecustomize (PYTHONPATH)
    child = "import subprocess, sys; subprocess.run(['chromium', '--version'])"
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "GuardError" in proc.stderr and "without @pytest.mark.browser" in proc.stderr
    assert log.read_text().count("started a") == 2
    # marked: allowed (the command itself then runs; here it only prints its usage)
    monkeypatch.setenv(guard.ALLOW, "trainer")
    ok = subprocess.run([sys.executable, "-m", "model.train", "--help"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "--spec" in ok.stdout
