"""`llmill gc`: what no dataset references, under a root.

- On an object store: attempt prefixes (`<stage>/<key>/attempt-<run id>/`) that the place's
  manifest does not name: a killed writer's files, or the loser's of two racing writers; and
  the `resume/` checkpoints of a run whose dataset is committed. (A run's `resume/` without a
  manifest is its progress: the rerun continues from it.)
- On a local disk: `<key>.partial/` directories and stale `<key>.lock` files of runs that are not
  running now (a running one holds its lock; a killed resumable run's partial directory is its
  progress, so it is listed, and kept unless --delete is given).
"""

from __future__ import annotations

import fcntl
import shutil
from pathlib import Path

from tasks import store
from tasks.stage import MANIFEST, load_manifest


def garbage(root: str | Path) -> list[str]:
    """Paths or URLs under `root` that no manifest references, sorted."""
    root = store.resolve_root(root)
    return sorted(_store_garbage(root) if store.is_url(root) else _local_garbage(Path(root)))


def delete(paths: list[str]) -> None:
    for path in paths:
        if store.is_url(path):
            fs, p = store.filesystem(path)
            fs.rm(p, recursive=True)
        elif Path(path).is_dir():
            shutil.rmtree(path)
        else:
            Path(path).unlink(missing_ok=True)


def _store_garbage(root: str) -> list[str]:
    fs, base = store.filesystem(root)
    found = []
    for stage in fs.ls(base, detail=False):
        if not fs.isdir(stage):
            continue
        for place in fs.ls(stage, detail=False):
            url = f"{root}/{place[len(base):].lstrip('/')}"
            names = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(place, detail=False)}
            kept = load_manifest(url).prefix if MANIFEST in names else None
            found += [f"{url}/{n}" for n in sorted(names) if n.startswith("attempt-") and n != kept]
            if kept is not None and "resume" in names:  # a committed run's checkpoints, left by a killed cleanup
                found.append(f"{url}/resume")
    return found


def _local_garbage(root: Path) -> list[str]:
    found = []
    for partial in root.glob("*/*.partial"):
        lock = partial.with_name(partial.name.removesuffix(".partial") + ".lock")
        if not _held(lock):
            found.append(str(partial))
    for lock in root.glob("*/*.lock"):
        if not lock.with_name(lock.name.removesuffix(".lock") + ".partial").exists() and not _held(lock):
            found.append(str(lock))
    return found


def _held(lock: Path) -> bool:
    """True when a running stage holds this lock file (tasks/stage.py: StageLock)."""
    if not lock.is_file():
        return False
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False
