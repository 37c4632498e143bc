#!/usr/bin/env bash
# GPU check, under 5 minutes on one GPU machine: the trainer through Accelerate in bf16,
# replicated (DDP) and sharded (FSDP), on synthetic token shards; prints tokens/s and MFU.
#
#   bash bench/gpu_check.sh [bench/gpu_check.py options]   # PY=... picks the interpreter
#
# Results go to $OUT (or bench/.work/gpu) as gpu-check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || { echo "nvidia-smi failed: no GPU here"; exit 1; }
exec "$PY" bench/gpu_check.py --out "${OUT:-bench/.work/gpu}" "$@"
