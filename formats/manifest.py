"""The dataset contract's manifest (see DESIGN.md): a place holding data files and, written
last, `manifest.json`, which lists every file with its size, rows and SHA-256, the stage,
config and input digests that made it, and its statistics. A place without a manifest is not
a dataset. How a manifest is committed (rename on a local disk, create-only on an object store)
is tasks/stage.py's business; this module only reads and describes one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

MANIFEST = "manifest.json"


class FileEntry(BaseModel):
    path: str
    bytes: int
    rows: int | None = None
    sha256: str


class Manifest(BaseModel):
    stage: str
    stage_version: int
    code_version: str
    config: dict[str, Any]
    inputs: list[str]  # digests of the input manifests, by input name (a list input in its order)
    files: list[FileEntry]
    stats: dict[str, Any]
    created_at: float
    run_id: str
    prefix: str = ""  # where the files are under the place: "" locally, the attempt prefix on an object store

    @property
    def digest(self) -> str:
        # what the dataset is, not where its bytes lie: a local copy of a remote dataset has the same digest
        return digest_of(self.model_dump(mode="json", exclude={"prefix"}))


def digest_of(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def load_manifest(path: str | Path) -> Manifest:
    """The manifest of the dataset at `path`; a clear error when it is not a dataset."""
    from formats import store

    try:
        text = store.read_bytes(store.join(path, MANIFEST))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is not a dataset: it has no {MANIFEST}") from None
    return Manifest.model_validate_json(text)


def is_dataset(path: str | Path) -> bool:
    from formats import store

    if store.is_url(path):
        return store.exists(store.join(path, MANIFEST))
    return (Path(path) / MANIFEST).is_file()


def file_rows(path: Path) -> int | None:
    """Rows of a Parquet or Arrow IPC file, for its manifest entry; None for other files."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if path.suffix == ".arrow":
        import pyarrow as pa

        with pa.memory_map(str(path)) as src:
            try:
                reader = pa.ipc.open_file(src)
            except pa.ArrowInvalid:  # an Arrow stream, not a file: rows unknown without reading it all
                return None
            return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    return None
