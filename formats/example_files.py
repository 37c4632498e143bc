"""Fine-tuning examples: a person's labelled file in, the examples stage's files out.

In: a CSV, JSONL or Parquet file with `text`/`label` (classification) or `prompt`/`response`
(or `text`: SFT) columns, and optionally `split` (train|val|test); the labelled stage copies it
into the root, the examples stage reads it (`read_labelled`).
Out: one uncompressed Arrow IPC file per split, `<split>.arrow`, with `id`, `text`, `input_ids`
(list<int32>, starting with <s>) and either `labels` (list<int32>, IGNORE where no loss is
taken: SFT) or `label` (int32, an index into the dataset's `labels.json`: classification),
read by the trainer and the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from formats.files import write_ipc
from formats.manifest import load_manifest

SPLITS = ("train", "val", "test")
IGNORE = -100  # the label of a position the loss skips (torch's cross_entropy default ignore_index)
LABELLED_SUFFIXES = (".csv", ".jsonl", ".json", ".ndjson", ".parquet")
LABELLED_FILE = "labelled"  # + the source's suffix, in the labelled dataset


class ExamplesError(ValueError):
    """Labelled data that cannot make examples; the message says what to fix."""


def labelled_suffix(path: str | Path) -> str:
    suffix = "".join(Path(path).suffixes[-1:]).lower()
    if suffix not in LABELLED_SUFFIXES:
        raise ExamplesError(f"{path}: unsupported format {suffix!r}; use .csv, .jsonl or .parquet")
    return suffix


def labelled_file(dataset: str | Path) -> Path:
    """The one labelled file a labelled dataset holds."""
    (entry,) = [f for f in load_manifest(dataset).files if f.path.startswith(LABELLED_FILE + ".")]
    return Path(dataset) / entry.path


def read_labelled(path: str | Path, name: str = "") -> pa.Table:
    """A labelled file as a table; `name` is how errors call it (the path a person gave)."""
    name = name or str(path)
    suffix = labelled_suffix(path)
    try:
        if suffix == ".csv":
            from pyarrow import csv

            return csv.read_csv(path)
        if suffix in (".jsonl", ".json", ".ndjson"):
            from pyarrow import json as pajson

            return pajson.read_json(path)
        import pyarrow.parquet as pq

        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ExamplesError(f"{name}: cannot be read as {suffix[1:]}: {e}") from None


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
