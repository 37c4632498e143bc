"""Where datasets live: a local directory, or an object store named by an fsspec URL
(`s3://bucket/prefix`; gs:// and az:// the same way where gcsfs or adlfs are installed).

Committing a dataset differs by where it lives (tasks/stage.py: run_stage):

- Local disk: the stage writes `<place>.partial/` and renames it into place, under an fcntl lock
  on the partial directory. A rename within one filesystem is atomic, so a reader sees all of a
  dataset or none of it.
- Object store: there is no rename (a "move" copies and deletes object by object, and a killed
  move leaves half a copy) and no lock. The data files are uploaded under an attempt prefix,
  `<place>/attempt-<run id>/`, and the manifest is written last, at `<place>/manifest.json`,
  create-only (S3's `If-None-Match: *`). The manifest is the single point of commit: a place
  without one is not a dataset, and readers open only the files it lists under its prefix. Of two
  writers racing, one create succeeds; the other is refused, reads the winner's manifest, and its
  attempt is garbage for `llmill gc`. A lock would add nothing to that: the create is already
  exclusive, and a lock object left by a killed writer would need an expiry anyway.

Stage functions read and write local files. For an object-store root, the inputs are copied into
a node-local cache (verified against their manifests' hashes) and the stage writes into a local
partial directory there, whose files are hashed as they are committed and uploaded: the
dataset is never downloaded again to commit it. The cache lives in $LLMILL_CACHE_DIR, default
~/.cache/llmill. Shards on Dask workers that share no disk with the flow fetch and upload for
themselves (tasks/remote_shards.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlsplit


def is_url(path: str | Path) -> bool:
    """An fsspec URL of a remote store (not a local path, not file://)."""
    if isinstance(path, Path):
        return False
    scheme = urlsplit(str(path)).scheme
    return len(scheme) > 1 and scheme != "file"  # one letter: a Windows drive


def resolve_root(root: str | Path) -> str:
    """The root as the stages use it: an object-store URL without its trailing slash, or an
    absolute local path."""
    if is_url(root):
        return str(root).rstrip("/")
    return str(Path(str(root).removeprefix("file://")).resolve())


def join(base: str | Path, *parts: str) -> str | Path:
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return Path(base).joinpath(*parts)


def filesystem(url: str):
    """(fsspec filesystem, path within it) for an object-store URL."""
    from fsspec.core import url_to_fs

    return url_to_fs(url)


def exists(path: str | Path) -> bool:
    if not is_url(path):
        return Path(path).exists()
    fs, p = filesystem(str(path))
    fs.invalidate_cache(p)  # another process may have written it since this one listed
    return fs.exists(p)


def read_bytes(path: str | Path) -> bytes:
    if not is_url(path):
        return Path(path).read_bytes()
    fs, p = filesystem(str(path))
    return fs.cat_file(p)


def create_only(url: str, data: bytes) -> bool:
    """Write `data` at `url` unless an object is there: True when this call created it."""
    fs, p = filesystem(url)
    try:
        fs.pipe_file(p, data, mode="create")
    except FileExistsError:
        return False
    except OSError as e:  # a refused conditional write that the filesystem did not translate
        if "PreconditionFailed" in str(e) or "412" in str(e):
            return False
        raise
    return True


def remove(url: str) -> None:
    """Remove everything under `url`, if anything is there."""
    fs, p = filesystem(url)
    fs.invalidate_cache(p)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def upload(local: Path, url: str) -> None:
    fs, p = filesystem(url)
    fs.put_file(str(local), p)


def cache_dir() -> Path:
    return Path(os.environ.get("LLMILL_CACHE_DIR") or Path.home() / ".cache" / "llmill")


def place_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def attempt_prefix(run_id: str) -> str:
    return f"attempt-{run_id}"


def local_copy(url: str) -> Path:
    """The dataset at `url` as a local directory in the node-local cache (files at their paths,
    the manifest beside them), downloaded once and verified against the manifest's sizes and
    hashes; a local path is returned as it is."""
    from formats.files import file_sha256, write_atomic
    from formats.manifest import MANIFEST, load_manifest

    if not is_url(url):
        return Path(url)
    manifest = load_manifest(url)
    dest = cache_dir() / "datasets" / place_key(url) / manifest.digest[:16]
    if (dest / MANIFEST).is_file():
        return dest
    fs, base = filesystem(url)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.partial")
    tmp.mkdir(parents=True)
    try:
        for entry in manifest.files:
            target = tmp / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{base}/{manifest.prefix}/{entry.path}", str(target))
            if target.stat().st_size != entry.bytes or file_sha256(target) != entry.sha256:
                raise OSError(f"{url}: {entry.path} does not match its manifest (size or sha256); the store copy is damaged")
        write_atomic(tmp / MANIFEST, manifest.model_copy(update={"prefix": ""}).model_dump_json(indent=2).encode())
        try:
            os.replace(tmp, dest)
        except OSError:  # another process cached it first
            if not (dest / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
