"""How every stage runs (see DESIGN.md): where its dataset goes, the lock, the commit.

A dataset is a place holding data files and, written last, `manifest.json` (formats/manifest.py).
On a local disk a stage writes into `<name>.partial/` beside its final place and renames it into
place when done; on an object store it uploads the files under an attempt prefix and creates the
manifest create-only (formats/store.py says why no lock and no rename). Either way a place
without a manifest never counts as a dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, TypedDict

from pydantic import BaseModel

from formats.files import file_sha256, fsync_dir, fsync_file, write_atomic
from formats.manifest import MANIFEST, FileEntry, Manifest, digest_of, file_rows, is_dataset, load_manifest


def code_version() -> str:
    """The installed llmill version plus the git commit when run from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("llmill")
    except PackageNotFoundError:
        v = "0+unknown"
    head = Path(__file__).resolve().parents[1] / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref = (head.parent / ref[5:]).read_text().strip()
        v += f"+g{ref[:10]}"
    except OSError:
        pass
    return v


def source_digest() -> str:
    """A digest of llmill's own source files: equal only where the same code would run."""
    base = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for package in ("formats", "tasks", "model", "flows"):
        for f in sorted((base / package).rglob("*.py")):
            h.update(f"{f.relative_to(base)}\0".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def stage_dir(root: str | Path, stage: str, version: int, cfg: BaseModel, inputs: Inputs, layout: dict | None = None) -> Path | str:
    """Where a stage's output lives: a function of (stage, config, input digests) only, plus the
    executor settings its part files depend on (`layout`: extract's shard size), if any."""
    place = {
        "stage": stage,
        "version": version,
        "config": cfg.model_dump(mode="json"),
        "inputs": map_inputs(inputs, lambda p: load_manifest(p).digest),
    }
    if layout:
        place["layout"] = layout
    key = digest_of(place)[:16]
    from formats import store

    return store.join(root, stage, key)


def source_layout(module: str, cfg: BaseModel, layout: dict | None) -> dict | None:
    """`layout` plus, for a stage that reads data from outside the root (ingest: a module-level
    SOURCE_STATE(cfg)), the state of those sources: a changed source is a new dataset."""
    import sys

    state = getattr(sys.modules.get(module), "SOURCE_STATE", None)
    if state is None:
        return layout
    return {**(layout or {}), "sources": state(cfg)}



class Progress(Protocol):
    def __call__(self, done: int, total: int) -> None: ...


def no_progress(done: int, total: int) -> None:
    return None


# A stage's inputs by name: each names one dataset, or a list of them (extract's raw datasets,
# evaluate's). The names are part of the dataset's place, so `{"documents": d}` and
# `{"tokenizer": d}` are different inputs even for the same dataset.
Inputs = Mapping[str, "str | Path | Sequence[str | Path]"]
StageFn = Callable[[Inputs, Any, Path, Progress], dict]


def input_places(inputs: Inputs) -> list[str]:
    """Every input dataset, by name, a list's in its order."""
    if not isinstance(inputs, Mapping):
        raise TypeError(f"a stage's inputs are a mapping of names to datasets, not {type(inputs).__name__}")
    return [str(p) for name in sorted(inputs) for p in as_list(inputs[name])]


def map_inputs(inputs: Inputs, fn: Callable[[str], str]) -> dict:
    """The same names, each dataset replaced by fn(dataset)."""
    return {name: [fn(str(p)) for p in v] if isinstance(v, (list, tuple)) else fn(str(v)) for name, v in inputs.items()}


def as_list(value) -> list:
    """An input's datasets: a name holds one dataset or a list of them."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


class DocumentsInput(TypedDict):
    """The inputs of a stage that reads documents: one documents dataset or several."""

    documents: str | list[str]


LOCK_WAIT_S = float(os.environ.get("LLMILL_STAGE_LOCK_WAIT_S", 3600))


class StageLock:
    """An exclusive lock on a partial directory: two runs never write the same dataset.

    A second run waits for the first (a scheduled refresh that meets a manual run), up to
    `wait_s`, saying so once, and then finds the finished dataset. The lock file is never
    unlinked by its holder: unlinking after unlocking let a run that was waiting on the old file
    and a run that created a new one both hold "the" lock. What removes a lock file (llmill gc,
    remove_if_free) holds it while it does, and a run that acquires checks that the file it
    locked is still the one at the path, trying again if not.
    """

    def __init__(self, path: Path, wait_s: float | None = None, poll_s: float = 0.2, what: str | None = None):
        self.path = path
        self.what = what or f"another run writing {path.parent}"
        self.wait_s = LOCK_WAIT_S if wait_s is None else wait_s
        self.poll_s = poll_s

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        started, said = time.monotonic(), False
        while True:
            fh = open(self.path, "a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                waited = time.monotonic() - started
                if waited >= self.wait_s:
                    raise RuntimeError(f"waited {waited:.0f} s for {self.what} ({self.path}; LLMILL_STAGE_LOCK_WAIT_S), "
                                       "try again when it has finished") from None
                if not said:
                    print(f"waiting for {self.what} (up to {self.wait_s:.0f} s)", flush=True)
                    said = True
                time.sleep(self.poll_s)
                continue
            try:
                same = os.fstat(fh.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fh = fh
                return self
            fh.close()  # removed (and maybe recreated) while this run waited: lock the file that is there now

    def __exit__(self, *exc):
        self.fh.close()  # closing releases the lock; the file stays (see the class docstring)

    @staticmethod
    def remove_if_free(path: Path, also: Path | None = None) -> bool:
        """Remove a lock file (and `also`, its partial directory) unless a run holds it; True when removed."""
        import fcntl

        try:
            fh = open(path, "a+")
        except FileNotFoundError:
            return False
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            if also is not None and also.exists():
                shutil.rmtree(also)
            path.unlink(missing_ok=True)
            return True


def run_stage(
    stage: str,
    version: int,
    fn: StageFn,
    inputs: Inputs,
    cfg: BaseModel,
    root: str | Path,
    progress: Progress = no_progress,
    resumable: bool = False,
    sharded: bool = False,
    layout: dict | None = None,
) -> Path:
    """Return the dataset for (stage, cfg, inputs), computing it only when it is absent.

    A resumable stage (the crawler) keeps its partial directory across a killed run and
    continues from it. A sharded stage keeps it too, when the same code wrote it: its finished
    shards (tasks/executor.py's markers) are not run again. Any other stage starts afresh.
    Top-level hidden directories of the partial directory (shard markers, scratch files) are
    working state: removed before the manifest is written.
    """
    from tasks.verify import input_sizes_match

    for p in input_places(inputs):
        input_sizes_match(p)  # fail early and clearly on a missing, truncated or replaced input
    out = stage_dir(root, stage, version, cfg, inputs, source_layout(fn.__module__, cfg, layout))
    if is_dataset(out):
        return out
    from formats import store

    if store.is_url(out):
        # an object store: work in a node-local partial directory on local copies of the inputs,
        # then upload under an attempt prefix and create the manifest (formats/store.py)
        partial = store.cache_dir() / "partial" / f"{store.place_key(str(out))}.partial"
        local_inputs = map_inputs(inputs, lambda p: str(store.local_copy(p)))
    else:
        partial, local_inputs = out.with_name(out.name + ".partial"), map_inputs(inputs, str)
    with StageLock(partial.with_name(partial.name.removesuffix(".partial") + ".lock")):
        if is_dataset(out):  # finished by a concurrent run while we waited
            return out
        attempt = partial / ".attempt.json"
        earlier = _read_attempt(attempt) if partial.exists() else {}
        if partial.exists() and not resumable:
            if not (sharded and earlier.get("code_version") == code_version()):
                shutil.rmtree(partial)
                earlier = {}
        partial.mkdir(parents=True, exist_ok=True)
        # a resumed attempt keeps its run id: on an object store, its finished shards' files are under that prefix
        run_id = earlier.get("run_id") or uuid.uuid4().hex
        write_atomic(attempt, json.dumps({"code_version": code_version(), "run_id": run_id}).encode())
        if resumable and store.is_url(out):  # the run's progress goes to the store too: another node resumes from it
            from model.mirror import RESUME_FILE

            write_atomic(partial / RESUME_FILE, json.dumps({"url": f"{out}/resume"}).encode())
        from tasks.remote_shards import RemoteWork, remote_work

        work = RemoteWork(partial=str(partial), url=str(out), prefix=store.attempt_prefix(run_id),
                          inputs={local: url for local, url in zip(input_places(local_inputs), input_places(inputs)) if store.is_url(url)})
        started = time.time()
        if store.is_url(out):
            with remote_work(work):
                stats = fn(local_inputs, cfg, partial, progress)
        else:
            stats = fn(local_inputs, cfg, partial, progress)
        stats.setdefault("seconds", round(time.time() - started, 3))
        for hidden in partial.iterdir():
            if hidden.name.startswith(".") and hidden.is_dir():
                shutil.rmtree(hidden)
        attempt.unlink()
        files = []
        for f in sorted(p for p in partial.rglob("*") if p.is_file() and p.name != MANIFEST):
            if f.name.startswith("."):
                continue
            fsync_file(f)  # on disk before the manifest that lists it
            files.append(
                FileEntry(
                    path=str(f.relative_to(partial)),
                    bytes=f.stat().st_size,
                    rows=file_rows(f),
                    sha256=file_sha256(f),
                )
            )
        uploaded = {rel: e for rel, e in work.data_files().items() if rel not in {f.path for f in files}}
        files = sorted([*files, *uploaded.values()], key=lambda e: e.path)  # Dask workers' files, already in the store
        manifest = Manifest(
            stage=stage,
            stage_version=version,
            code_version=code_version(),
            config=cfg.model_dump(mode="json"),
            inputs=[load_manifest(p).digest for p in input_places(inputs)],
            files=files,
            stats=stats,
            created_at=time.time(),
            run_id=run_id,
        )
        if store.is_url(out):
            _commit_to_store(partial, str(out), manifest, work)
        else:
            write_atomic(partial / MANIFEST, manifest.model_dump_json(indent=2).encode())
            if out.exists():  # a stale directory without a manifest
                shutil.rmtree(out)
            for d in {f.parent for f in partial.rglob("*") if f.is_file()}:
                fsync_dir(d)
            os.replace(partial, out)
            fsync_dir(out.parent)
    return out


def _read_attempt(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _commit_to_store(partial: Path, out: str, manifest: Manifest, work) -> None:
    """Upload the files under this attempt's prefix (but those Dask workers uploaded already),
    then create the manifest; the loser of a race keeps the winner's dataset. The local files
    become the node's cached copy when they are all here."""
    from formats import store
    from tasks.remote_shards import remove_working_files

    manifest = manifest.model_copy(update={"prefix": store.attempt_prefix(manifest.run_id)})
    elsewhere = work.data_files()
    for entry in manifest.files:
        if entry.path not in elsewhere:
            store.upload(partial / entry.path, f"{out}/{manifest.prefix}/{entry.path}")
    if not store.create_only(f"{out}/{MANIFEST}", manifest.model_dump_json(indent=2).encode()):
        shutil.rmtree(partial)  # another writer committed first: its dataset stands, this attempt is garbage
        return
    store.remove(f"{out}/resume")  # a resumable stage's progress: done with now
    remove_working_files(work)
    if elsewhere:  # the data files are on the workers' nodes, not here: no complete local copy to keep
        shutil.rmtree(partial)
        return
    write_atomic(partial / MANIFEST, manifest.model_copy(update={"prefix": ""}).model_dump_json(indent=2).encode())
    cached = store.cache_dir() / "datasets" / store.place_key(out) / manifest.digest[:16]
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(partial, cached)
    except OSError:
        shutil.rmtree(partial)
