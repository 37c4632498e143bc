"""labelled: a person's labelled file (CSV, JSONL or Parquet) taken into the root as a dataset.

The examples built from it then depend on its content, not on a path: the file's SHA-256 is part
of where the dataset lives (SOURCE_STATE, as ingest's sources), so an edited file is a new
dataset, and the root keeps the exact file a model was fine-tuned on.
"""

from __future__ import annotations

import hashlib
import shutil
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from formats.example_files import LABELLED_FILE, ExamplesError, labelled_suffix
from formats.files import file_sha256
from tasks.orchestration import stage_task
from tasks.stage import Progress, no_progress

VERSION = 1


class LabelledConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="the labelled file")
    max_bytes: int = Field(1 << 30, ge=1, description="larger files are refused")


def SOURCE_STATE(cfg: LabelledConfig) -> str:  # noqa: N802 - the hook tasks/stage.py looks up by name
    p = Path(cfg.path)
    if not p.is_file():
        return hashlib.sha256(b"missing").hexdigest()
    st = p.stat()
    return _content_digest(str(p.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _content_digest(path: str, size: int, mtime_ns: int) -> str:
    """The file's SHA-256, once per (size, mtime) of it: a run computes the dataset's place
    several times (the task's cache key, the refresh check, the stage itself)."""
    return file_sha256(Path(path))


def labelled(inputs: dict, cfg: LabelledConfig, out: Path, progress: Progress = no_progress) -> dict:
    if inputs:
        raise ValueError("labelled takes no input datasets")
    src = Path(cfg.path)
    if not src.is_file():
        raise ExamplesError(f"labelled data {cfg.path} does not exist")
    suffix = labelled_suffix(src)
    size = src.stat().st_size
    if size > cfg.max_bytes:
        raise ExamplesError(f"labelled data {cfg.path}: {size} bytes, over labelled max_bytes {cfg.max_bytes}")
    dest = out / f"{LABELLED_FILE}{suffix}"
    shutil.copyfile(src, dest)
    progress(1, 1)
    return {"source": cfg.path, "bytes": size, "sha256": file_sha256(dest)}


labelled_task = stage_task(labelled)
