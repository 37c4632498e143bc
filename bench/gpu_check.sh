#!/usr/bin/env bash
# GPU check, under 5 minutes on one GPU machine: the trainer through Accelerate in bf16,
# plain (DDP path) and FSDP, on synthetic token shards; prints tokens/s and MFU.
#
#   bash bench/gpu_check.sh            # uses python3 with torch + the project's dependencies
#
# Results go to $OUT (or bench/.work/gpu) as gpu-check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/.work/gpu}"
mkdir -p "$OUT"
PY="${PY:-python3}"
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
[ "$NGPU" -ge 1 ] || { echo "no GPU visible"; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

$PY - "$OUT" "$NGPU" <<'EOF'
import json, subprocess, sys, time
from pathlib import Path
import numpy as np, pyarrow as pa, torch
from model.config import TrainConfig
from model.llama import Llama, ModelConfig
from model.train import RunSpec
from model.launch import run_training

out, ngpu = Path(sys.argv[1]), int(sys.argv[2])
shards = out / "shards"
rng = np.random.default_rng(0)
for split, n in (("train", 50_000_000), ("val", 1_000_000)):
    (shards / split).mkdir(parents=True, exist_ok=True)
    tokens = rng.integers(4, 32000, n, dtype=np.uint16)
    with pa.OSFile(str(shards / split / "part-00000.arrow"), "wb") as f, pa.ipc.new_file(f, pa.schema([("tokens", pa.uint16())])) as w:
        w.write_table(pa.table({"tokens": tokens}))
model = ModelConfig(preset="gpt2-small", vocab_size=32000)
flops_per_token = Llama(model).flops_per_token()
peak = 989e12  # H100/H200 dense bf16 (SXM); MFU is reported against it
results = []
for mode in ("ddp", "fsdp"):
    n = ngpu
    cfg = TrainConfig(steps=60, micro_batch_size=16, seq_len=1024, lr=3e-4, warmup_steps=10, eval_every=60, eval_windows=8,
                      checkpoint_every=60, log_every=10, trackers=[], mixed_precision="bf16", compile=True,
                      distributed=mode if n > 1 or mode == "fsdp" else "none", num_processes=n)
    spec = RunSpec(model=model, train=cfg, shards=str(shards), tokenizer="", out=str(out / f"run-{mode}"))
    events = []
    t = time.time()
    try:
        run_training(spec, on_event=events.append)
    except Exception as e:
        results.append({"mode": mode, "error": str(e)[-2000:]})
        continue
    rates = [e["tokens_per_s"] for e in events if e.get("event") == "metrics" and "tokens_per_s" in e][2:]
    tps = float(np.median(rates)) if rates else 0.0
    results.append({"mode": mode, "gpus": n, "tokens_per_s": round(tps), "mfu": round(tps * flops_per_token / (peak * n), 3),
                    "wall_s": round(time.time() - t, 1)})
    print(json.dumps(results[-1]), flush=True)
(out / "gpu-check.json").write_text(json.dumps({"device": torch.cuda.get_device_name(0), "results": results}, indent=2))
EOF
