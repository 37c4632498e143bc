"""The training loop, run by `accelerate launch` / torchrun / plain python (see model/launch.py).

    python -m model.train --spec run.json

Accelerate provides devices, mixed precision, DDP, FSDP on GPUs, trackers and checkpoint
state. What it lacks here is added: a world-size check (a launch that gives independent
processes is refused), FSDP2 sharding on CPU (Accelerate ignores its plugin there), an
index-based sampler whose position is the step, and an exact resume.

How the model is spread over processes is the strategy's (model/parallel.py); checkpoints and
weights on disk are model/checkpoints.py's. Here: setup, one step, evaluate-and-select, finish.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from formats.jsonl import cut_torn_tail, read_records
from model.checkpoints import Checkpoints, save_weights
from model.config import RunSpec, TrainConfig, usable_cpus
from model.llama import load_word_vectors, param_groups
from model.objectives import make_objective
from model.parallel import AccelerateStrategy, WorldError, create_strategy, local_fraction, weight_digest
from model.token_windows import step_slice


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


def minimized(metric: str) -> bool:
    return metric.endswith(("loss", "ppl", "bpb"))


@dataclass
class Run:
    """A training run in progress: what setup made, and the state the loop advances."""

    spec: RunSpec
    acc: object  # accelerate.Accelerator
    strategy: AccelerateStrategy
    objective: object
    model: torch.nn.Module  # as the strategy wrapped it
    optimizer: torch.optim.Optimizer
    ckpts: Checkpoints
    precision: str
    seq_len: int
    metrics_path: Path
    trackers: list[str] | None
    step: int = 0
    best: float = 0.0
    best_step: int = 0
    bad_evals: int = 0
    resumed_at: int = 0
    stopped_early: bool = False
    final_eval: dict = field(default_factory=dict)
    started: float = 0.0
    last_log: float = 0.0
    debug: object = None
    params: int = 0  # the whole model's, whatever share of it this rank holds

    @property
    def tc(self) -> TrainConfig:
        return self.spec.train

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    @property
    def tokens_per_step(self) -> int:
        return self.tc.micro_batch_size * self.tc.grad_accum * self.acc.num_processes * self.seq_len

    def log(self, record: dict) -> None:
        if self.main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps({"event": "metrics", **record}), flush=True)
        if self.trackers:
            self.acc.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}, step=record["step"])


def setup(spec: RunSpec) -> Run:
    """The launch checked, the model built (from its initial weights) and made ready for the
    strategy, the optimizer, and the state of the checkpoint it resumes from, if any."""
    from accelerate.utils import set_seed

    tc, mc = spec.train, spec.model
    out = Path(spec.out)
    cpu = not torch.cuda.is_available()
    torch.set_num_threads(tc.threads_per_process or max(1, usable_cpus() // tc.num_processes))
    trackers = [t for t in tc.trackers if t] or None
    precision, precision_note = effective_precision(tc.mixed_precision, cpu)
    strategy = create_strategy(tc, precision, cpu, out, trackers)
    acc = strategy.acc
    if precision_note:
        acc.print(f"note: {precision_note}")
    set_seed(tc.seed)
    if acc.is_main_process:
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
        acc.print(f"embeddings: {matched} pieces initialized from {tc.init_word_vectors}")
    objective.prepare(model)
    body.gradient_checkpointing = tc.gradient_checkpointing
    model = strategy.shard(model)  # before the optimizer: it must hold the sharded parameters
    groups = param_groups(model, tc.weight_decay, head_prefix="head." if spec.objective == "classify" else None,
                          head_lr_scale=spec.head.head_lr_scale)
    if tc.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=tc.lr, betas=tc.betas, fused=False)
    else:
        optimizer = torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum)
    model, optimizer = strategy.prepare(model, optimizer)
    if tc.compile:
        objective.body(strategy.bare).compile_blocks()

    run = Run(spec, acc, strategy, objective, model, optimizer, Checkpoints(out, strategy, tc.keep_checkpoints), precision, seq_len,
              out / "metrics.jsonl", trackers, best=float("inf") if minimized(tc.select_metric) else float("-inf"), params=n_params)
    resumed_from = run.ckpts.latest()
    if resumed_from is not None:
        state = run.ckpts.load(resumed_from, optimizer, mc, objective.signature())
        run.step, run.bad_evals = state["step"], state["bad_evals"]
        run.best, run.best_step = state.get("best_metric", run.best), state.get("best_step", 0)
        run.resumed_at = run.step
        acc.print(f"resumed from {resumed_from} at step {run.step}")
    if run.main:
        if run.metrics_path.exists():  # a line torn by the kill is cut; lines from after the checkpoint resumed from are dropped
            cut_torn_tail(run.metrics_path)
            keep = [r for r in read_records(run.metrics_path) if r["step"] <= run.step]
            run.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        (out / "model_config.json").write_text(mc.model_dump_json(indent=2))
    if trackers:
        acc.init_trackers("pretrain", config={"lr": tc.lr, "steps": tc.steps, "micro_batch_size": tc.micro_batch_size})
    acc.print(json.dumps({"event": "start", "world": acc.num_processes, "distributed": tc.distributed, "precision": precision,
                          "params": n_params, "local_param_fraction": local_fraction(model), "step": run.step,
                          "tokens_per_step": run.tokens_per_step, "objective": spec.objective}), flush=True)
    if spec.debug_weight_digests:
        run.debug = open(out / f"debug-rank{acc.process_index}.jsonl", "a")
    return run


def train_step(run: Run) -> None:
    """One optimizer step: its micro-steps (each rank its own slice of the global batch), clipping,
    the update, and the step's log line."""
    tc, strategy, world, rank = run.tc, run.strategy, run.acc.num_processes, run.acc.process_index
    lr = lr_at(run.step, tc)
    for g in run.optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    loss_sum = torch.zeros((), dtype=torch.float64)
    for micro in range(tc.grad_accum):
        first = step_slice(run.step, micro, rank, world, tc.micro_batch_size, tc.grad_accum)
        batch = tuple(t.to(run.acc.device) for t in run.objective.batch(first, tc.micro_batch_size))
        with strategy.micro_step(last=micro == tc.grad_accum - 1):
            with strategy.autocast():
                loss = run.objective.loss(run.model, batch)
            strategy.backward(loss / tc.grad_accum)
        loss_sum += float(loss.detach())
        first_sample = first
    grad_norm = strategy.clip(tc.grad_clip) if tc.grad_clip > 0 else float("nan")
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    mean_loss = torch.tensor([float(loss_sum) / tc.grad_accum], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(mean_loss)
        mean_loss /= world
    if run.debug is not None:
        run.debug.write(json.dumps({"step": run.step, "first_sample": first_sample, "weights": weight_digest(strategy.bare),
                                    "local_loss": float(loss_sum) / tc.grad_accum}) + "\n")
        run.debug.flush()
    if run.step % tc.log_every == 0 or run.step == tc.steps:
        now = time.time()
        run.log({"step": run.step, "loss": float(mean_loss), "lr": lr, "grad_norm": grad_norm, "tokens": run.step * run.tokens_per_step,
                 "tokens_per_s": run.tokens_per_step * tc.log_every / max(now - run.last_log, 1e-9), "elapsed_s": now - run.started})
        run.last_log = now


def evaluate_and_select(run: Run) -> None:
    """Validation metrics; the best weights so far kept in best/; early stopping counted."""
    tc, rank, world = run.tc, run.acc.process_index, run.acc.num_processes
    select, lower_is_better = tc.select_metric, minimized(tc.select_metric)
    run.model.eval()
    with torch.compiler.set_stance("force_eager" if tc.compile and not tc.compile_eval else "default"):
        # Sharded weights need every rank in every forward, so then each rank scores every example.
        run.final_eval = run.objective.evaluate(run.model, run.acc, *((0, 1) if run.strategy.gathered else (rank, world)))
    run.model.train()
    if not run.final_eval:
        return
    run.log({"step": run.step, **run.final_eval})
    if select not in run.final_eval:
        raise ValueError(f"train.select_metric {select!r} is not one of the validation metrics {sorted(run.final_eval)}")
    value = run.final_eval[select]
    if (value < run.best - 1e-6) if lower_is_better else (value > run.best + 1e-6):
        run.best, run.best_step, run.bad_evals = value, run.step, 0
        save_weights(run.strategy.bare, Path(run.spec.out) / "best", run.spec.model, run.main, {"step": run.step, select: value})
    else:
        run.bad_evals += 1
    if tc.early_stopping_patience and run.bad_evals >= tc.early_stopping_patience:
        run.stopped_early = True


def checkpoint(run: Run) -> None:
    world = run.acc.num_processes
    state = {"step": run.step, "best_metric": run.best, "best_step": run.best_step, "bad_evals": run.bad_evals,
             "signature": run.objective.signature(), "samples_seen": run.step * run.tc.micro_batch_size * run.tc.grad_accum * world,
             "model_config": run.spec.model.model_dump(mode="json"), "world": world}
    run.ckpts.save(run.step, state, run.optimizer)


def finish(run: Run) -> dict:
    """final/ weights, summary.json and the `done` event; every rank leaves together."""
    tc, out = run.tc, Path(run.spec.out)
    summary = {"steps": run.step, "stopped_early": run.stopped_early, "select_metric": tc.select_metric, "best_metric": run.best,
               "best_step": run.best_step, **run.final_eval, "world": run.acc.num_processes, "precision": run.precision,
               "tokens_seen": run.step * run.tokens_per_step, "seconds": time.time() - run.started, "resumed_at_step": run.resumed_at,
               "params": run.params}
    if tc.compile:  # each recompilation costs seconds to minutes: a number to watch
        from torch._dynamo.utils import counters

        summary["compiled_graphs"] = counters["stats"]["unique_graphs"]
    save_weights(run.strategy.bare, out / "final", run.spec.model, run.main)
    if run.main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps({"event": "done", **summary}), flush=True)
    if run.debug is not None:
        run.debug.close()
    if run.acc.num_processes > 1 and dist.is_initialized():
        dist.barrier()  # FSDP2 on gloo: every rank done before the group goes
    run.acc.end_training()
    return summary


def train(spec: RunSpec) -> dict:
    run = setup(spec)
    tc = run.tc
    run.model.train()
    run.started = run.last_log = time.time()
    while run.step < tc.steps:
        train_step(run)
        if run.step % tc.eval_every == 0 or run.step == tc.steps:
            evaluate_and_select(run)
        if run.step % tc.checkpoint_every == 0 or run.step == tc.steps or run.stopped_early:
            checkpoint(run)
        if run.stopped_early:
            run.acc.print(json.dumps({"event": "early_stop", "step": run.step, "best_step": run.best_step, tc.select_metric: run.best}),
                          flush=True)
            break
    summary = finish(run)
    if run.acc.num_processes > 1:
        # Leave without Python freeing torch.distributed's objects: freeing DDP's reducer drops the
        # last reference to the gloo process group, whose destructor joins its worker thread while
        # holding the GIL, and that thread, still releasing the final barrier's prior work (tensors
        # with Python objects), waits for the GIL: a deadlock, about one two-machine run in four
        # under load (py-spy: ~ProcessGroupGloo in std::thread::join, the runLoop thread in
        # gil_scoped_acquire). Everything is written and every rank has passed the barrier.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
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
