"""Fine-tuning examples: the examples stage's format, read by the trainer and the evaluation.

One uncompressed Arrow IPC file per split, `<split>.arrow`, with `id`, `text`, `input_ids`
(list<int32>, starting with <s>) and either `labels` (list<int32>, IGNORE where no loss is
taken: SFT) or `label` (int32, an index into the dataset's `labels.json`: classification).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from formats.files import write_ipc

SPLITS = ("train", "val", "test")
IGNORE = -100  # the label of a position the loss skips (torch's cross_entropy default ignore_index)


def write_examples(path: Path, ids: list[str], texts: list[str], input_ids: list[list[int]],
                   labels: list[list[int]] | None = None, label: list[int] | None = None) -> None:
    """SFT examples when `labels` is given, classification examples when `label` is."""
    table = {"id": pa.array(ids), "text": pa.array(texts), "input_ids": pa.array(input_ids, pa.list_(pa.int32()))}
    if label is not None:
        table["label"] = pa.array(label, pa.int32())
    else:
        table["labels"] = pa.array(labels, pa.list_(pa.int32()))
    write_ipc(path, pa.table(table))


@dataclass
class Examples:
    kind: str  # "sft" or "classify"
    input_ids: list[np.ndarray]
    targets: list[np.ndarray] | None  # sft
    label: np.ndarray | None  # classify


def read_examples(path: str | Path) -> Examples:
    """A split's examples; a clear error for a file that is not one, or holds none."""
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{path}: not a readable examples file ({e})") from None
    if table.num_rows == 0:
        raise ValueError(f"{path}: no examples")
    ids = [np.asarray(x, dtype=np.int64) for x in table.column("input_ids").to_pylist()]
    if "labels" in table.column_names:
        return Examples("sft", ids, [np.asarray(x, dtype=np.int64) for x in table.column("labels").to_pylist()], None)
    return Examples("classify", ids, None, np.asarray(table.column("label").to_pylist(), dtype=np.int64))
