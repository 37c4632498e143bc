"""Files every stage writes the same way: atomically (a crash leaves the old file or the new
one, whole), hashed for manifests, and uncompressed Arrow IPC (so readers memory-map them)."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pyarrow as pa


def write_atomic(path: Path, data: bytes) -> None:
    """Write, fsync, rename, fsync the directory: after a crash the file is the old or the new
    one, whole, never empty (a rename can reach the disk before the data it names)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_ipc(path: Path, table: pa.Table) -> None:
    """An uncompressed Arrow IPC file: opened with a memory map, read without a copy."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
