"""Fine-tuning examples (formats/example_files.py), served as fixed-length padded batches by a
seeded, resumable sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from formats.example_files import IGNORE, read_examples
from formats.tokenizer import PAD


class ExampleSet:
    def __init__(self, path: str | Path, seq_len: int, seed: int = 0):
        self.path = Path(path)
        found = read_examples(self.path)
        self.seq_len = seq_len
        self.seed = seed
        self.kind, self.ids, self.targets, self.label = found.kind, found.input_ids, found.targets, found.label
        if any(len(x) > seq_len + 1 for x in self.ids):
            raise ValueError(f"{self.path}: examples longer than seq_len {seq_len}; the examples stage truncates to the model's context")

    def __len__(self) -> int:
        return len(self.ids)

    def order(self, first: int, size: int) -> np.ndarray:
        """Example indices of global samples first..first+size-1: a fresh seeded permutation per epoch."""
        n = len(self)
        out = np.empty(size, dtype=np.int64)
        for i, g in enumerate(range(first, first + size)):
            epoch, pos = divmod(g, n)
            out[i] = self._permutation(epoch)[pos]
        return out

    def _permutation(self, epoch: int) -> np.ndarray:
        if getattr(self, "_epoch", None) != epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self))
        return self._perm

    def collate(self, rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        if self.kind == "sft":  # next-token: inputs ids[:-1], targets labels[1:], padding ignored
            x = torch.full((len(rows), self.seq_len), PAD, dtype=torch.long)
            y = torch.full((len(rows), self.seq_len), IGNORE, dtype=torch.long)
            for r, i in enumerate(rows):
                ids, tgt = self.ids[i], self.targets[i]
                x[r, : len(ids) - 1] = torch.from_numpy(ids[:-1])
                y[r, : len(ids) - 1] = torch.from_numpy(tgt[1:])
            return x, y
        x = torch.full((len(rows), self.seq_len), PAD, dtype=torch.long)
        lengths = torch.empty(len(rows), dtype=torch.long)
        for r, i in enumerate(rows):
            ids = self.ids[i][: self.seq_len]
            x[r, : len(ids)] = torch.from_numpy(ids)
            lengths[r] = len(ids)
        return x, lengths, torch.from_numpy(self.label[rows])

    def batch(self, first: int, size: int) -> tuple[torch.Tensor, ...]:
        return self.collate(self.order(first, size))

    def sequential(self, batch_size: int):
        for start in range(0, len(self), batch_size):
            yield self.collate(np.arange(start, min(start + batch_size, len(self))))
