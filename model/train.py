"""The training loop, run by `accelerate launch` / torchrun / plain python (see model/launch.py).

    python -m model.train --spec run.json

Accelerate provides devices, mixed precision, DDP, FSDP on GPUs, trackers and checkpoint
state. What it lacks here is added: a world-size check (a launch that gives independent
processes is refused), FSDP2 sharding on CPU (Accelerate ignores its plugin there), an
index-based sampler whose position is the step, and an exact resume.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict

from formats.jsonl import cut_torn_tail, read_records
from model.config import HeadSpec, TrainConfig, usable_cpus
from model.llama import ModelConfig, load_word_vectors, param_groups
from model.objectives import make_objective
from model.token_windows import step_slice


class RunSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: ModelConfig
    train: TrainConfig
    shards: str = ""  # tokenize dataset: train/ and val/ (objective lm)
    tokenizer: str  # sentencepiece model file
    objective: Literal["lm", "sft", "classify"] = "lm"
    examples: str = ""  # examples dataset: train.arrow, val.arrow (objectives sft, classify)
    head: HeadSpec = HeadSpec()
    out: str
    val_bytes_per_token: float = 0.0  # UTF-8 bytes per token of the val split, for bits per byte
    init_from: str = ""  # safetensors weights to start from (continued pretraining, fine-tuning)
    debug_weight_digests: bool = False  # tests: per-rank digests of weights and data after each step


class WorldError(RuntimeError):
    pass


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warmup, then cosine to min_lr, or warmup-stable-decay (WSD)."""
    if tc.warmup_steps and step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    floor = tc.lr * tc.min_lr_ratio
    if tc.schedule == "cosine":
        progress = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
        return floor + (tc.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    decay_start = int(tc.steps * (1 - tc.decay_fraction))
    if step < decay_start:
        return tc.lr
    return tc.lr - (tc.lr - floor) * (step - decay_start) / max(1, tc.steps - decay_start)


def cpu_has_native_bf16() -> bool:
    """oneDNN has bf16 matmul kernels only with AVX-512 (or AMX); elsewhere bf16 is emulated."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def effective_precision(requested: str, cpu: bool, native_bf16: bool | None = None) -> tuple[str, str]:
    """The precision a run computes in, and why it differs from the one asked for ("" if not).

    bf16 on a CPU without native bf16 runs oneDNN's reference path: a bf16 step of the demo
    model took 37 s against 2.3 s in fp32 on a 2-core AVX2 EPYC (bench/RESULTS.md), so such a
    run trains in fp32 and says so. LLMILL_CPU_BF16=1 keeps bf16 there anyway.
    """
    if not (cpu and requested == "bf16") or os.environ.get("LLMILL_CPU_BF16") == "1":
        return requested, ""
    if native_bf16 is None:
        native_bf16 = cpu_has_native_bf16()
    if native_bf16:
        return requested, ""
    return "no", "bf16 asked for, but this CPU has no native bf16 matmul (AVX-512/AMX): training in fp32"


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


def minimized(metric: str) -> bool:
    return metric.endswith(("loss", "ppl", "bpb"))


def shard_fsdp2_cpu(model) -> None:
    """FSDP2 on a gloo CPU mesh: each block, then the root, sharded for real."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


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


class Checkpoints:
    """step-NNNNNN/ directories, each complete before it is renamed into place."""

    def __init__(self, out: Path, accelerator, keep: int):
        from model.mirror import mirror_url

        self.out = out
        self.dir = out / "checkpoints"
        self.acc = accelerator
        self.keep = keep
        self.mirror = mirror_url(out)  # the object store the run's checkpoints are copied to (model/mirror.py)

    def latest(self) -> Path | None:
        done = sorted(p for p in self.dir.glob("step-*") if (p / "trainer_state.json").exists())
        if done or self.mirror is None:
            return done[-1] if done else None
        # none here: a run killed on another node may have left some on the object store
        if self.acc.is_local_main_process:
            from model.mirror import pull_latest

            self.dir.mkdir(parents=True, exist_ok=True)
            pull_latest(self.mirror, self.dir, self.out)
        self.acc.wait_for_everyone()
        done = sorted(p for p in self.dir.glob("step-*") if (p / "trainer_state.json").exists())
        return done[-1] if done else None

    def save(self, step: int, state: dict, model, optimizer, sharded: bool) -> None:
        acc = self.acc
        final = self.dir / f"step-{step:06d}"
        tmp = self.dir / f".step-{step:06d}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        if sharded:
            from safetensors.torch import save_file
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            weights = full_state_dict(model)
            optim = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if acc.is_main_process:
                save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
                torch.save(optim, tmp / "optimizer.pt")
            acc.wait_for_everyone()
            torch.save({"torch": torch.get_rng_state()}, tmp / f"rng_{acc.process_index}.pt")
        else:
            acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / "trainer_state.json").write_text(json.dumps(state))
            os.replace(tmp, final)
            for old in sorted(p for p in self.dir.glob("step-*") if p.is_dir())[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
            if self.mirror is not None:
                from model.mirror import push

                push(final, self.out / "metrics.jsonl", self.mirror, self.keep)
        acc.wait_for_everyone()

    def load(self, path: Path, model, optimizer, sharded: bool, model_cfg: ModelConfig, signature: dict) -> dict:
        state = json.loads((path / "trainer_state.json").read_text())
        if state.get("model_config") != model_cfg.model_dump(mode="json"):
            raise ValueError(
                f"checkpoint {path} was written for another model config; "
                f"it has {state.get('model_config')}, this run has {model_cfg.model_dump(mode='json')}. "
                "Start a new run directory or restore the config."
            )
        if state.get("signature", {"objective": "lm"}) != signature:
            raise ValueError(f"checkpoint {path} was written for another objective: {state.get('signature')}, this run is {signature}")
        if sharded:
            from safetensors.torch import load_file
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

            opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
            set_model_state_dict(model, load_file(str(path / "model.safetensors")), options=opts)
            optim = torch.load(path / "optimizer.pt", weights_only=True)
            set_optimizer_state_dict(model, optimizer, optim, options=opts)
            rng = path / f"rng_{self.acc.process_index}.pt"
            if rng.exists():  # absent when resumed on more processes than were saved
                torch.set_rng_state(torch.load(rng, weights_only=True)["torch"])
        else:
            self.acc.load_state(str(path))
        return state


def save_weights(model, dest: Path, mc: ModelConfig, main: bool, extra: dict | None = None) -> None:
    """Full weights as safetensors (every rank takes part in gathering; rank 0 writes)."""
    from safetensors.torch import save_file

    weights = full_state_dict(model)
    if not main:
        return
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tied = {k for k in weights if k.endswith("lm_head.weight")} if mc.tie_embeddings else set()
    save_file({k: v.contiguous() for k, v in weights.items() if k not in tied}, str(tmp / "model.safetensors"))
    (tmp / "model_config.json").write_text(mc.model_dump_json(indent=2))
    if extra:
        (tmp / "info.json").write_text(json.dumps(extra, indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def train(spec: RunSpec) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    tc, mc = spec.train, spec.model
    out = Path(spec.out)
    cpu = not torch.cuda.is_available()
    threads = tc.threads_per_process or max(1, usable_cpus() // tc.num_processes)
    torch.set_num_threads(threads)
    sharded_cpu = tc.distributed == "fsdp" and cpu
    plugin = None
    if tc.distributed == "fsdp" and not cpu:
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=["Block"]
        )
    trackers = [t for t in tc.trackers if t] or None
    precision, precision_note = effective_precision(tc.mixed_precision, cpu)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=precision,
        fsdp_plugin=plugin,
        log_with=trackers,
        project_dir=str(out),
    )
    check_world(accelerator, tc)
    if precision_note:
        accelerator.print(f"note: {precision_note}")
    if tc.distributed == "fsdp" and not cpu and accelerator.distributed_type.name != "FSDP":
        raise WorldError(f"FSDP was asked for but Accelerate set up {accelerator.distributed_type.name}")
    set_seed(tc.seed)
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)

    seq_len = tc.seq_len or mc.max_seq_len
    if seq_len > mc.max_seq_len:
        raise ValueError(f"train.seq_len {seq_len} exceeds model.max_seq_len {mc.max_seq_len}")
    objective = make_objective(spec, seq_len)
    model = objective.build()
    body = objective.body(model)
    n_params = sum(p.numel() for p in model.parameters())
    if spec.init_from:
        from model.export import load_weights

        load_weights(body, spec.init_from)
    elif tc.init_word_vectors:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=spec.tokenizer)
        matched = load_word_vectors(body, [sp.id_to_piece(i) for i in range(sp.get_piece_size())], tc.init_word_vectors, tc.seed)
        accelerator.print(f"embeddings: {matched} pieces initialized from {tc.init_word_vectors}")
    objective.prepare(model)
    body.gradient_checkpointing = tc.gradient_checkpointing
    if sharded_cpu:
        shard_fsdp2_cpu(model)
    groups = param_groups(model, tc.weight_decay, head_prefix="head." if spec.objective == "classify" else None,
                          head_lr_scale=spec.head.head_lr_scale)
    if tc.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=tc.lr, betas=tc.betas, fused=False)
    else:
        optimizer = torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum)
    if sharded_cpu:
        pass  # FSDP2 already wraps the model; Accelerate would treat it as plain DDP on CPU
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    # `sharded`: we drive FSDP2 ourselves (backward, autocast, clipping, checkpoints), since
    # Accelerate will not on CPU. `gathered`: parameters are DTensors, whoever sharded them.
    sharded = sharded_cpu
    bare = model if sharded else accelerator.unwrap_model(model)
    gathered = is_sharded(bare)
    if tc.compile:  # in place, so state dicts keep their names (no `_orig_mod.` prefix)
        bare.compile()

    ckpts = Checkpoints(out, accelerator, tc.keep_checkpoints)
    select, lower_is_better = tc.select_metric, minimized(tc.select_metric)
    step, best, best_step, bad_evals = 0, float("inf") if lower_is_better else float("-inf"), 0, 0
    resumed_from = ckpts.latest()
    resumed_at = 0
    if resumed_from is not None:
        state = ckpts.load(resumed_from, model, optimizer, sharded, mc, objective.signature())
        step, bad_evals = state["step"], state["bad_evals"]
        best, best_step = state.get("best_metric", best), state.get("best_step", 0)
        resumed_at = step
        accelerator.print(f"resumed from {resumed_from} at step {step}")
    metrics_path = out / "metrics.jsonl"
    if main:
        if metrics_path.exists():  # a line torn by the kill is cut; lines from after the checkpoint resumed from are dropped
            cut_torn_tail(metrics_path)
            keep = [r for r in read_records(metrics_path) if r["step"] <= step]
            metrics_path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        (out / "model_config.json").write_text(mc.model_dump_json(indent=2))
    if trackers:
        accelerator.init_trackers("pretrain", config={"lr": tc.lr, "steps": tc.steps, "micro_batch_size": tc.micro_batch_size})
    world, rank = accelerator.num_processes, accelerator.process_index
    tokens_per_step = tc.micro_batch_size * tc.grad_accum * world * seq_len
    accelerator.print(
        json.dumps(
            {
                "event": "start",
                "world": world,
                "distributed": tc.distributed,
                "precision": precision,
                "params": n_params,
                "local_param_fraction": local_fraction(model),
                "step": step,
                "tokens_per_step": tokens_per_step,
                "objective": spec.objective,
            }
        ),
        flush=True,
    )
    debug = open(out / f"debug-rank{rank}.jsonl", "a") if spec.debug_weight_digests else None
    model.train()
    started, last_log = time.time(), time.time()

    def log(record: dict) -> None:
        if main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps({"event": "metrics", **record}), flush=True)
        numeric = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if trackers:
            accelerator.log(numeric, step=record["step"])

    stopped_early = False
    final_eval: dict = {}
    while step < tc.steps:
        lr = lr_at(step, tc)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        loss_sum = torch.zeros((), dtype=torch.float64)
        for micro in range(tc.grad_accum):
            first = step_slice(step, micro, rank, world, tc.micro_batch_size, tc.grad_accum)
            batch = tuple(t.to(accelerator.device) for t in objective.batch(first, tc.micro_batch_size))
            sync = micro == tc.grad_accum - 1 or sharded or world == 1
            ctx = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
            with ctx:
                if sharded and precision == "bf16":
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        loss = objective.loss(model, batch)
                else:
                    with accelerator.autocast():
                        loss = objective.loss(model, batch)
                if sharded:
                    (loss / tc.grad_accum).backward()
                else:
                    accelerator.backward(loss / tc.grad_accum)
            loss_sum += float(loss.detach())
            if debug is not None:
                debug_first = first
        if tc.grad_clip > 0:
            if sharded:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            else:
                norm = accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # a DTensor under FSDP2
        else:
            grad_norm = float("nan")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        mean_loss = torch.tensor([float(loss_sum) / tc.grad_accum], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(mean_loss)
            mean_loss /= world
        if debug is not None:
            debug.write(json.dumps({"step": step, "first_sample": debug_first, "weights": weight_digest(bare), "local_loss": float(loss_sum) / tc.grad_accum}) + "\n")
            debug.flush()
        if step % tc.log_every == 0 or step == tc.steps:
            now = time.time()
            log({"step": step, "loss": float(mean_loss), "lr": lr, "grad_norm": grad_norm, "tokens": step * tokens_per_step,
                 "tokens_per_s": tokens_per_step * tc.log_every / max(now - last_log, 1e-9), "elapsed_s": now - started})
            last_log = now
        if step % tc.eval_every == 0 or step == tc.steps:
            model.eval()
            # Sharded weights need every rank in every forward, so then each rank scores every example.
            final_eval = objective.evaluate(model, accelerator, *((0, 1) if gathered else (rank, world)))
            model.train()
            if final_eval:
                log({"step": step, **final_eval})
                if select not in final_eval:
                    raise ValueError(f"train.select_metric {select!r} is not one of the validation metrics {sorted(final_eval)}")
                value = final_eval[select]
                if (value < best - 1e-6) if lower_is_better else (value > best + 1e-6):
                    best, best_step, bad_evals = value, step, 0
                    save_weights(bare, out / "best", mc, main,
                                 {"step": step, select: value})
                else:
                    bad_evals += 1
                if tc.early_stopping_patience and bad_evals >= tc.early_stopping_patience:
                    stopped_early = True
        if step % tc.checkpoint_every == 0 or step == tc.steps or stopped_early:
            state = {"step": step, "best_metric": best, "best_step": best_step, "bad_evals": bad_evals, "signature": objective.signature(), "samples_seen": step * tc.micro_batch_size * tc.grad_accum * world,
                     "model_config": mc.model_dump(mode="json"), "world": world}
            ckpts.save(step, state, model, optimizer, sharded)
        if stopped_early:
            accelerator.print(json.dumps({"event": "early_stop", "step": step, "best_step": best_step, select: best}), flush=True)
            break

    summary = {"steps": step, "stopped_early": stopped_early, "select_metric": select, "best_metric": best, "best_step": best_step,
               **final_eval, "world": world, "precision": precision, "tokens_seen": step * tokens_per_step, "seconds": time.time() - started,
               "resumed_at_step": resumed_at}
    save_weights(bare, out / "final", mc, main)
    if main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps({"event": "done", **summary}), flush=True)
    if debug is not None:
        debug.close()
    if world > 1 and dist.is_initialized():
        dist.barrier()  # FSDP2 on gloo: every rank done before the group goes
    accelerator.end_training()
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spec", required=True, help="RunSpec JSON file")
    args = ap.parse_args(argv)
    spec = RunSpec.model_validate_json(Path(args.spec).read_text())
    try:
        train(spec)
    except (WorldError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
