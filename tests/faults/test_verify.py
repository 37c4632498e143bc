"""Damaged datasets are found, not read: `llmill verify` checks every file against its manifest
(local and on an object store), and a stage refuses an input whose files changed size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel

from formats.manifest import load_manifest
from tasks.stage import run_stage

ROOT = Path(__file__).resolve().parents[2]


class Cfg(BaseModel):
    rows: int = 1000


def make(inputs, cfg, out, progress):
    for i in range(2):
        pq.write_table(pa.table({"n": list(range(cfg.rows))}), out / f"part-{i}.parquet")
    return {"rows": 2 * cfg.rows}


def use(inputs, cfg, out, progress):
    (out / "copy.txt").write_text(str(load_manifest(inputs["source"]).stats))
    return {}


def verify(root: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", "verify", root], cwd=ROOT, env={**os.environ, "COLUMNS": "300", **(env or {})},
                          capture_output=True, text=True, timeout=120)


def test_verify_names_each_file_that_differs_from_its_manifest(tmp_path):
    first = run_stage("make", 1, make, {}, Cfg(), tmp_path)
    run_stage("use", 1, use, {"source": str(first)}, Cfg(), tmp_path)
    ok = verify(str(tmp_path))
    assert ok.returncode == 0 and "2 datasets checked, 0 with files that differ" in ok.stdout, ok.stdout + ok.stderr

    part = first / "part-0.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit: same size, other bytes
    part.write_bytes(bytes(data))
    (first / "part-1.parquet").unlink()
    bad = verify(str(tmp_path))
    assert bad.returncode == 1
    assert f"{part}: SHA-256" in bad.stdout and f"{first / 'part-1.parquet'}: missing" in bad.stdout, bad.stdout
    assert "1 with files that differ" in bad.stdout


def test_a_stage_refuses_an_input_whose_files_changed_size(tmp_path):
    first = run_stage("make", 1, make, {}, Cfg(), tmp_path)
    part = first / "part-0.parquet"
    part.write_bytes(part.read_bytes()[:-100])  # truncated behind the manifest's back
    with pytest.raises(ValueError, match=r"part-0.parquet has \d+ bytes, its manifest says \d+"):
        run_stage("use", 1, use, {"source": str(first)}, Cfg(), tmp_path)  # before: read whatever was there


def test_verify_reads_an_object_store_root(tmp_path, s3_server):
    s3_server.make_bucket("verify")
    env = {**s3_server.env, "LLMILL_CACHE_DIR": str(tmp_path / "cache")}
    writer = "from tests.faults.test_verify import Cfg, make\nfrom tasks.stage import run_stage\nrun_stage('make', 1, make, {}, Cfg(), 's3://verify/root')"
    done = subprocess.run([sys.executable, "-c", writer], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert verify("s3://verify/root", env).returncode == 0
    fs = s3_server.filesystem()
    (key,) = [k for k in fs.find("verify/root") if k.endswith("part-1.parquet")]
    fs.pipe_file(key, b"not the committed bytes")
    bad = verify("s3://verify/root", env)
    assert bad.returncode == 1 and "part-1.parquet:" in bad.stdout and "bytes, the manifest says" in bad.stdout, bad.stdout
