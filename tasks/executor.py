"""The engine a stage's shards run on: a local pool of processes, or a Dask cluster.

A stage stays one cached Prefect task; inside it, `map_shards` hands the stage's shards to the
executor the config names. Per-shard Prefect tasks would cost 0.2-0.4 s of start latency each
against ~4 ms for a plain Dask task, so the fan-out belongs to the engine, not to Prefect.

Both engines run every shard the same way: in a child process (`Child`, forked from a
forkserver, kept for the next shard and the next stage, so imports and warm state are paid
once: measured 4x on the bench's 30 pages against a child per stage). So the
per-page SIGALRM timeout works (it needs a main thread; Dask runs tasks on worker threads)
and a crash of the child (a parser segfault) is the outcome of the one shard it was running,
handed to the stage's `on_crash`, instead of the death of a pool or a Dask worker.

Resumable shard by shard: when shard i finishes, a marker `.shards/i.json` with its result is
written into the stage's partial directory; a rerun or a Prefect retry of the stage skips every
shard whose marker is there and was written by the same code for the same job.
"""

from __future__ import annotations

import contextvars
import json
import multiprocessing
import os
import queue
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from formats.files import write_atomic
from formats.manifest import digest_of
from model.config import usable_cpus
from tasks.remote_shards import current_remote_work, run_remote_shard, shard_plan, take_back
from tasks.stage import Progress, code_version, no_progress, source_digest

MARKERS = ".shards"


class ExecutorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "dask"] = Field("local", description="local: a process pool here; dask: the cluster at `address`")
    address: str = Field("", description="the Dask scheduler, e.g. tcp://host:8786 (kind: dask)")
    retries: int = Field(1, ge=0, le=10, description="times a failed shard is run again before the stage fails")
    shard_bytes: int = Field(1_000_000, ge=4096, description="WARC bytes per extract shard: large files are split at record boundaries, small ones grouped")
    connect_timeout_s: float = Field(30.0, gt=0, description="how long to wait for the Dask scheduler")

    @model_validator(mode="after")
    def _dask_needs_an_address(self):
        if self.kind == "dask" and not self.address:
            raise ValueError("executor.kind 'dask' needs executor.address (tcp://host:8786)")
        return self


_current: contextvars.ContextVar[ExecutorConfig] = contextvars.ContextVar("llmill_executor", default=ExecutorConfig())


@contextmanager
def executor_scope(cfg: ExecutorConfig | None):
    """Run the stages called inside on `cfg`'s engine."""
    token = _current.set(cfg or ExecutorConfig())
    try:
        yield
    finally:
        _current.reset(token)


def current_executor() -> ExecutorConfig:
    return _current.get()


class ShardFailed(RuntimeError):
    """A shard that failed on every try; its label says which input it covers."""


class ShardCrashed(RuntimeError):
    """The child process running a shard died (a signal, or an exit without a result)."""


# --- shards in child processes -----------------------------------------------------------

_contexts: list = []
_contexts_lock = threading.Lock()


def _context(preload: tuple[str, ...]):
    """One forkserver per process; the first stage to ask decides what it preloads."""
    with _contexts_lock:
        if not _contexts:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(list(preload))
            _contexts.append(ctx)
        return _contexts[0]


def _serve(conn) -> None:
    """The child's loop: run each (fn, args) sent, answer with the result or the error."""
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):  # the parent is gone or done
            return
        try:
            answer = ("ok", fn(args))
        except BaseException as e:  # noqa: BLE001 - everything goes back to the parent, named
            answer = ("error", f"{type(e).__name__}: {e}", traceback.format_exc(limit=20))
        conn.send(answer)


class Child:
    """A child process that runs shards one after the other, so imports and warm state (models,
    caches) are paid once, while a crash still ends only the shard it was running."""

    def __init__(self, preload: tuple[str, ...] = ()):
        if multiprocessing.current_process().daemon:
            raise RuntimeError(
                "this Dask worker runs as a daemonic process, which cannot start the process a shard runs in: "
                "start workers with DASK_DISTRIBUTED__WORKER__DAEMON=False (or `dask worker --no-nanny`)")
        ctx = _context(tuple(preload))
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(theirs,), daemon=True)
        self.proc.start()
        theirs.close()

    def alive(self) -> bool:
        return self.proc.is_alive()

    def call(self, fn: Callable, args: Any, deadline_s: float | None = None) -> Any:
        """fn(args) in the child; its exceptions re-raised here, its death as ShardCrashed. Past
        `deadline_s` the child is killed: a hard bound that no code in it can catch or block
        (a parser stuck in C, a library that swallows the per-page timeout)."""
        try:
            self.conn.send((fn, args))
            if deadline_s is not None and not self.conn.poll(deadline_s):
                self.proc.kill()
                self.proc.join()
                raise ShardCrashed(f"the shard ran past its deadline of {deadline_s:g} s and its process was killed")
            message = self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(timeout=10)
            code = self.proc.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exited with status {code} and no result"
            raise ShardCrashed(f"the shard's process was {how}") from None
        if message[0] == "error":
            raise RuntimeError(f"{message[1]}\n{message[2]}")
        return message[1]

    def close(self) -> None:
        self.conn.close()
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


_thread_child = threading.local()  # on a Dask worker: one child per worker thread, kept between tasks
_kept: list[Child] = []  # the local pool's idle children, kept for the next stage (daemonic: they end with this process)
_kept_lock = threading.Lock()


def run_shard(fn: Callable, args: Any, preload: tuple[str, ...], on_crash: Callable | None, child: Child | None = None,
              deadline_s: float | None = None) -> Any:
    """What each engine runs for one shard: fn in a child process (the given one, else this
    thread's), and the stage's answer to a crash of that child or to its deadline."""
    if child is None:
        child = getattr(_thread_child, "child", None)
        if child is None or not child.alive():
            child = _thread_child.child = Child(preload)
    try:
        return child.call(fn, args, deadline_s)
    except ShardCrashed as e:
        if on_crash is None:
            raise
        return on_crash(args, str(e))


def worker_code() -> dict:
    """What a Dask worker would run: compared with the flow's before any shard is sent."""
    return {"version": code_version(), "source": source_digest()}


# --- the shard map ------------------------------------------------------------------------

def map_shards(
    fn: Callable,
    jobs: list[tuple[str, Any]],
    out: Path,
    preload: list[str],
    progress: Progress = no_progress,
    workers: int = 0,
    on_crash: Callable | None = None,
    deadline_s: float | None = None,
) -> tuple[list, int]:
    """Run fn over `jobs` [(label, args)] on the current executor; results in job order and the
    number of shards run now (the others were finished by an earlier attempt). A shard still
    running after `deadline_s` is killed and goes to on_crash (or fails) like a crashed one.

    fn and on_crash are module-level functions (they travel by reference to processes and
    workers); results must be JSON values, since each is kept in the shard's marker."""
    cfg = current_executor()
    work = current_remote_work() if cfg.kind == "dask" else None  # Dask workers without a shared disk: through the store
    markers = out / MARKERS
    markers.mkdir(parents=True, exist_ok=True)
    code = code_version()
    keys = [digest_of({"fn": f"{fn.__module__}.{fn.__qualname__}", "args": args, "code": code, "through_store": work is not None})
            for _, args in jobs]
    results: list = [None] * len(jobs)
    todo = []
    for i, key in enumerate(keys):
        marker = markers / f"{i:05d}.json"
        try:
            saved = json.loads(marker.read_text())
        except (OSError, ValueError):
            saved = None
        if saved is not None and saved.get("key") == key:
            if work is not None:
                take_back(work, saved["files"])
            results[i] = saved["result"]
        else:
            todo.append(i)
    done = len(jobs) - len(todo)
    progress(done, len(jobs))

    def finished(i: int, result: Any) -> None:
        nonlocal done
        saved = {"key": keys[i], "label": jobs[i][0], "result": result}
        if work is not None:  # the shard's files are in the store: its manifest rows are kept with its result
            take_back(work, result["files"])
            saved = {**saved, "result": result["result"], "files": result["files"]}
            result = result["result"]
        write_atomic(markers / f"{i:05d}.json", json.dumps(saved).encode())
        results[i] = result
        done += 1
        progress(done, len(jobs))

    if cfg.kind == "dask":
        failures = _map_dask(cfg, fn, [(i, jobs[i][1]) for i in todo], tuple(preload), out, on_crash, finished, deadline_s, work)
    else:
        failures = _map_local(cfg, fn, [(i, jobs[i][1]) for i in todo], tuple(preload), workers, on_crash, finished, deadline_s)
    if failures:
        i, error = failures[0]
        more = f" (and {len(failures) - 1} more shards)" if len(failures) > 1 else ""
        raise ShardFailed(
            f"shard {i} of {len(jobs)} ({jobs[i][0]}) failed after {cfg.retries + 1} tries{more}: {error}\n"
            f"{len(jobs) - len(failures)} finished shards are kept; a rerun runs only the others"
        )
    return results, len(todo)


def _map_local(cfg, fn, todo, preload, workers, on_crash, finished, deadline_s=None) -> list[tuple[int, str]]:
    """Threads that each drive one child process: as many at once as there are workers."""
    workers = min(workers or usable_cpus(), len(todo)) or 1
    failures = []
    idle: queue.SimpleQueue[Child | None] = queue.SimpleQueue()
    with _kept_lock:  # warm children from earlier stages first: their imports are paid
        for _ in range(workers):
            idle.put(_kept.pop() if _kept else None)

    def attempt(i, args):
        child = idle.get()
        try:
            for tries_left in range(cfg.retries, -1, -1):
                if child is None or not child.alive():
                    child = Child(preload)
                try:
                    return run_shard(fn, args, preload, on_crash, child, deadline_s)
                except Exception:  # retried, then reported with the shard
                    if not tries_left:
                        raise
        finally:
            idle.put(child)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shard") as pool:
        futures = {pool.submit(attempt, i, args): i for i, args in todo}
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                result = fut.result()
            except Exception as e:  # noqa: BLE001
                failures.append((i, f"{type(e).__name__}: {e}"))
                continue
            finished(i, result)
    with _kept_lock:
        while not idle.empty():
            child = idle.get()
            if child is not None and child.alive():
                _kept.append(child)
    return sorted(failures)


def dask_client(cfg: ExecutorConfig):
    """A client of the cluster at cfg.address whose workers run this very code."""
    from distributed import Client

    try:
        client = Client(cfg.address, timeout=cfg.connect_timeout_s, set_as_default=False)
    except OSError as e:
        raise RuntimeError(f"executor: no Dask scheduler answers at {cfg.address}: {e}") from None
    try:
        client.wait_for_workers(1, timeout=cfg.connect_timeout_s)
        ours = worker_code()
        theirs = client.run(worker_code)
        wrong = {w: c for w, c in theirs.items() if c != ours}
        if wrong:
            w, c = next(iter(wrong.items()))
            raise RuntimeError(
                f"executor: {len(wrong)} of {len(theirs)} Dask workers at {cfg.address} run other llmill code "
                f"(worker {w}: {c['version']}, source {c['source'][:12]}; this flow: {ours['version']}, source "
                f"{ours['source'][:12]}); start the workers from the same checkout or image"
            )
    except BaseException:
        client.close()
        raise
    return client


def _sees(path: str, token: str) -> bool:
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def require_shared_directory(client, out: Path) -> None:
    """Shards write their parts into `out`, which this process then commits: a worker that does
    not see it at the same path would write them where nobody reads them. Refuse such a cluster
    before any shard runs."""
    token = os.urandom(8).hex()
    probe = out / MARKERS / f".probe-{token}"
    write_atomic(probe, token.encode())
    try:
        seen = client.run(_sees, str(probe), token)
    finally:
        probe.unlink(missing_ok=True)
    blind = sorted(w for w, ok in seen.items() if not ok)
    if blind:
        raise RuntimeError(
            f"executor: {len(blind)} of {len(seen)} Dask workers ({', '.join(blind[:3])}) do not see {out}, where this "
            "stage's shards are written: run them on this machine or give them this path on a shared mount "
            "(with an object-store root, that is this machine's node cache, $LLMILL_CACHE_DIR)"
        )


def _map_dask(cfg, fn, todo, preload, out, on_crash, finished, deadline_s=None, work=None) -> list[tuple[int, str]]:
    from distributed import as_completed as dask_completed

    if not todo:
        return []
    client = dask_client(cfg)
    try:
        token = os.urandom(4).hex()
        if work is None:
            require_shared_directory(client, out)
            calls = [(i, (run_shard, fn, args, preload, on_crash, None, deadline_s)) for i, args in todo]
        else:  # tasks/remote_shards.py: the worker fetches what the shard reads and uploads what it writes
            calls = [(i, (run_remote_shard, fn, args, preload, on_crash, deadline_s, shard_plan(work, args))) for i, args in todo]
        futures = {
            client.submit(*call, key=f"{fn.__module__}.{fn.__name__}-{i}-{token}", retries=cfg.retries, pure=False): i
            for i, call in calls
        }
        failures = []
        for fut in dask_completed(list(futures), loop=client.loop):
            i = futures[fut]
            if fut.status == "error":
                failures.append((i, f"{type(fut.exception()).__name__}: {fut.exception()}"))
                continue
            finished(i, fut.result())
        return sorted(failures)
    finally:
        client.close()
