"""Start the trainer as a subprocess with the launcher its world needs.

- 1 process: plain `python -m model.train`.
- N processes on GPUs: `accelerate launch --num_processes N` (multi-node: add
  --num_machines/--machine_rank/--main_process_ip as Accelerate documents).
- N processes on CPU: `ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N`. (`accelerate launch
  --cpu --num_processes N` starts ONE process; torchrun without ACCELERATE_USE_CPU gives N
  independent trainings. The trainer checks the world it got and refuses either.)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Callable

from model.config import usable_cpus
from model.train import RunSpec


class TrainingFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(spec_file: Path, spec: RunSpec, gpus: int | None = None) -> tuple[list[str], dict]:
    import torch

    tc = spec.train
    n = tc.num_processes
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(tc.threads_per_process or max(1, usable_cpus() // n))}
    train = ["-m", "model.train", "--spec", str(spec_file)]
    gpus = torch.cuda.device_count() if gpus is None else gpus
    if gpus and (n > 1 or tc.distributed == "fsdp"):
        accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
        cmd = [accelerate, "launch", "--num_processes", str(n), "--num_machines", "1", "--mixed_precision", tc.mixed_precision,
               "--main_process_port", str(free_port())]
        if tc.distributed == "fsdp":
            cmd += ["--use_fsdp", "--fsdp_version", "2"]
        return [*cmd, *train], env
    if n == 1:
        return [sys.executable, *train], env
    env["ACCELERATE_USE_CPU"] = "1"
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), *train], env


def run_training(spec: RunSpec, on_event: Callable[[dict], None] | None = None, on_line: Callable[[str], None] | None = None) -> dict:
    """Run the trainer to completion, passing each JSON event line to `on_event`."""
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / "run.json"
    spec_file.write_text(spec.model_dump_json(indent=2))
    cmd, env = launch_command(spec_file, spec)
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        if on_line:
            on_line(line)
        if line.startswith("{") and on_event:
            try:
                on_event(json.loads(line))
            except json.JSONDecodeError:
                pass
    code = proc.wait()
    if code != 0:
        errors = [l for l in tail if l.startswith("error:")]
        raise TrainingFailed(errors[-1] if errors else f"training exited with {code}:\n" + "\n".join(tail))
    return json.loads((out / "summary.json").read_text())
