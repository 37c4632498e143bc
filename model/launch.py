"""Start the trainer as a subprocess with the launcher its world needs.

- 1 process: plain `python -m model.train`.
- N processes on GPUs: `accelerate launch --num_processes N` (multi-node: add
  --num_machines/--machine_rank/--main_process_ip as Accelerate documents).
- N processes on CPU: `ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N`. (`accelerate launch
  --cpu --num_processes N` starts ONE process; torchrun without ACCELERATE_USE_CPU gives N
  independent trainings. The trainer checks the world it got and refuses either.)
- M machines (`Nodes`: this machine's rank, the main machine's address): the same launchers
  with Accelerate's --num_machines/--machine_rank/--main_process_ip/--main_process_port on
  GPUs, torchrun's --nnodes/--node_rank/--master_addr/--master_port (a static rendezvous:
  machine rank 0 holds global rank 0) on CPUs. `train.num_processes` is the whole world, as
  in Accelerate; each machine starts num_processes / num_machines. Run on every machine:
  `python -m model.launch --spec run.json --num-machines M --machine-rank R --main-process-ip HOST`.
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

from pydantic import BaseModel, Field

from model.config import RunSpec, usable_cpus


class TrainingFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nodes(BaseModel):
    """This machine's part in a multi-machine launch."""

    num_machines: int = Field(ge=2)
    machine_rank: int = Field(ge=0)
    main_process_ip: str = Field(min_length=1)
    main_process_port: int = Field(29500, ge=1, le=65535)


def launch_command(spec_file: Path, spec: RunSpec, gpus: int | None = None, nodes: Nodes | None = None) -> tuple[list[str], dict]:
    tc = spec.train
    n = tc.num_processes
    machines = nodes.num_machines if nodes else 1
    if n % machines or (nodes and nodes.machine_rank >= machines):
        raise ValueError(f"train.num_processes ({n}) must be a multiple of the {machines} machines, each with a rank below it")
    here = n // machines
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(tc.threads_per_process or max(1, usable_cpus() // here))}
    train = ["-m", "model.train", "--spec", str(spec_file)]
    if gpus is None and (n > 1 or tc.distributed == "fsdp"):  # one plain process needs no count: no torch import here
        import torch

        gpus = torch.cuda.device_count()
    if gpus and (n > 1 or tc.distributed == "fsdp"):
        accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
        cmd = [accelerate, "launch", "--num_processes", str(n), "--num_machines", str(machines), "--mixed_precision", tc.mixed_precision]
        if nodes:
            cmd += ["--machine_rank", str(nodes.machine_rank), "--main_process_ip", nodes.main_process_ip,
                    "--main_process_port", str(nodes.main_process_port)]
        else:
            cmd += ["--main_process_port", str(free_port())]
        if tc.distributed == "fsdp":
            cmd += ["--use_fsdp", "--fsdp_version", "2"]
        return [*cmd, *train], env
    if n == 1:
        return [sys.executable, *train], env
    env["ACCELERATE_USE_CPU"] = "1"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(here)]
    if nodes:
        torchrun += ["--nnodes", str(machines), "--node_rank", str(nodes.machine_rank), "--master_addr", nodes.main_process_ip,
                     "--master_port", str(nodes.main_process_port)]
    else:
        torchrun += ["--standalone"]
    return [*torchrun, *train], env


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace_s`."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
    # in this process's group, so killing the group of a run stops its training too; when only this
    # process is interrupted (a task timeout), the launcher is stopped here (torchrun passes the
    # SIGTERM on to its ranks) instead of training on, orphaned
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    try:
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
    except BaseException:
        stop(proc)
        raise
    if code != 0:
        errors = [l for l in tail if l.startswith("error:")]
        raise TrainingFailed(errors[-1] if errors else f"training exited with {code}:\n" + "\n".join(tail))
    return json.loads((out / "summary.json").read_text())


def main(argv: list[str] | None = None) -> int:
    """One machine's part of a multi-machine training: the launcher, run with this machine's rank."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--spec", required=True, help="the run.json llmill wrote into the run directory")
    ap.add_argument("--num-machines", type=int, required=True)
    ap.add_argument("--machine-rank", type=int, required=True)
    ap.add_argument("--main-process-ip", required=True, help="the address of the machine with rank 0")
    ap.add_argument("--main-process-port", type=int, default=29500)
    args = ap.parse_args(argv)
    spec_file = Path(args.spec).resolve()
    spec = RunSpec.model_validate_json(spec_file.read_text())
    nodes = Nodes(num_machines=args.num_machines, machine_rank=args.machine_rank, main_process_ip=args.main_process_ip,
                  main_process_port=args.main_process_port)
    try:
        cmd, env = launch_command(spec_file, spec, nodes=nodes)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
    return subprocess.call(cmd, cwd=root, env=env)


if __name__ == "__main__":
    sys.exit(main())
