"""dedup's persistent index when the root is an object store.

The index must live with the datasets: a refresh run on another node deduplicates against the
batches every earlier run kept. On an object store there is no lock to append under, so the
index is an append-only log whose order is decided by create-only writes:

- `segments/<name>-<sha256[:12]>.parquet`: a segment's file, never overwritten;
- `log/<seq>.json`: one entry per append ({name, file, rows, bytes, sha256}), written
  create-only at the next free sequence number; of two runs appending at once, the one refused
  takes the number after it. A batch appended again (a rerun) keeps its first place and its
  latest file, as the local index does.

dedup itself works on a local mirror in the node cache (tasks/dedup.py reads and appends a
local index as before): `pull` brings the mirror up to the log before a batch, `push` appends
the batch's segment after it.
"""

from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from pathlib import Path

from formats import store
from formats.files import file_sha256, write_atomic
from formats.index_segments import INDEX_MANIFEST
from tasks.remote_shards import current_remote_work

LOG = "log"
SEGMENTS = "segments"


def _log(url: str) -> list[dict]:
    fs, base = store.filesystem(url)
    fs.invalidate_cache(f"{base}/{LOG}")
    try:
        names = sorted(p for p in fs.ls(f"{base}/{LOG}", detail=False) if p.endswith(".json"))
    except FileNotFoundError:
        return []
    entries = []
    for p in names:
        entry = json.loads(fs.cat_file(p))
        entry["seq"] = int(Path(p).stem)
        entries.append(entry)
    return sorted(entries, key=lambda e: e["seq"])


@contextmanager
def _locked(local: Path):
    local.mkdir(parents=True, exist_ok=True)
    with open(local / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def pull(url: str, local: Path) -> list[dict]:
    """Make the local mirror hold the index at `url` as its log has it now; its segments."""
    with _locked(local):
        segments: dict[str, dict] = {}
        for entry in _log(url):
            place = segments.get(entry["name"], {}).get("seq", entry["seq"])
            segments[entry["name"]] = {**entry, "seq": place}
        fs, base = store.filesystem(url)
        for seg in segments.values():
            target = local / f"{seg['name']}.parquet"
            if target.is_file() and target.stat().st_size == seg["bytes"] and file_sha256(target) == seg["sha256"]:
                continue
            tmp = target.with_name(f".{target.name}.download")
            fs.get_file(f"{base}/{SEGMENTS}/{seg['file']}", str(tmp))
            if tmp.stat().st_size != seg["bytes"] or file_sha256(tmp) != seg["sha256"]:
                tmp.unlink()
                raise OSError(f"{url}/{SEGMENTS}/{seg['file']} does not match its log entry (size or sha256)")
            tmp.replace(target)
        rows = sorted(({"name": s["name"], "seq": s["seq"], "rows": s["rows"]} for s in segments.values()), key=lambda s: s["seq"])
        write_atomic(local / INDEX_MANIFEST, json.dumps({"segments": rows}, indent=1).encode())
        return rows


def push(url: str, local: Path, name: str) -> int:
    """Append the mirror's segment `name` to the index at `url`; its sequence number there."""
    from pyarrow import parquet as pq

    path = local / f"{name}.parquet"
    sha, size = file_sha256(path), path.stat().st_size
    file = f"{name}-{sha[:12]}.parquet"
    entry = {"name": name, "file": file, "rows": pq.ParquetFile(path).metadata.num_rows, "bytes": size, "sha256": sha}
    store.upload(path, f"{url}/{SEGMENTS}/{file}")
    for _ in range(1000):
        log = _log(url)
        if log and {k: log[-1].get(k) for k in entry} == entry:
            return log[-1]["seq"]  # this very append is already the latest (a rerun of a pushed batch)
        seq = log[-1]["seq"] + 1 if log else 0
        if store.create_only(f"{url}/{LOG}/{seq:010d}.json", json.dumps(entry).encode()):
            return seq
    raise RuntimeError(f"{url}: could not append to the index log (1000 sequence numbers taken while trying)")


def persistent_index(name: str, index_dir: str, out: Path) -> tuple[Path, str]:
    """Where a stage's persistent index `name` lives for the stage writing into `out`: under
    `index_dir` when given, else `<root>/index/`; on an object-store root, a local mirror of it."""
    if index_dir:
        return Path(index_dir) / name, ""
    work = current_remote_work()
    if work is None:
        return out.parent.parent / "index" / name, ""
    root = work.url.rsplit("/", 2)[0]  # <root>/dedup/<key>
    url = f"{root}/index/{name}"
    return store.cache_dir() / "index" / store.place_key(url), url
