"""The prepared GPU check: the trainer launched as the pipeline launches it (model/launch.py:
plain for one GPU, `accelerate launch` for several or for FSDP), in bf16, once replicated
(DDP) and once sharded (FSDP), on synthetic token shards. It reports tokens/s, the model
FLOP/s, MFU against the GPU's dense bf16 peak, and the share of a plain bf16 matmul measured
in the same run. Under 5 minutes on one H100/H200-class GPU.

    bash bench/gpu_check.sh                      # checks a GPU is visible, then runs this
    python bench/gpu_check.py [--processes N] [--peak-tflops T] [--out DIR]

`--allow-cpu` runs the same path on CPU processes (gloo; FSDP2 directly), which is how the
test suite keeps the script working on machines without a GPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import ModelConfig, RunSpec, TrainConfig  # torch-free

# torch, pyarrow and the model are imported where they are used: a refusal (bad options, no
# GPU) answers before paying for them

# Dense bf16 peaks (vendor datasheets, without sparsity), first match on the device name wins.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.0), ("H200", 989.0), ("H100", 989.0), ("A100", 312.0))


MODES = ("ddp", "fsdp")


def peak_tflops(device_name: str) -> float | None:
    return next((tf for key, tf in PEAK_BF16_TFLOPS if key in device_name), None)


def write_shards(root: Path, train_tokens: int, val_tokens: int, vocab: int, seed: int = 0) -> Path:
    """Uniform random tokens in the trainer's shard layout (a flat `tokens` column per split)."""
    import numpy as np
    import pyarrow as pa

    from formats.files import write_ipc
    from formats.token_shards import token_dtype

    rng = np.random.default_rng(seed)
    arrow_type = token_dtype(vocab)
    for split, n in (("train", train_tokens), ("val", val_tokens)):
        (root / split).mkdir(parents=True, exist_ok=True)
        tokens = rng.integers(4, vocab, n, dtype=arrow_type.to_pandas_dtype())
        write_ipc(root / split / "part-00000.arrow", pa.table({"tokens": pa.array(tokens, type=arrow_type)}))
    return root


def matmul_tflops(device: str, dtype: str = "bf16", n: int = 8192, reps: int = 20) -> float:
    """A plain (n x n) @ (n x n) matmul in `dtype` (bf16 or fp32), median of 5 timings."""
    import torch

    if device == "cpu":
        n, reps = 1024, 3
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=torch_dtype)
    b = torch.randn(n, n, device=device, dtype=torch_dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b
    sync()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        times.append(time.perf_counter() - start)
    return 2 * n**3 * reps / statistics.median(times) / 1e12


def run_mode(mode: str, args, shards: Path, model: ModelConfig, flops_per_token: float, peak: float | None, matmul: float,
             matmul_dtype: str) -> dict:
    import torch

    from model.launch import run_training

    n = args.processes
    devices = n if torch.cuda.is_available() else 1  # CPU processes share one machine's cores
    distributed = "fsdp" if mode == "fsdp" else ("ddp" if n > 1 else "none")
    cfg = TrainConfig(steps=args.steps, micro_batch_size=args.micro_batch, seq_len=args.seq_len, lr=3e-4, warmup_steps=min(10, args.steps // 2),
                      eval_every=args.steps, eval_windows=8, checkpoint_every=args.steps, log_every=args.log_every, trackers=[],
                      mixed_precision=args.precision, compile=args.compile, distributed=distributed, num_processes=n)
    run_dir = args.out / f"run-{mode}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun measures afresh instead of resuming a finished run
    spec = RunSpec(model=model, train=cfg, shards=str(shards), tokenizer="", out=str(run_dir))
    events: list[dict] = []
    started = time.time()
    try:
        run_training(spec, on_event=events.append)
    except Exception as e:  # the other mode still runs; the error goes into the report
        return {"mode": mode, "processes": n, "error": str(e)}
    start = next(e for e in events if e.get("event") == "start")
    rates = [e["tokens_per_s"] for e in events if e.get("event") == "metrics" and "tokens_per_s" in e]
    if not rates:
        return {"mode": mode, "processes": n, "error": "the trainer logged no throughput (raise --steps or lower --log-every)"}
    steady = rates[1:] or rates  # the first interval includes compilation and warm-up
    tps = statistics.median(steady)
    tflops = tps * flops_per_token / 1e12
    done = next(e for e in events if e.get("event") == "done")
    return {
        "mode": mode,
        "processes": n,
        "world": start["world"],
        "distributed": start["distributed"],
        "computed_in": start["precision"],
        "local_param_fraction": round(start["local_param_fraction"], 4),
        "tokens_per_s": round(tps),
        "model_tflops": round(tflops, 4),
        "mfu": None if peak is None else round(tflops / (peak * devices), 4),
        f"share_of_{matmul_dtype}_matmul": round(tflops / (matmul * devices), 4),
        "val_loss": round(done["val_loss"], 4) if "val_loss" in done else None,
        "wall_s": round(time.time() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench/.work/gpu"))
    p.add_argument("--preset", default="gpt2-small")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--train-tokens", type=int, default=20_000_000)
    p.add_argument("--processes", type=int, default=0, help="0 = every visible GPU")
    p.add_argument("--precision", choices=("bf16", "fp16", "no"), default="bf16")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--modes", default="ddp,fsdp")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of one device; default: by device name")
    p.add_argument("--allow-cpu", action="store_true", help="run on CPU processes when no GPU is visible (the test suite's smoke run)")
    args = p.parse_args(argv)
    if not args.modes or set(args.modes.split(",")) - set(MODES):
        p.error(f"--modes takes a comma-separated subset of {','.join(MODES)}, not {args.modes!r}")

    import torch

    gpus = torch.cuda.device_count()
    if not gpus and not args.allow_cpu:
        print("no GPU visible (pass --allow-cpu to run the same path on CPU processes)", file=sys.stderr)
        return 1
    device = "cuda" if gpus else "cpu"
    args.processes = args.processes or gpus or 1
    name = torch.cuda.get_device_name(0) if gpus else "cpu"
    peak = args.peak_tflops or (peak_tflops(name) if gpus else None)
    from model.llama import Llama
    from model.train import effective_precision

    args.out.mkdir(parents=True, exist_ok=True)
    shards = write_shards(args.out / "shards", args.train_tokens, max(args.train_tokens // 50, 8 * args.seq_len * 2), args.vocab)
    model = ModelConfig(preset=args.preset, vocab_size=args.vocab)
    if args.seq_len > model.max_seq_len:
        p.error(f"--seq-len {args.seq_len} exceeds the {args.preset} preset's max_seq_len {model.max_seq_len}")
    flops_per_token = Llama(model).flops_per_token()
    # The reference matmul: bf16 on GPUs (the rate MFU is about); on CPU the precision the
    # trainer really computes in (fp32 where the CPU has no native bf16, model/train.py).
    matmul_dtype = "bf16" if gpus or effective_precision(args.precision, cpu=True)[0] == "bf16" else "fp32"
    matmul = matmul_tflops(device, matmul_dtype)
    print(json.dumps({"device": name, "processes": args.processes, "peak_bf16_tflops": peak, f"{matmul_dtype}_matmul_tflops": round(matmul, 4),
                      "model_flops_per_token": flops_per_token}), flush=True)
    results = []
    for mode in args.modes.split(","):
        results.append(run_mode(mode, args, shards, model, flops_per_token, peak, matmul, matmul_dtype))
        print(json.dumps(results[-1]), flush=True)
    report = {"device": name, "processes": args.processes, "preset": args.preset, "precision": args.precision, "compile": args.compile,
              "peak_bf16_tflops": peak, "matmul_dtype": matmul_dtype, f"{matmul_dtype}_matmul_tflops": round(matmul, 4), "results": results}
    tmp = args.out / "gpu-check.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(args.out / "gpu-check.json")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
