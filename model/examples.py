"""Fine-tuning examples: tokenized once by the examples stage into Arrow IPC files, served
here as fixed-length padded batches by a seeded, resumable sampler.

Files: `<split>.arrow` with `input_ids` (list<int32>, starting with <s>) and either `labels`
(list<int32>, -100 where no loss is taken: SFT) or `label` (int32: classification).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from model.config import IGNORE

PAD = 0


class ExampleSet:
    def __init__(self, path: str | Path, seq_len: int, seed: int = 0):
        self.path = Path(path)
        try:
            table = pa.ipc.open_file(pa.memory_map(str(self.path), "r")).read_all()
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(f"{self.path}: not a readable examples file ({e})") from None
        if table.num_rows == 0:
            raise ValueError(f"{self.path}: no examples")
        self.seq_len = seq_len
        self.seed = seed
        self.ids = [np.asarray(x, dtype=np.int64) for x in table.column("input_ids").to_pylist()]
        if any(len(x) > seq_len + 1 for x in self.ids):
            raise ValueError(f"{self.path}: examples longer than seq_len {seq_len}; the examples stage truncates to the model's context")
        names = table.column_names
        self.kind = "sft" if "labels" in names else "classify"
        if self.kind == "sft":
            self.targets = [np.asarray(x, dtype=np.int64) for x in table.column("labels").to_pylist()]
        else:
            self.label = np.asarray(table.column("label").to_pylist(), dtype=np.int64)

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
