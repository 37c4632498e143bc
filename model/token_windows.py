"""Token shards (formats/token_shards.py), memory-mapped, served as random fixed-length windows.

The sampler is a pure function of (seed, global sample index): sample g of the run is a
window at a position hashed from (seed, g). Step s of a run with global batch B uses samples
s*B .. s*B+B-1, split across micro-steps and ranks, so processes see disjoint data, and a
checkpoint only needs the step to resume exactly, on any number of processes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from formats.token_shards import ShardError, live_tokens, split_shards

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


class TokenWindows:
    """Random windows of `window + 1` tokens (inputs and shifted targets) over a split."""

    def __init__(self, split_dir: str | Path, window: int, seed: int = 0):
        """`split_dir`: <token dataset>/train or /val; a refreshed version's listed shards are used."""
        self.dir = Path(split_dir)
        self.window = window
        self.seed = np.uint64(seed)
        files = split_shards(self.dir.parent, self.dir.name)
        if not files:
            raise ShardError(f"{self.dir}: no token shards")
        self.shards = [live_tokens(f, retired) for f, retired in files]
        self.tokens = sum(len(s) for s in self.shards)
        usable = [max(0, len(s) - window) for s in self.shards]  # start positions per shard
        if sum(usable) == 0:
            raise ShardError(
                f"{self.dir}: {self.tokens} tokens, fewer than one window of {window + 1}; "
                "use a larger corpus or a smaller max_seq_len"
            )
        self.starts = np.cumsum([0] + usable)

    def positions(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = splitmix64(indices.astype(np.uint64) ^ splitmix64(np.full_like(indices, self.seed, dtype=np.uint64)))
        flat = (h % np.uint64(self.starts[-1])).astype(np.int64)
        shard = np.searchsorted(self.starts, flat, side="right") - 1
        return shard, flat - self.starts[shard]

    def read(self, first_index: int, size: int) -> np.ndarray:
        """Samples first_index .. first_index+size-1: a (size, window+1) array in the shard dtype."""
        shard, offset = self.positions(np.arange(first_index, first_index + size, dtype=np.int64))
        out = np.empty((size, self.window + 1), dtype=self.shards[0].dtype)
        span = self.window + 1
        for row, (s, o) in enumerate(zip(shard.tolist(), offset.tolist())):
            out[row] = self.shards[s][o : o + span]
        return out

    def batch(self, first_index: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples first_index .. first_index+size-1 as (inputs, targets), int64 tensors."""
        t = torch.from_numpy(self.read(first_index, size).astype(np.int64))
        return t[:, :-1], t[:, 1:]

    def sequential(self, max_windows: int | None = None):
        """Non-overlapping windows in order, for evaluation over the whole split."""
        n = 0
        for s in self.shards:
            for o in range(0, len(s) - self.window, self.window):
                if max_windows is not None and n >= max_windows:
                    return
                row = torch.from_numpy(s[o : o + self.window + 1].astype(np.int64))
                yield row[:-1], row[1:]
                n += 1


def step_slice(step: int, micro: int, rank: int, world: int, micro_batch: int, accum: int) -> int:
    """First global sample index of (step, micro-step, rank)."""
    global_batch = micro_batch * accum * world
    return step * global_batch + (micro * world + rank) * micro_batch
