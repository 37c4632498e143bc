"""Training throughput: our decoder against transformers' LlamaForCausalLM built with the same
config, same batch, same precision, in the same run; and achieved FLOP/s against a plain
2048² matmul of the mode's own precision and of bf16 (the machine's fastest), timed in the same
alternating rounds as the two models. Beside them, the step's own linear-layer matmuls and its
attention, each timed alone in the mode's precision: a step made of nothing else would run at
the model's FLOPs over their two times.

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
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.export import hf_config  # noqa: E402
from model.gemm import mm_t  # noqa: E402
from model.llama import Llama, ModelConfig, param_groups  # noqa: E402


def matmul_job(dtype: torch.dtype, n: int = 2048, reps: int = 3, matmul=torch.matmul) -> tuple[Callable[[], None], float]:
    """A plain (n x n) matmul, `reps` times: the callable and its FLOPs."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)

    def run():
        for _ in range(reps):
            matmul(a, b)

    run()
    return run, 2 * n**3 * reps


def linear_matmuls_job(cfg: ModelConfig, rows: int, dtype: torch.dtype) -> tuple[Callable[[], None], float]:
    """The step's linear-layer matmuls alone (forward, input and weight gradients; about 90 % of
    the model's FLOPs), through the kernels the model uses: the ceiling of a whole step."""
    d, ff, L = cfg.d_model, cfg.d_ff, cfg.n_layer
    kv = cfg.n_kv_head * cfg.head_dim
    shapes = [(d, d), (kv, d), (kv, d), (d, d)] * L + [(ff, d), (ff, d), (d, ff)] * L + [(cfg.vocab_size, d)]  # (out, in)
    acts = {n: torch.randn(rows, n, dtype=dtype) for n in {o for o, _ in shapes} | {i for _, i in shapes}}
    weights = [torch.randn(o, i, dtype=dtype) for o, i in shapes]

    def run():
        for (o, i), w in zip(shapes, weights):
            x, g = acts[i], acts[o]
            mm_t(x, w), mm_t(g, w.T), g.T @ x

    run()
    return run, sum(6 * rows * o * i for o, i in shapes)


def attention_job(cfg: ModelConfig, batch: int, dtype: torch.dtype) -> tuple[Callable[[], None], float]:
    """The step's causal attention alone (SDPA forward and backward, every layer)."""
    shape = (batch, cfg.n_head, cfg.max_seq_len, cfg.head_dim)
    q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))
    g = torch.randn(shape, dtype=dtype)

    def run():
        for _ in range(cfg.n_layer):
            torch.autograd.backward(torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), g)
            q.grad = k.grad = v.grad = None

    run()
    return run, 12 * cfg.n_layer * cfg.d_model * cfg.max_seq_len * batch * cfg.max_seq_len


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
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    jobs, work = {}, {}
    for name, build, loss in (("ours", lambda: Llama(cfg), ours_loss), ("hf", lambda: LlamaForCausalLM(hf_config(cfg)), hf_loss)):
        torch.manual_seed(0)
        model = build().train()
        if compiled:
            model = torch.compile(model)
        jobs[name], work[name] = make_step(model, loss, x, y, precision), x.numel() * Llama(cfg).flops_per_token()
    # The references run in the same alternating rounds, so each share compares timings taken
    # under the same load on this shared VM.
    references = {
        "matmul": matmul_job(dtype),
        "bf16_matmul": matmul_job(torch.bfloat16),
        "onednn_fp32_matmul": matmul_job(torch.float32, matmul=mm_t),  # the kernel of our fp32 linear layers (model/gemm.py)
        "linear_matmuls": linear_matmuls_job(cfg, x.numel(), dtype),
        "attention": attention_job(cfg, batch, dtype),
    }
    for name, (job, flops) in references.items():
        jobs[name], work[name] = job, flops
    times = interleaved_times(jobs, rounds, 2)
    rate = {name: [2 * work[name] / t for t in ts] for name, ts in times.items()}  # FLOP/s per round
    med = {name: statistics.median(r) for name, r in rate.items()}
    tokens_per_s = {name: med[name] / Llama(cfg).flops_per_token() for name in ("ours", "hf")}
    speedup, low, high = paired_speedup(times["ours"], times["hf"])

    def share(a: str, b: str) -> float:
        return round(statistics.median(x / y for x, y in zip(rate[a], rate[b])), 3)

    # A step made of nothing but its linear matmuls and its attention, each as fast as alone:
    # the model's FLOPs over their two times, round by round.
    rate["matmuls_and_attention"] = [2 * work["ours"] / (a + b) for a, b in zip(times["linear_matmuls"], times["attention"])]

    return {
        "mode": f"{precision}{' compiled' if compiled else ''}",
        "ours_tokens_per_s": round(tokens_per_s["ours"]),
        "hf_tokens_per_s": round(tokens_per_s["hf"]),
        "ours_vs_hf": round(speedup, 3),
        "ours_vs_hf_range": [round(low, 3), round(high, 3)],
        "ratio_of_medians": round(med["ours"] / med["hf"], 3),
        "ours_gflops": round(med["ours"] / 1e9, 1),
        "matmul_gflops": round(med["matmul"] / 1e9, 1),
        "bf16_matmul_gflops": round(med["bf16_matmul"] / 1e9, 1),
        "onednn_fp32_matmul_gflops": round(med["onednn_fp32_matmul"] / 1e9, 1),
        "linear_matmuls_gflops": round(med["linear_matmuls"] / 1e9, 1),
        "share_of_matmul": share("ours", "matmul"),
        "share_of_bf16_matmul": share("ours", "bf16_matmul"),
        "linear_matmuls_share_of_bf16_matmul": share("linear_matmuls", "bf16_matmul"),
        "share_of_linear_matmuls": share("ours", "linear_matmuls"),
        "attention_gflops": round(med["attention"] / 1e9, 1),
        "matmuls_and_attention_share_of_bf16_matmul": share("matmuls_and_attention", "bf16_matmul"),
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
