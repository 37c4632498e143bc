"""Training throughput: our decoder against transformers' LlamaForCausalLM built with the same
config, same batch, same precision, in the same run; and achieved FLOP/s against a plain
matmul measured in the same run: of the mode's own precision, and of bf16 (the machine's
fastest).

    .venv/bin/python bench/train.py [--preset demo] [--batch 8] [--rounds 15]
        [--modes fp32,bf16,fp32-compiled,bf16-compiled]

Each mode runs in a fresh process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.export import hf_config  # noqa: E402
from model.gemm import mm_t  # noqa: E402
from model.llama import Llama, ModelConfig, param_groups  # noqa: E402


def matmul_flops(dtype: torch.dtype, n: int = 2048, rounds: int = 7, reps: int = 3, matmul=torch.matmul) -> float:
    """The machine's plain matmul rate: median of several rounds, since one timing on a shared
    VM can be off by 2x."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    matmul(a, b)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            matmul(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 * reps / statistics.median(times)


def make_step(model, loss_fn, x, y, precision: str):
    opt = torch.optim.AdamW(param_groups(model, 0.1) if hasattr(model, "cfg") else model.parameters(), lr=1e-4)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

    def one():
        with ctx:
            loss = loss_fn(model, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up (and compilation)
        one()
    return one


def interleaved_times(steps: dict, rounds: int, per_round: int) -> dict[str, list[float]]:
    """Seconds per round of each contender, alternating round by round, in reversed order every
    other round (the one that runs second inherits the first one's heap), so drift in the
    machine's load (a shared 2-core box) hits both alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(rounds):
        for name, one in list(steps.items())[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            for _ in range(per_round):
                one()
            times[name].append(time.perf_counter() - start)
    return times


def paired_speedup(ours: list[float], peer: list[float]) -> tuple[float, float, float]:
    """Median, lowest and highest of peer/ours over rounds: each round's two timings ran
    back to back, so their ratio cancels the slow swings in this VM's speed that a ratio of
    overall medians keeps."""
    ratios = sorted(p / o for o, p in zip(ours, peer))
    return statistics.median(ratios), ratios[0], ratios[-1]


def ours_loss(model, x, y):
    return model(x, y)[1]


def hf_loss(model, x, y):
    logits = model(input_ids=x).logits
    return torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))


def measure_mode(cfg: ModelConfig, batch: int, rounds: int, precision: str, compiled: bool) -> dict:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.max_seq_len))
    y = torch.roll(x, -1, 1)
    peak = {"fp32": matmul_flops(torch.float32), "bf16": matmul_flops(torch.bfloat16)}
    onednn_fp32 = matmul_flops(torch.float32, matmul=mm_t)  # the kernel our fp32 linear layers use (model/gemm.py)
    steps = {}
    for name, build, loss in (("ours", lambda: Llama(cfg), ours_loss), ("hf", lambda: LlamaForCausalLM(hf_config(cfg)), hf_loss)):
        torch.manual_seed(0)
        model = build().train()
        if compiled:
            model = torch.compile(model)
        steps[name] = make_step(model, loss, x, y, precision)
    times = interleaved_times(steps, rounds, 2)
    rates = {name: x.numel() * 2 / statistics.median(t) for name, t in times.items()}
    speedup, low, high = paired_speedup(times["ours"], times["hf"])
    achieved = rates["ours"] * Llama(cfg).flops_per_token()
    return {
        "mode": f"{precision}{' compiled' if compiled else ''}",
        "ours_tokens_per_s": round(rates["ours"]),
        "hf_tokens_per_s": round(rates["hf"]),
        "ours_vs_hf": round(speedup, 3),
        "ours_vs_hf_range": [round(low, 3), round(high, 3)],
        "ratio_of_medians": round(rates["ours"] / rates["hf"], 3),
        "ours_gflops": round(achieved / 1e9, 1),
        "matmul_gflops": round(peak[precision] / 1e9, 1),
        "onednn_fp32_matmul_gflops": round(onednn_fp32 / 1e9, 1),
        "share_of_matmul": round(achieved / peak[precision], 3),
        "share_of_bf16_matmul": round(achieved / peak["bf16"], 3),
    }


MODES = ("fp32", "bf16", "fp32-compiled", "bf16-compiled")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=15, help="alternating rounds of 2 steps each")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset, in the order to run")
    ap.add_argument("--in-process", action="store_true", help="measure in this process (the parent starts one per mode)")
    args = ap.parse_args()
    cfg = ModelConfig(preset=args.preset, vocab_size=args.vocab)
    modes = args.modes.split(",")
    if any(m not in MODES for m in modes):
        ap.error(f"--modes takes {', '.join(MODES)}, not {args.modes!r}")
    if args.in_process:
        for m in modes:
            print(json.dumps(measure_mode(cfg, args.batch, args.rounds, m.split("-")[0], m.endswith("-compiled"))), flush=True)
        return
    rows = []
    for m in modes:  # each mode in a fresh process: none inherits another's heap, threads or compile caches
        argv = [sys.executable, __file__, "--in-process", "--modes", m, "--preset", args.preset,
                "--vocab", str(args.vocab), "--batch", str(args.batch), "--rounds", str(args.rounds)]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    result = {"preset": args.preset, "params": Llama(cfg).num_params(), "batch": args.batch, "seq_len": cfg.max_seq_len,
              "threads": torch.get_num_threads(), "rows": rows}
    (Path(__file__).parent / "results-train.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
