"""`llmill gc`: what no dataset references, under a root.

- Dataset versions that nothing newer reads: a dataset is superseded when its stage has a newer
  dataset (by creation time) and every dataset that reads it is itself superseded; the newest
  dataset of each stage, whatever reads those, and every dataset a data-refresh version list
  names (`refresh/*.json`) are kept. Two configs' datasets side by side count as versions of one
  stage: the listing shows what would go, and only `--delete` removes it.

- On an object store: attempt prefixes (`<stage>/<key>/attempt-<run id>/`) that the place's
  manifest does not name: a killed writer's files, or the loser's of two racing writers; and
  the `resume/` checkpoints of a run whose dataset is committed. (A run's `resume/` without a
  manifest is its progress: the rerun continues from it.)
- On a local disk: `<key>.partial/` directories and stale `<key>.lock` files (neither partial nor
  dataset beside them) of runs that are not running now (a running one holds its lock; a killed resumable run's partial directory is its
  progress, so it is listed, and kept unless --delete is given).
"""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

from formats import store
from formats.manifest import MANIFEST, load_manifest
from tasks.stage import StageLock
from tasks.verify import dataset_places


def garbage(root: str | Path) -> list[str]:
    """Paths or URLs under `root` that no manifest references, and superseded datasets, sorted."""
    root = store.resolve_root(root)
    leftovers = _store_garbage(root) if store.is_url(root) else _local_garbage(Path(root))
    return sorted(leftovers + superseded(root))


def superseded(root: str) -> list[str]:
    """Datasets under `root` that nothing newer reads (the module docstring's rule)."""
    manifests = {}
    for place in dataset_places(root):
        try:
            manifests[place] = load_manifest(place)
        except (OSError, ValueError):  # a damaged manifest is not this tool's to judge
            continue
    by_digest = {m.digest: place for place, m in manifests.items()}
    readers: dict[str, set[str]] = {place: set() for place in manifests}
    for place, m in manifests.items():
        for digest in m.inputs:
            if digest in by_digest:
                readers[by_digest[digest]].add(place)
    newest = {}
    for place, m in manifests.items():
        if m.stage not in newest or m.created_at > manifests[newest[m.stage]].created_at:
            newest[m.stage] = place
    named = _named_by_refresh(root)
    gone: set[str] = set()
    changed = True
    while changed:  # a reader that goes lets what it read go too
        changed = False
        for place, m in manifests.items():
            if place in gone or newest[m.stage] == place or str(place) in named:
                continue
            if readers[place] <= gone:
                gone.add(place)
                changed = True
    return [str(p) for p in gone]


def _named_by_refresh(root: str) -> set[str]:
    """Every string in the data-refresh version lists: the datasets of each version."""
    named: set[str] = set()

    def walk(value) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            named.add(value)

    if store.is_url(root):
        fs, base = store.filesystem(root)
        for listing in fs.glob(f"{base}/refresh/*.json"):
            walk(json.loads(fs.cat_file(listing)))
    else:
        for listing in Path(root).glob("refresh/*.json"):
            walk(json.loads(listing.read_text()))
    return named


def delete(paths: list[str]) -> None:
    for path in paths:
        if store.is_url(path):
            fs, p = store.filesystem(path)
            fs.rm(p, recursive=True)
        elif path.endswith(".partial"):  # under its lock: a run that starts now waits, or finds it gone
            StageLock.remove_if_free(Path(path.removesuffix(".partial") + ".lock"), also=Path(path))
        elif path.endswith(".lock"):
            StageLock.remove_if_free(Path(path))
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
    for lock in root.glob("*/*.lock"):  # a finished dataset keeps its (empty) lock file: tasks/stage.py says why
        key = lock.name.removesuffix(".lock")
        if not lock.with_name(key + ".partial").exists() and not lock.with_name(key).exists() and not _held(lock):
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
