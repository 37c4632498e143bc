"""How a training run is spread over its processes: a strategy object owns the wrapped and
bare model, backward, gradient clipping, autocast, no-sync micro-steps and the checkpoint state,
so the training loop (model/train.py) never branches on how the model is sharded.

- AccelerateStrategy: one process, DDP, and FSDP on GPUs (Accelerate's FSDP2 plugin): Accelerate
  prepares the model and optimizer and drives backward, clipping and autocast; its own
  save_state/load_state hold the checkpoint state.
- CpuFsdp2Strategy: FSDP2 on CPU, which Accelerate ignores (it would treat the model as plain
  DDP): torch's `fully_shard` per block on a gloo mesh; backward, clipping and autocast are ours;
  checkpoints hold full (gathered) weights and optimizer state, so they load on any world size.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import torch
import torch.distributed as dist

from model.config import TrainConfig


class WorldError(RuntimeError):
    pass


def check_world(accelerator, tc: TrainConfig) -> None:
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise WorldError(
            f"the launcher started {launched} processes but each sees a world of {accelerator.num_processes}: "
            "they would train independently. On CPU launch with ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N "
            "(llmill does this); `accelerate launch --cpu --num_processes N` starts only one process."
        )
    if accelerator.num_processes != tc.num_processes:
        raise WorldError(f"asked for {tc.num_processes} processes, the launch gave {accelerator.num_processes}")
    if tc.distributed == "none" and tc.num_processes > 1:
        raise WorldError("train.num_processes > 1 needs train.distributed: ddp or fsdp")


def local_fraction(model: torch.nn.Module) -> float:
    """Share of the parameters' elements this process holds (1.0 when nothing is sharded)."""
    local = total = 0
    for p in model.parameters():
        total += p.numel()
        local += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
    return local / max(total, 1)


def is_sharded(model: torch.nn.Module) -> bool:
    """Parameters are DTensors: FSDP2 sharded them, ours on CPU or Accelerate's on GPUs. Every
    rank then takes part in each forward and in gathering a full state dict."""
    return any(hasattr(p, "to_local") for p in model.parameters())


def full_state_dict(model) -> dict[str, torch.Tensor]:
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def weight_digest(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(full_state_dict(model).items()):
        h.update(k.encode())
        h.update(v.float().numpy().tobytes())
    return h.hexdigest()[:16]


class AccelerateStrategy:
    def __init__(self, accelerator, tc: TrainConfig, precision: str):
        self.acc = accelerator
        self.tc = tc
        self.precision = precision
        self.world = accelerator.num_processes
        self.model = self.bare = None

    def shard(self, model):
        """Before the optimizer exists: the model as this strategy shards it (here: as it is)."""
        return model

    def prepare(self, model, optimizer):
        """The model and optimizer, made ready for this strategy; `bare` is the model itself
        (for weights and compile), `gathered` whether its parameters are sharded DTensors."""
        self.model, optimizer = self.acc.prepare(model, optimizer)
        self.bare = self.acc.unwrap_model(self.model)
        self.gathered = is_sharded(self.bare)
        return self.model, optimizer

    def micro_step(self, last: bool):
        """No gradient sync on a DDP micro-step that is not the last of its step."""
        return self.acc.no_sync(self.model) if not (last or self.world == 1) else contextlib.nullcontext()

    def autocast(self):
        return self.acc.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        self.acc.backward(loss)

    def clip(self, max_norm: float) -> float:
        norm = self.acc.clip_grad_norm_(self.model.parameters(), max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # a DTensor under FSDP2

    def save_state(self, tmp: Path, optimizer) -> None:
        """Everything a resume needs, into the checkpoint directory being written (every rank calls)."""
        self.acc.save_state(str(tmp))

    def load_state(self, path: Path, optimizer) -> None:
        self.acc.load_state(str(path))


class CpuFsdp2Strategy(AccelerateStrategy):
    def shard(self, model):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    def prepare(self, model, optimizer):
        # FSDP2 already wraps the model; Accelerate would treat it as plain DDP on CPU
        self.model = self.bare = model
        self.gathered = is_sharded(model)
        return model, optimizer

    def micro_step(self, last: bool):
        return contextlib.nullcontext()  # FSDP2 reduces gradients in every backward

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16" else self.acc.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip(self, max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def save_state(self, tmp: Path, optimizer) -> None:
        from safetensors.torch import save_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        acc = self.acc
        weights = full_state_dict(self.model)
        optim = get_optimizer_state_dict(self.model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if acc.is_main_process:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
            torch.save(optim, tmp / "optimizer.pt")
        acc.wait_for_everyone()
        torch.save({"torch": torch.get_rng_state()}, tmp / f"rng_{acc.process_index}.pt")

    def load_state(self, path: Path, optimizer) -> None:
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
        set_model_state_dict(self.model, load_file(str(path / "model.safetensors")), options=opts)
        optim = torch.load(path / "optimizer.pt", weights_only=True)
        set_optimizer_state_dict(self.model, optimizer, optim, options=opts)
        rng = path / f"rng_{self.acc.process_index}.pt"
        if rng.exists():  # absent when resumed on more processes than were saved
            torch.set_rng_state(torch.load(rng, weights_only=True)["torch"])


def create_strategy(tc: TrainConfig, precision: str, cpu: bool, out: Path, trackers: list[str] | None):
    """The Accelerator for this launch (checked against the world asked for) and the strategy."""
    from accelerate import Accelerator

    plugin = None
    if tc.distributed == "fsdp" and not cpu:
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=["Block"]
        )
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision, fsdp_plugin=plugin, log_with=trackers, project_dir=str(out))
    check_world(accelerator, tc)
    if tc.distributed == "fsdp" and not cpu and accelerator.distributed_type.name != "FSDP":
        raise WorldError(f"FSDP was asked for but Accelerate set up {accelerator.distributed_type.name}")
    kind = CpuFsdp2Strategy if tc.distributed == "fsdp" and cpu else AccelerateStrategy
    return kind(accelerator, tc, precision)

