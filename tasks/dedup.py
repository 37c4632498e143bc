"""dedup: exact dedup on a normalized-text hash, then MinHash LSH near-dedup (datasketch).

Defaults follow FineWeb: 5-word shingles, 112 permutations banded 14 x 8. Signatures are
computed for all of a document's shingles at once in numpy, with datasketch's affine32
permutations, so they are datasketch MinHash values.
Within a batch, documents are visited in id order and the first of a cluster is kept, so
the choice is deterministic.

Distributed as the peers do it, with the same result as the one-process pass over
datasketch's MinHashLSH (`find_duplicates`, kept as the reference): sign per shard, buckets per
band and of the exact hashes (a task each on the executor; datasketch's band layout, compared
as bytes), then one resolve pass that reads the documents sharing a bucket only (its memory
follows the candidates, not the corpus), then filter. Kept documents' hashes and signatures go to a persistent index
so that a later batch is deduplicated against them without recomputing their signatures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from formats.documents import doc_files
from formats.files import file_sha256
from formats.index_segments import INDEX_SCHEMA, append_index_segment, live_index
from formats.manifest import digest_of
from tasks import remote_index
from tasks.executor import map_shards
from tasks.orchestration import stage_task
from tasks.remote_index import persistent_index
from tasks.stage import DocumentsInput, Progress, as_list, no_progress
from tasks.text_hash import exact_hash

VERSION = 1
MAX_HASH = np.uint64((1 << 32) - 1)
_BLOCK = 4096  # shingles per block: bounds memory at BLOCK x num_perm x 4 bytes
SCHEME = "affine32"
_P = np.uint64(0x100000001B3)  # odd, so it has an inverse modulo 2**64
_P_INV = np.uint64(pow(int(_P), -1, 1 << 64))
_WORD_BYTE = np.zeros(256, dtype=bool)
for _c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_":
    _WORD_BYTE[_c] = True
_WORD_BYTE[128:] = True


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exact: bool = True
    near: bool = True
    shingle_words: int = Field(5, ge=1)
    num_perm: int = Field(112, ge=2)
    bands: int = Field(14, ge=1)
    rows: int = Field(8, ge=1)
    seed: int = 1
    min_jaccard: float = Field(0.7, ge=0, le=1, description="estimated Jaccard a candidate pair must reach")
    index_dir: str = Field("", description="persistent index; empty: <root>/index")
    workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _bands_cover_permutations(self):
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows ({self.bands}x{self.rows}) exceeds num_perm ({self.num_perm})")
        return self

    def index_key(self) -> str:
        """Signatures are comparable only under the same shingling and permutations."""
        return digest_of({"k": self.shingle_words, "p": self.num_perm, "s": self.seed, "v": VERSION})[:12]


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's own affine32 permutations for (num_perm, seed): h -> a*h + b mod 2^32."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's finalizer, the pre-mix datasketch applies before its affine32 permutations."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
        return h ^ (h >> np.uint32(16))


class Signer:
    """MinHash signatures of texts; word hashes are cached, shingles hashed in numpy."""

    # odd multipliers that mix k consecutive word hashes into one shingle hash
    _MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                     0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9],
                    dtype=np.uint64)

    def __init__(self, shingle_words: int, num_perm: int, seed: int):
        self.k = shingle_words
        self.a, self.b = permutations(num_perm, seed)
        self.num_perm = num_perm
        self.pow = self.inv = np.zeros(0, dtype=np.uint64)
        mix = [self._MIX[i % len(self._MIX)] for i in range(self.k)]
        self.mix = np.array(mix, dtype=np.uint64)

    def word_ids(self, text: str) -> np.ndarray:
        """A 64-bit hash per word, for all words at once: a polynomial hash from prefix sums,
        shifted to each word's start with the multiplier's inverse (odd, so invertible mod 2^64).
        Word characters are ASCII letters, digits, _ and every non-ASCII byte."""
        b = np.frombuffer(text.lower().encode("utf-8"), dtype=np.uint8)
        if not len(b):
            return np.zeros(0, dtype=np.uint64)
        edges = np.diff(_WORD_BYTE[b].view(np.int8), prepend=np.int8(0), append=np.int8(0))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        powers, inverse = self._powers(len(b))
        with np.errstate(over="ignore"):
            prefix = np.zeros(len(b) + 1, dtype=np.uint64)
            np.cumsum((b.astype(np.uint64) + np.uint64(1)) * powers, dtype=np.uint64, out=prefix[1:])
            h = (prefix[ends] - prefix[starts]) * inverse[starts]
            h = (h ^ (h >> np.uint64(33))) * np.uint64(0xFF51AFD7ED558CCD)
            return h ^ (h >> np.uint64(33))

    def _powers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.pow) < n:
            size = max(n, 2 * len(self.pow), 1 << 16)
            with np.errstate(over="ignore"):
                one = np.ones(1, dtype=np.uint64)
                self.pow = np.concatenate((one, np.cumprod(np.full(size - 1, _P, dtype=np.uint64), dtype=np.uint64)))
                self.inv = np.concatenate((one, np.cumprod(np.full(size - 1, _P_INV, dtype=np.uint64), dtype=np.uint64)))
        return self.pow[:n], self.inv[:n]

    def shingle_hashes(self, text: str) -> np.ndarray:
        ids = self.word_ids(text)
        n = len(ids) - self.k + 1
        if n <= 0:  # shorter than one shingle: the whole text is the shingle
            n, k = 1, len(ids)
            if k == 0:
                return np.zeros(0, dtype=np.uint64)
        else:
            k = self.k
        with np.errstate(over="ignore"):
            h = np.zeros(n, dtype=np.uint64)
            for j in range(k):
                h = (h ^ ids[j : j + n]) * self.mix[j]
            h ^= h >> np.uint64(32)
        return np.unique((h & MAX_HASH).astype(np.uint32))

    def signature(self, text: str) -> np.ndarray:
        hv = fmix32(self.shingle_hashes(text))
        sig = np.full(self.num_perm, np.uint32(0xFFFFFFFF), dtype=np.uint32)
        with np.errstate(over="ignore"):
            for start in range(0, len(hv), _BLOCK):
                phv = hv[start : start + _BLOCK, None] * self.a + self.b
                np.minimum(sig, phv.min(axis=0), out=sig)
        return sig


SIGNED_SCHEMA = pa.schema([("id", pa.string()), ("hash", pa.string()), ("signature", pa.list_(pa.uint32()))])


def sign_shard(args) -> dict:
    """Exact hashes and MinHash signatures of one Parquet part, written to `signed_out`."""
    path, cfg, signed_out = args
    table = pq.read_table(path, columns=["id", "text"])
    ids = table.column("id").to_pylist()
    texts = table.column("text").to_pylist()
    hashes = [exact_hash(t) for t in texts] if cfg.exact else [""] * len(ids)
    sigs = pa.array([[]] * len(ids), pa.list_(pa.uint32()))
    if cfg.near and texts:
        signer = Signer(cfg.shingle_words, cfg.num_perm, cfg.seed)
        flat = np.concatenate([signer.signature(t) for t in texts])
        sigs = pa.ListArray.from_arrays(pa.array(np.arange(0, len(flat) + 1, cfg.num_perm, dtype=np.int32)), pa.array(flat))
    pq.write_table(pa.table({"id": ids, "hash": hashes, "signature": sigs}, schema=SIGNED_SCHEMA), signed_out)
    return {"rows": len(ids)}


def find_duplicates(
    ids: list[str],
    hashes: list[str],
    sigs: np.ndarray | None,
    cfg: DedupConfig,
    index_ids: list[str] = (),
    index_hashes: list[str] = (),
    index_sigs: np.ndarray | None = None,
) -> dict[str, tuple[str, str, float]]:
    """Map each duplicate id to (kept id, 'exact' | 'near', estimated Jaccard)."""
    from datasketch import LeanMinHash, MinHashLSH

    dups: dict[str, tuple[str, str, float]] = {}
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    if cfg.exact:
        first: dict[str, str] = {h: i for i, h in zip(index_ids, index_hashes) if h}
        for i in order:
            kept = first.setdefault(hashes[i], ids[i])
            if kept != ids[i]:
                dups[ids[i]] = (kept, "exact", 1.0)
    if not cfg.near or sigs is None:
        return dups
    lsh = MinHashLSH(num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows))
    signature_of: dict[str, np.ndarray] = {}

    def insert(key: str, sig: np.ndarray) -> None:
        signature_of[key] = sig
        lsh.insert(key, LeanMinHash(seed=cfg.seed, hashvalues=sig, scheme=SCHEME), check_duplication=False)

    if index_sigs is not None:
        for key, sig in zip(index_ids, index_sigs):
            insert(key, sig)
    for i in order:
        if ids[i] in dups or ids[i] in signature_of:
            continue
        sig = sigs[i]
        best, best_j = None, -1.0
        for cand in lsh.query(LeanMinHash(seed=cfg.seed, hashvalues=sig, scheme=SCHEME)):
            j = float(np.mean(signature_of[cand] == sig))
            if j > best_j or (j == best_j and cand < best):
                best, best_j = cand, j
        if best is not None and best_j >= cfg.min_jaccard:
            dups[ids[i]] = (best, "near", round(best_j, 4))
        else:
            insert(ids[i], sig)
    return dups


# --- the same result, distributed: buckets per band, then one pass over candidates only ---

def buckets_of(keys: np.ndarray, batch_size: int) -> list[list[int]]:
    """Groups of positions sharing a key (one row of `keys` per position; positions from
    batch_size on are the index's), with two members or more and at least one of the batch."""
    if len(keys) < 2:
        return []
    flat = np.ascontiguousarray(keys).view(np.dtype((np.void, keys.dtype.itemsize * keys.shape[1]))).ravel()
    order = np.argsort(flat, kind="stable")
    sorted_keys = flat[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    ends = np.append(starts[1:], len(order))
    return [order[a:b].tolist() for a, b in zip(starts, ends) if b - a >= 2 and order[a:b].min() < batch_size]


EXACT = -1  # the "band" whose key is the normalized-text hash


def band_buckets(args) -> dict:
    """One band's buckets over the batch's signed parts and the index part (a Dask/pool task):
    datasketch's band layout, hashvalues[band*rows:(band+1)*rows], compared as bytes. Band
    EXACT buckets the exact hashes instead (an empty hash, exact dedup off, is in none)."""
    signed_paths, index_path, band, cfg, out_path, _ = args
    if band == EXACT:
        hashes = [h for p in signed_paths for h in pq.read_table(p, columns=["hash"]).column("hash").to_pylist()]
        buckets = exact_buckets(hashes, pq.read_table(index_path, columns=["hash"]).column("hash").to_pylist())
    else:
        parts = [pq.read_table(p, columns=["signature"]) for p in [*signed_paths, index_path]]
        batch = sum(t.num_rows for t in parts[:-1])
        lo, hi = band * cfg.rows, (band + 1) * cfg.rows
        rows = []
        for t in parts:
            flat = t.column("signature").combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.uint32)
            rows.append(flat.reshape(-1, cfg.num_perm)[:, lo:hi] if len(flat) else np.zeros((t.num_rows, hi - lo), np.uint32))
        buckets = buckets_of(np.concatenate(rows), batch)
    pq.write_table(pa.table({"members": buckets}, schema=pa.schema([("members", pa.list_(pa.int64()))])), out_path)
    return {"buckets": len(buckets)}


def exact_buckets(hashes: list[str], index_hashes: list[str]) -> list[list[int]]:
    keys = np.array([h.encode() for h in [*hashes, *index_hashes]], dtype="S32").reshape(-1, 1)
    empty = {i for i, h in enumerate([*hashes, *index_hashes]) if not h}
    return [b for b in buckets_of(keys, len(hashes)) if not empty.intersection(b)]


def resolve(
    n: int,
    exact: list[list[int]],
    near: list[list[int]],
    key: Callable[[int], str],
    signature: Callable[[int], np.ndarray],
    cfg: DedupConfig,
) -> dict[str, tuple[str, str, float]]:
    """find_duplicates' pass (id order, first of a cluster kept, best Jaccard confirmed) over
    the positions that share a bucket only: a document in no bucket has no candidate and can
    be no one's. Positions from n on are the index's; `key(position)` is a document's id and
    `signature(position)` its signature, asked for bucket members only."""
    dups: dict[str, tuple[str, str, float]] = {}
    if cfg.exact:
        for bucket in exact:
            # the index's holder of a hash is its last in id order (a dict built in that order)
            held = [p for p in bucket if p >= n]
            kept = key(max(held, key=lambda p: (key(p), p))) if held else None
            for p in sorted((p for p in bucket if p < n), key=lambda p: (key(p), p)):
                if kept is None:
                    kept = key(p)
                elif kept != key(p):
                    dups[key(p)] = (kept, "exact", 1.0)
    if not cfg.near:
        return dups
    buckets_of_position: dict[int, list[int]] = {}
    for b, bucket in enumerate(near):
        for p in bucket:
            buckets_of_position.setdefault(p, []).append(b)
    inserted: dict[str, int] = {}  # id -> the position whose signature the LSH holds
    for p in sorted((p for p in buckets_of_position if p < n), key=lambda p: (key(p), p)):
        if key(p) in dups or key(p) in inserted:
            continue
        sig = signature(p)
        best, best_j = None, -1.0
        for q in {q for b in buckets_of_position[p] for q in near[b]}:
            if q != p and (q >= n or inserted.get(key(q)) == q):
                j = float(np.mean(signature(q) == sig))
                if j > best_j or (j == best_j and key(q) < best):
                    best, best_j = key(q), j
        if best is not None and best_j >= cfg.min_jaccard:
            dups[key(p)] = (best, "near", round(best_j, 4))
        else:
            inserted[key(p)] = p
    return dups


def resolve_from_files(signed: list[str], index_part: str, bucket_files: list[str], cfg: DedupConfig) -> dict[str, tuple[str, str, float]]:
    """The resolve step: reads the buckets, then the id and signature of their members only
    (one part at a time), so its memory grows with the candidates, not with the corpus."""
    exact: list[list[int]] = []
    near: list[list[int]] = []
    for path in bucket_files:
        members = pq.read_table(path).column("members").to_pylist()
        (exact if Path(path).name == "exact.parquet" else near).extend(members)
    parts = [*signed, index_part]
    starts = np.cumsum([0] + [pq.ParquetFile(p).metadata.num_rows for p in parts])
    n = int(starts[-2])
    wanted = np.array(sorted({p for bucket in [*exact, *near] for p in bucket}), dtype=np.int64)
    ident: dict[int, str] = {}
    sig: dict[int, np.ndarray] = {}
    for k, path in enumerate(parts):
        mine = wanted[(wanted >= starts[k]) & (wanted < starts[k + 1])]
        if not len(mine):
            continue
        t = pq.read_table(path, columns=["id", "signature"]).take(pa.array(mine - starts[k]))
        for p, i, s in zip(mine.tolist(), t.column("id").to_pylist(), t.column("signature").to_pylist()):
            ident[p] = i
            sig[p] = np.asarray(s, dtype=np.uint32)
    return resolve(n, exact, near, ident.__getitem__, sig.__getitem__, cfg)


def kept_index_rows(signed: list[str], dups: dict) -> Iterator[pa.Table]:
    """The batch's kept documents as index rows, one signed part at a time."""
    for path in signed:
        t = pq.read_table(path)
        keep = pa.array([i not in dups for i in t.column("id").to_pylist()], pa.bool_())
        yield t.filter(keep).select(["id", "hash", "signature"]).cast(INDEX_SCHEMA)


DUP_SCHEMA = pa.schema(
    [("id", pa.string()), ("url", pa.string()), ("kept_id", pa.string()), ("kind", pa.string()), ("jaccard", pa.float32())]
)
# the resolve step's verdicts, handed to the filter tasks (the Jaccard as resolve computed it)
DUPS_SCHEMA = pa.schema([("id", pa.string()), ("kept_id", pa.string()), ("kind", pa.string()), ("jaccard", pa.float64())])
PART_DUP_SCHEMA = pa.schema([("id", pa.string()), ("url", pa.string()), ("kept_id", pa.string()), ("kind", pa.string()),
                             ("jaccard", pa.float64())])


def filter_shard(args) -> dict:
    """One part's kept documents, and its rows of the duplicates table (a Dask/pool task)."""
    path, dups_path, docs_out, dup_rows_out, _ = args
    verdicts = {r["id"]: r for r in pq.read_table(dups_path).to_pylist()}
    t = pq.read_table(path)
    ids = t.column("id").to_pylist()
    is_dup = np.array([i in verdicts for i in ids], dtype=bool)
    pq.write_table(t.filter(pa.array(~is_dup)), docs_out, compression="zstd")
    rows = [{"id": i, "url": url, **{k: verdicts[i][k] for k in ("kept_id", "kind", "jaccard")}}
            for i, url in zip(ids, t.column("url").to_pylist()) if i in verdicts]
    pq.write_table(pa.Table.from_pylist(rows, PART_DUP_SCHEMA), dup_rows_out)
    return {"kept": int((~is_dup).sum())}


def index_place(cfg: DedupConfig, out: Path) -> tuple[Path, str]:
    """(the local index dedup reads and appends, the object-store index it mirrors or "").
    By default the index lives in the root beside the datasets: `<root>/index/`."""
    return persistent_index(f"minhash-{cfg.index_key()}", cfg.index_dir, out)


def dedup(inputs: DocumentsInput, cfg: DedupConfig, out: Path, progress: Progress = no_progress) -> dict:
    files = [f for ds in as_list(inputs["documents"]) for f in doc_files(ds)]
    index, shared_index = index_place(cfg, out)
    segment = out.name.removesuffix(".partial")
    if shared_index:
        remote_index.pull(shared_index, index)
    scratch = out / ".signed"
    scratch.mkdir(exist_ok=True)
    signed = [str(scratch / f"part-{i:05d}.parquet") for i in range(len(files))]
    _, ran = map_shards(sign_shard, [(str(f), (str(f), cfg, s)) for f, s in zip(files, signed)], out, ["tasks.dedup"],
                        progress, workers=cfg.workers)
    signed = sorted(signed, key=lambda s: str(files[signed.index(s)]))  # documents in path order
    ids = [i for p in signed for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()]
    live = live_index(index, segment, pa.array(ids, pa.string()), cfg.num_perm)
    index_part = str(scratch / "index.parquet")  # the index's live entries ride along as one more part
    pq.write_table(live, index_part)
    index_ids = live["id"]
    del live
    bands = ([EXACT] if cfg.exact else []) + (list(range(cfg.bands)) if cfg.near else [])
    buckets = [str(scratch / ("exact.parquet" if b == EXACT else f"band-{b:03d}.parquet")) for b in bands]
    index_state = file_sha256(Path(index_part))  # in the job, so a band's marker is reused only for the same index
    map_shards(band_buckets, [("exact hashes" if b == EXACT else f"band {b}", (signed, index_part, b, cfg, path, index_state))
                              for b, path in zip(bands, buckets)], out / ".bands", ["tasks.dedup"], workers=cfg.workers)
    dups = resolve_from_files(signed, index_part, buckets, cfg)

    (out / "docs").mkdir(exist_ok=True)
    dups_path = str(scratch / "dups.parquet")
    pq.write_table(pa.Table.from_pylist([{"id": i, "kept_id": k, "kind": kind, "jaccard": j} for i, (k, kind, j) in sorted(dups.items())],
                                        DUPS_SCHEMA), dups_path)
    parts = [(str(f), dups_path, str(out / "docs" / f"part-{n:05d}.parquet"), str(scratch / f"dups-{n:05d}.parquet"), digest_of(sorted(dups.items())))
             for n, f in enumerate(files)]
    map_shards(filter_shard, [(f, job) for f, job in zip(map(str, files), parts)], out / ".filter", ["tasks.dedup"], workers=cfg.workers)
    dup_rows = [row for job in parts for row in pq.read_table(job[3]).to_pylist()]  # in file order, as the stage always wrote them
    pq.write_table(pa.Table.from_pylist(dup_rows, DUP_SCHEMA), out / "duplicates.parquet")
    append_index_segment(index, segment, kept_index_rows(signed, dups))
    if shared_index:
        remote_index.push(shared_index, index, segment)
    exact = sum(1 for d in dups.values() if d[1] == "exact")
    kept_ids = pa.array([d[0] for d in dups.values()], pa.string())
    return {
        "shards": len(files),
        "shards_processed": ran,
        "documents_in": len(ids),
        "exact_duplicates": exact,
        "near_duplicates": len(dups) - exact,
        "documents_out": len(ids) - len(dups),
        "index_documents_before": len(index_ids),
        "duplicates_of_index": pc.sum(pc.is_in(kept_ids, value_set=index_ids.combine_chunks())).as_py() or 0,
        "index": shared_index or str(index),
    }


dedup_task = stage_task(dedup, sharded=True)
