"""Tokenize-stage throughput against sentencepiece's own multi-threaded encode on the same
text, and memory-mapped random-window reads per second from the shards.

    .venv/bin/python bench/tokenize_shards.py [--docs N] [--window 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from model.token_windows import TokenWindows  # noqa: E402
from tasks.stage import run_stage  # noqa: E402
from tasks.token_encoding import TokenizeConfig  # noqa: E402
from tasks.tokenize import tokenize  # noqa: E402
from tasks.train_tokenizer import TokenizerConfig, train_tokenizer  # noqa: E402
from tests.corpus import corpus_dataset  # noqa: E402
from tests.helpers import PYDOCS  # noqa: E402


def main() -> None:
    import sentencepiece as spm

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=4, help="copies of the library sources (more text)")
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    work = HERE / ".work" / "tokenize"
    shutil.rmtree(work, ignore_errors=True)
    texts = [f.read_text(errors="replace") for f in sorted((PYDOCS / "_sources").rglob("*.txt"))] * args.repeat
    mb = sum(len(t.encode()) for t in texts) / 1e6
    docs = corpus_dataset(work, "bench", texts)
    tok = run_stage("train_tokenizer", 1, train_tokenizer, {"documents": docs}, TokenizerConfig(vocab_size=8192, sample_chars=5_000_000), work)
    sp = spm.SentencePieceProcessor(model_file=str(tok / "tokenizer.model"))
    threads = os.cpu_count() or 1

    # alternate the two, round by round, and take medians: a single ordered pair of timings
    # measured the process's warm-up and the freeing of the first encode's output, not the stage
    peer_s, ours_s = [], []
    for round_ in range(args.rounds):
        start = time.perf_counter()
        encoded = sp.encode(texts, num_threads=threads)
        peer_s.append(time.perf_counter() - start)
        del encoded
        out = work / f"round-{round_}"
        start = time.perf_counter()
        shards = run_stage("tokenize", 1, tokenize, {"documents": docs, "tokenizer": str(tok)}, TokenizeConfig(), out)
        ours_s.append(time.perf_counter() - start)
    peer, ours = statistics.median(peer_s), statistics.median(ours_s)

    windows = TokenWindows(shards / "train", args.window, seed=0)
    batch, n = 64, 0
    start = time.perf_counter()
    while time.perf_counter() - start < 3.0:
        windows.read(n, batch)
        n += batch
    rate = n / (time.perf_counter() - start)
    result = {
        "text_mb": round(mb, 1),
        "threads": threads,
        "tokenize_stage_mb_per_s": round(mb / ours, 2),
        "sentencepiece_encode_mb_per_s": round(mb / peer, 2),
        "stage_vs_sentencepiece": round(peer / ours, 3),
        "rounds_s": {"sentencepiece": [round(x, 2) for x in peer_s], "stage": [round(x, 2) for x in ours_s]},
        "train_tokens": int(windows.tokens),
        "window": args.window,
        "random_windows_per_s": round(rate),
    }
    print(json.dumps(result, indent=2))
    (HERE / "results-tokenize.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
