"""`llmill verify`: every dataset's files against its manifest (size and SHA-256).

A manifest records what was committed; nothing else re-reads it. Disks, copies between
machines and people editing files by hand change bytes silently, so this reads every listed
file back (local, or from an object store under the manifest's attempt prefix) and names each
difference. Stages check only sizes of their inputs before reading them (input_sizes_match):
cheap enough for every run, and it catches a truncated or replaced file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from formats import store
from formats.manifest import MANIFEST, load_manifest


def dataset_places(root: str) -> list[str]:
    """Every committed dataset under `root` (a path or an object-store URL)."""
    if store.is_url(root):
        fs, base = store.filesystem(root)
        return sorted(f"{root}/{p[len(base):].lstrip('/').rsplit('/', 1)[0]}" for p in fs.glob(f"{base}/*/*/{MANIFEST}"))
    return sorted(str(p.parent) for p in Path(root).glob(f"*/*/{MANIFEST}") if not p.parent.name.endswith(".partial"))


def file_url(place: str, prefix: str, path: str) -> str:
    return store.join(place, f"{prefix}/{path}" if prefix else path)


def verify_dataset(place: str) -> list[str]:
    """What differs from the manifest at `place`: missing files, sizes, hashes; [] when none."""
    m = load_manifest(place)
    problems = []
    for entry in m.files:
        url = file_url(place, m.prefix, entry.path)
        try:
            size, digest = _size_and_sha256(url)
        except FileNotFoundError:
            problems.append(f"{url}: missing")
            continue
        if size != entry.bytes:
            problems.append(f"{url}: {size} bytes, the manifest says {entry.bytes}")
        elif digest != entry.sha256:
            problems.append(f"{url}: SHA-256 {digest[:16]}..., the manifest says {entry.sha256[:16]}...")
    return problems


def _size_and_sha256(url: str) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    if store.is_url(url):
        fs, p = store.filesystem(url)
        opened = fs.open(p, "rb")
    else:
        opened = open(url, "rb")
    with opened as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def input_sizes_match(place: str | Path) -> None:
    """Refuse a local input dataset whose files are missing or of another size than its manifest
    says (a stat per file); object-store inputs are checked in full when cached (formats/store.py)."""
    if store.is_url(place):
        return
    m = load_manifest(place)
    for entry in m.files:
        f = Path(place) / entry.path
        try:
            size = f.stat().st_size
        except FileNotFoundError:
            raise ValueError(f"input {place}: {entry.path} is missing; `llmill verify` checks the root, "
                             "removing the dataset makes the next run compute it again") from None
        if size != entry.bytes:
            raise ValueError(f"input {place}: {entry.path} has {size} bytes, its manifest says {entry.bytes}; "
                             "`llmill verify` checks the root, removing the dataset makes the next run compute it again")
