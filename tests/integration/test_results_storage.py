"""The task cache shared between workers: a remote storage block in a real S3 API (moto's
server) named by PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK. One worker process runs the data flow;
a second, with its own Prefect home (so its own local storage), finds every stage `Cached`
from the bucket's result records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import python_doc_site_pages, tiny_pipeline_config, write_warc

ROOT = Path(__file__).resolve().parents[2]
DATA_STAGES = {"ingest", "extract", "clean", "dedup"}

RUN_DATA_FLOW = """
import json, sys
from flows.llmill_config import load_config
from flows.data_flow import data_flow
from tests.helpers import all_task_states
state = data_flow(load_config(sys.argv[1]), return_state=True)
assert state.is_completed(), state
print("STATES " + json.dumps(all_task_states(state.state_details.flow_run_id, json.loads(sys.argv[2]))))
"""


def llmill(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env={**env, "COLUMNS": "300"}, capture_output=True,
                          text=True, timeout=180)


def data_flow_states(config: Path, env: dict) -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-c", RUN_DATA_FLOW, str(config), json.dumps(sorted(DATA_STAGES))], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("STATES "))[len("STATES "):])


@pytest.mark.prefect_server
def test_a_remote_results_block_shares_the_task_cache_between_workers(tmp_path, prefect_api, s3_server):
    s3_server.make_bucket("llmill-results")
    warc = write_warc(tmp_path / "small.warc.gz", python_doc_site_pages(2))
    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump(tiny_pipeline_config(tmp_path / "root", warc)))
    # the session's server (the block is saved on it under a name no other test uses); the Prefect
    # homes are this test's own
    server, _ = prefect_api
    server_env = {**os.environ, **server, "PREFECT_HOME": str(tmp_path / "prefect")}
    base = {**server_env, **s3_server.env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    saved = llmill("results-storage", "s3://llmill-results/prefect", env=base)
    assert saved.returncode == 0 and "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=remote-file-system/llmill-results" in saved.stdout, \
        saved.stdout + saved.stderr[-2000:]
    again = llmill("results-storage", "s3://llmill-results/other", env=base)  # a second save does not replace it silently
    assert again.returncode == 2 and "already exists" in again.stdout, again.stdout + again.stderr[-2000:]
    local = llmill("results-storage", env=base)
    assert local.returncode == 0 and "results storage: local" in local.stdout and "this machine only" in local.stdout, local.stdout

    def worker(name: str) -> dict:
        return {**base, "PREFECT_HOME": str(tmp_path / name), "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": "remote-file-system/llmill-results"}

    shown = llmill("results-storage", env=worker("first"))
    assert shown.returncode == 0 and "results storage: s3://llmill-results/prefect/" in shown.stdout, shown.stdout + shown.stderr
    assert "block remote-file-system/llmill-results" in shown.stdout and "shared" in shown.stdout

    first = data_flow_states(config, worker("first"))
    assert DATA_STAGES <= first.keys() and all(first[s] == "Completed" for s in DATA_STAGES), first
    records = s3_server.filesystem().find("llmill-results/prefect")
    assert len(records) >= len(DATA_STAGES), records

    second = data_flow_states(config, worker("second"))
    assert DATA_STAGES <= second.keys() and all(second[s] == "Cached" for s in DATA_STAGES), second
    # the second worker read the bucket's records: its own local storage holds none
    assert not [p for p in (tmp_path / "second").rglob("*") if p.is_file() and "storage" in p.parts]
