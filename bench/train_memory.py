"""Peak memory of one training forward + backward: our decoder against transformers'
LlamaForCausalLM with the same config and batch, each in a fresh process (growth of peak RSS),
so neither inherits the other's heap.

    .venv/bin/python bench/train_memory.py [--vocab 32000] [--batch 8] [--preset demo]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(which: str, preset: str, vocab: int, batch: int) -> float:
    import torch

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    from model.export import hf_config
    from model.llama import Llama, ModelConfig
    from train import hf_loss, ours_loss

    cfg = ModelConfig(preset=preset, vocab_size=vocab)
    torch.manual_seed(0)
    x = torch.randint(0, vocab, (batch, cfg.max_seq_len))
    y = torch.roll(x, -1, 1)
    if which == "ours":
        model, loss_fn = Llama(cfg), ours_loss
    else:
        from transformers import LlamaForCausalLM

        model, loss_fn = LlamaForCausalLM(hf_config(cfg)), hf_loss
    model.train()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loss_fn(model, x, y).backward()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # KiB -> MiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--which", choices=["ours", "hf"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.which:
        print(json.dumps({"mib": one(args.which, args.preset, args.vocab, args.batch)}))
        return
    row = {"preset": args.preset, "vocab": args.vocab, "batch": args.batch}
    for which in ("ours", "hf"):
        out = subprocess.run([sys.executable, __file__, "--which", which, "--preset", args.preset, "--vocab", str(args.vocab),
                              "--batch", str(args.batch)], capture_output=True, text=True, check=True).stdout
        row[f"{which}_peak_growth_mib"] = round(json.loads(out.strip().splitlines()[-1])["mib"])
    print(json.dumps(row))


if __name__ == "__main__":
    main()
