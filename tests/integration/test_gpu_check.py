"""bench/gpu_check.sh's script, run on CPU processes: the same launch, report and figures as on
a GPU machine, so the prepared check is known to work before a GPU is at hand."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_check import peak_tflops
from model.train import effective_precision

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def test_peak_is_looked_up_by_device_name():
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("Tesla T4") is None


def test_without_a_gpu_it_refuses_unless_asked_for_cpu(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "no GPU visible" in proc.stderr
    assert not (tmp_path / "gpu-check.json").exists()
    bad = subprocess.run([sys.executable, str(SCRIPT), "--allow-cpu", "--modes", "ddp,zero3", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--modes takes" in bad.stderr and "zero3" in bad.stderr
    assert not (tmp_path / "shards").exists()


@pytest.mark.trainer
def test_ddp_and_fsdp_on_two_cpu_processes_report_throughput_and_mfu(tmp_path):
    out = tmp_path / "gpu"
    cmd = [sys.executable, str(SCRIPT), "--allow-cpu", "--out", str(out), "--preset", "test-tiny", "--vocab", "512", "--steps", "4",
           "--log-every", "2", "--micro-batch", "4", "--seq-len", "64", "--train-tokens", "100000", "--processes", "2",
           "--peak-tflops", "10"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["precision"] == "bf16" and report["compile"] is True
    # the reference matmul is timed in the precision the trainer computes in: bf16, or fp32 on a
    # CPU without native bf16, where the trainer falls back to fp32 (model/train.py)
    dtype = report["matmul_dtype"]
    assert dtype == ("bf16" if effective_precision("bf16", cpu=True)[0] == "bf16" else "fp32")
    assert report[f"{dtype}_matmul_tflops"] > 0
    by_mode = {r["mode"]: r for r in report["results"]}
    assert set(by_mode) == {"ddp", "fsdp"}
    for mode, r in by_mode.items():
        assert "error" not in r, r
        assert r["world"] == 2 and r["distributed"] == mode
        assert r["tokens_per_s"] > 0
        # CPU processes share one machine: MFU is against one device's peak
        assert abs(r["mfu"] - r["model_tflops"] / 10) < 1e-3
        assert r["computed_in"] == {"bf16": "bf16", "fp32": "no"}[dtype]
        assert 0 < r[f"share_of_{dtype}_matmul"] < 1
    assert by_mode["ddp"]["local_param_fraction"] == 1.0
    assert by_mode["fsdp"]["local_param_fraction"] < 0.6  # each rank holds its shard
    assert (out / "run-fsdp" / "final" / "model.safetensors").is_file()  # full weights gathered from the shards

    # a rerun into the same directory measures afresh instead of resuming the finished run (one
    # process: resuming the finished 4 steps would log no throughput and fail the mode)
    rerun = subprocess.run([*cmd, "--modes", "ddp", "--precision", "no", "--no-compile", "--processes", "1"], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    again = json.loads((out / "gpu-check.json").read_text())["results"]
    assert [r["mode"] for r in again] == ["ddp"] and again[0]["tokens_per_s"] > 0
