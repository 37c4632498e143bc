"""A training run's checkpoints kept on the object store too, so a run killed on one node
resumes on another. The run itself writes to local disk (Accelerate's save_state and
safetensors want local paths); after each checkpoint is complete locally, its files go to
`<url>/checkpoints/step-N/` with trainer_state.json last (as locally, the file that says the
checkpoint is complete), then metrics.jsonl; older steps past `keep` are removed there too.

The stage layer asks for this by writing `.resume.json` ({"url": ...}) into the run's directory
(tasks/stage.py: run_stage, for a resumable stage whose place is on an object store).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

RESUME_FILE = ".resume.json"
STATE = "trainer_state.json"


def mirror_url(out: Path) -> str | None:
    spec = out / RESUME_FILE
    return json.loads(spec.read_text())["url"] if spec.is_file() else None


def _fs(url: str):
    from fsspec.core import url_to_fs

    return url_to_fs(url)


def push(step_dir: Path, metrics: Path, url: str, keep: int) -> None:
    """Upload a complete local checkpoint and the metrics so far. The state file goes last: it
    makes the checkpoint complete on the store, so the metrics up to its step must be there
    before it (a run killed in between resumes elsewhere with its whole loss curve)."""
    fs, base = _fs(url)
    remote = f"{base}/checkpoints/{step_dir.name}"
    files = sorted(p for p in step_dir.rglob("*") if p.is_file())
    for f in files:
        if f.name != STATE:
            fs.put_file(str(f), f"{remote}/{f.relative_to(step_dir)}")
    if metrics.is_file():
        fs.put_file(str(metrics), f"{base}/{metrics.name}")
    for f in files:
        if f.name == STATE:
            fs.put_file(str(f), f"{remote}/{f.relative_to(step_dir)}")
    for old in _complete_steps(fs, base)[:-keep]:
        fs.rm(f"{base}/checkpoints/{old}", recursive=True)


def pull_latest(url: str, checkpoints: Path, out: Path) -> Path | None:
    """Download the latest complete checkpoint at `url` (and the metrics beside it) into
    `checkpoints`; None when there is none."""
    fs, base = _fs(url)
    steps = _complete_steps(fs, base)
    if not steps:
        return None
    name = steps[-1]
    tmp = checkpoints / f".{name}.{uuid.uuid4().hex}.pull"
    tmp.mkdir(parents=True)
    try:
        fs.get(f"{base}/checkpoints/{name}/", str(tmp), recursive=True)
        if not (tmp / STATE).is_file():
            raise OSError(f"{url}: checkpoint {name} lost its {STATE} while it was downloaded")
        os.replace(tmp, checkpoints / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if fs.exists(f"{base}/metrics.jsonl"):
        fs.get_file(f"{base}/metrics.jsonl", str(out / "metrics.jsonl"))
    return checkpoints / name


def _complete_steps(fs, base: str) -> list[str]:
    fs.invalidate_cache(f"{base}/checkpoints")
    if not fs.exists(f"{base}/checkpoints"):
        return []
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(f"{base}/checkpoints", detail=False))
    return [n for n in names if n.startswith("step-") and fs.exists(f"{base}/checkpoints/{n}/{STATE}")]
