"""Shards on Dask workers that share no disk with the flow, for a dataset on an object store.

With a local root every Dask worker must see the stage's partial directory (tasks/executor.py
checks). With an object-store root they need not: the bucket is the shared place. A shard
then runs like this:

- its arguments name the flow's local paths; on the worker, a path under the stage's partial
  directory becomes a path in a scratch directory of its own, and a path inside a local copy of
  an input dataset becomes the same path in the worker's own copy of that dataset, which it
  fetches from the store into its node cache (`store.local_copy`, checked against the manifest);
- files of the partial directory that the shard reads (dedup's signatures, its band buckets, the
  verdicts) were uploaded under the attempt prefix by whoever wrote them, and the worker fetches
  exactly those the flow lists for it, each checked against its SHA-256;
- everything the shard writes is uploaded under the attempt prefix, hashed and counted as it
  goes up, and handed back as manifest rows, so the commit never downloads a data file again.

Working files (under a hidden directory such as `.signed/`) come back down to the flow, which
reads them between phases; data files stay in the store until the manifest names them. After
the commit the attempt's working files are removed from the store.
"""

from __future__ import annotations

import contextvars
import shutil
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from formats import store
from formats.files import file_sha256
from formats.manifest import FileEntry, file_rows


def is_working_file(rel: str) -> bool:
    """Scratch state between phases (a hidden directory), not part of the dataset."""
    return any(part.startswith(".") for part in Path(rel).parts)


@dataclass
class RemoteWork:
    """One stage's attempt on an object store, as the flow's process sees it."""

    partial: str  # the flow's local partial directory
    url: str  # the dataset's place
    prefix: str  # the attempt prefix under the place
    inputs: dict[str, str]  # local copy directory -> the input dataset's URL
    in_store: dict[str, FileEntry] = field(default_factory=dict)  # partial-relative path -> what is uploaded there
    uploaded_from_here: dict[str, tuple[int, int]] = field(default_factory=dict)  # rel -> (size, mtime_ns) uploaded by the flow
    lock: threading.Lock = field(default_factory=threading.Lock)

    def object_url(self, rel: str) -> str:
        return f"{self.url}/{self.prefix}/{rel}"

    def data_files(self) -> dict[str, FileEntry]:
        """Data files the workers uploaded: listed in the manifest without being uploaded again."""
        return {rel: e for rel, e in self.in_store.items() if not is_working_file(rel)}


_work: contextvars.ContextVar[RemoteWork | None] = contextvars.ContextVar("llmill_remote_work", default=None)


@contextmanager
def remote_work(work: RemoteWork):
    """Shards run inside go through the store when the executor is a Dask cluster."""
    token = _work.set(work)
    try:
        yield work
    finally:
        _work.reset(token)


def current_remote_work() -> RemoteWork | None:
    return _work.get()


def _rel_under(path: str, base: str) -> str | None:
    if path == base:
        return ""
    if path.startswith(base.rstrip("/") + "/"):
        return path[len(base.rstrip("/")) + 1:]
    return None


def _strings(obj: Any):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _strings(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _strings(x)


def _rewrite(obj: Any, change: Callable[[str], str]) -> Any:
    if isinstance(obj, str):
        return change(obj)
    if isinstance(obj, tuple):
        return tuple(_rewrite(x, change) for x in obj)
    if isinstance(obj, list):
        return [_rewrite(x, change) for x in obj]
    if isinstance(obj, dict):
        return {k: _rewrite(v, change) for k, v in obj.items()}
    return obj


def entry_for(path: Path, rel: str) -> FileEntry:
    return FileEntry(path=rel, bytes=path.stat().st_size, rows=file_rows(path), sha256=file_sha256(path))


# --- the flow's side ---------------------------------------------------------------------

def shard_plan(work: RemoteWork, args: Any) -> dict:
    """What a worker needs for one shard: the files of the partial directory its arguments name
    that are in the store (the flow uploads those it wrote itself first)."""
    fetch = {}
    for s in _strings(args):
        rel = _rel_under(s, work.partial)
        if not rel:
            continue
        local = Path(s)
        with work.lock:
            from_a_worker = rel in work.in_store and rel not in work.uploaded_from_here  # already in the store
            if local.is_file() and not from_a_worker:
                st = local.stat()
                if work.uploaded_from_here.get(rel) != (st.st_size, st.st_mtime_ns):
                    work.in_store[rel] = entry_for(local, rel)
                    store.upload(local, work.object_url(rel))
                    work.uploaded_from_here[rel] = (st.st_size, st.st_mtime_ns)
            if rel in work.in_store:
                fetch[rel] = work.in_store[rel].model_dump()
    return {"partial": work.partial, "url": work.url, "prefix": work.prefix, "inputs": work.inputs, "fetch": fetch}


def take_back(work: RemoteWork, files: list[dict]) -> None:
    """Record what a shard uploaded; bring its working files down for the flow's next phase."""
    for row in files:
        entry = FileEntry.model_validate(row)
        with work.lock:
            work.in_store[entry.path] = entry
        if is_working_file(entry.path):
            local = Path(work.partial) / entry.path
            if not (local.is_file() and local.stat().st_size == entry.bytes and file_sha256(local) == entry.sha256):
                _download(work.object_url(entry.path), local, entry)


def _download(url: str, local: Path, entry: FileEntry) -> None:
    fs, p = store.filesystem(url)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{threading.get_ident()}.part")
    fs.get_file(p, str(tmp))
    if tmp.stat().st_size != entry.bytes or file_sha256(tmp) != entry.sha256:
        tmp.unlink()
        raise OSError(f"{url} does not match what its writer uploaded (size or sha256)")
    tmp.replace(local)


def remove_working_files(work: RemoteWork) -> None:
    """The attempt's scratch state in the store, once the manifest is created."""
    for top in sorted({Path(rel).parts[0] for rel in work.in_store if is_working_file(rel)}):
        store.remove(work.object_url(top))


# --- the worker's side -------------------------------------------------------------------

def run_remote_shard(fn: Callable, args: Any, preload: tuple[str, ...], on_crash: Callable | None, deadline_s: float | None,
                     plan: dict) -> dict:
    """A Dask task: the shard in a scratch directory of this worker, its inputs fetched from the
    store, its outputs uploaded under the attempt prefix and returned as manifest rows."""
    from tasks.executor import run_shard

    partial, inputs = plan["partial"], plan["inputs"]
    copies: dict[str, str] = {}
    scratch = Path(tempfile.mkdtemp(prefix="shard-", dir=_scratch_root()))
    try:
        def change(s: str) -> str:
            rel = _rel_under(s, partial)
            if rel is not None:
                return str(scratch / rel) if rel else str(scratch)
            for local_dir, url in inputs.items():
                rel = _rel_under(s, local_dir)
                if rel is not None:
                    if local_dir not in copies:
                        copies[local_dir] = str(store.local_copy(url))
                    return str(Path(copies[local_dir]) / rel) if rel else copies[local_dir]
            return s

        mine = _rewrite(args, change)
        fetched = set()
        for s in _strings(args):
            rel = _rel_under(s, partial)
            if rel:
                (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
        for rel, row in plan["fetch"].items():
            _download(f"{plan['url']}/{plan['prefix']}/{rel}", scratch / rel, FileEntry.model_validate(row))
            fetched.add(rel)
        result = run_shard(fn, mine, preload, on_crash, None, deadline_s)
        files = []
        for f in sorted(p for p in scratch.rglob("*") if p.is_file()):
            rel = str(f.relative_to(scratch))
            if rel in fetched:
                continue
            files.append(entry_for(f, rel).model_dump())
            store.upload(f, f"{plan['url']}/{plan['prefix']}/{rel}")
        return {"result": result, "files": files}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _scratch_root() -> str:
    root = store.cache_dir() / "shards"
    root.mkdir(parents=True, exist_ok=True)
    return str(root)
