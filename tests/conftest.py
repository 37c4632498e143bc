"""The suite's shared set-up: the start guard behind the tiers, and the expensive things built
once per session on one content-addressed root (the stage cache makes a second request for
the same dataset free, so fixtures and tests may both ask for it).

Tiers: tests marked `trainer`, `prefect_server`, `browser` or `database` start one of those;
`make test-fast` deselects them, `make test` runs everything. The guard (tests/guard/) fails a
test that starts one of them without its mark, in the pytest process and in every Python
process it starts.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Before Prefect is imported: the suite's Prefect home is its own (profiles, memo store, local
# results), never the user's ~/.prefect, and each xdist worker has a separate one.
PREFECT_HOME = tempfile.mkdtemp(prefix="llmill-test-prefect-home-")
os.environ["PREFECT_HOME"] = PREFECT_HOME
# The node cache (and its accelerator lock) is the suite's own, not ~/.cache/llmill: a training
# the machine runs beside the suite (`make run`) never holds the suite's trainings back. Each
# xdist worker has its own, as a node of its own: the workers are pinned to separate CPUs
# (pytest_configure), so one worker's training never waits for the other's (a shared lock left
# a worker idle for as long as the other trained: 60 s of the refresh test's 72). The queue
# itself is tested in tests/faults/test_stage_lock.py.
os.environ["LLMILL_CACHE_DIR"] = tempfile.mkdtemp(prefix="llmill-test-cache-")

GUARD_DIR = Path(__file__).parent / "guard"
sys.path.insert(0, str(GUARD_DIR))
import llmill_test_guard as guard  # noqa: E402

sys.path.remove(str(GUARD_DIR))


def pytest_configure(config):
    _pin_xdist_worker()
    log = tempfile.NamedTemporaryFile(prefix="llmill-guard-", suffix=".log", delete=False)
    log.close()
    config._llmill_guard_log = Path(log.name)
    os.environ[guard.LOG] = log.name
    os.environ[guard.ALLOW] = ""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(GUARD_DIR), os.environ.get("PYTHONPATH", "")]))
    guard.install()


def _pin_xdist_worker() -> None:
    """Each xdist worker (and everything it starts) gets its own share of the CPUs: trainers size
    their threads by the CPUs they may use (model.config.usable_cpus), so two workers' trainings
    do not oversubscribe 2 cores with 2 x 2 OpenMP threads (measured on 2 cores: 680 s pinned against
    698 s unpinned, 17.0 against 19.4 CPU minutes)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    cpus, workers, index = sorted(os.sched_getaffinity(0)), int(count), int(worker.removeprefix("gw"))
    if len(cpus) < workers:  # more workers than CPUs: they take turns on one CPU each
        os.sched_setaffinity(0, [cpus[index % len(cpus)]])
        return
    share = len(cpus) // workers
    os.sched_setaffinity(0, cpus[index * share : (index + 1) * share])


def pytest_unconfigure(config):
    guard.uninstall()
    shutil.rmtree(PREFECT_HOME, ignore_errors=True)
    shutil.rmtree(os.environ["LLMILL_CACHE_DIR"], ignore_errors=True)
    log = getattr(config, "_llmill_guard_log", None)
    if log is not None:
        log.unlink(missing_ok=True)


# Tests that share an expensive session fixture run on one xdist worker, so it is built once:
# {fixture: group}. The single run is in the DDP run's group because a DDP test compares the two.
SHARED_BY_GROUP = {"tiny_pipeline": "tiny_pipeline", "pretrained_lm": "pretrained_lm", "dask_cluster": "dask_cluster",
                   "ddp_run": "ddp_run", "single_run": "ddp_run"}


def pytest_itemcollected(item):
    """Marked as collected: xdist's loadgroup reads the marks in its modifyitems hook."""
    for fixture, group in SHARED_BY_GROUP.items():
        if fixture in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(group))
            break


# What starts a trainer, a server or a cluster: the suite's long tests.
HEAVY = ("trainer", "prefect_server", "browser", "database", "dask_cluster")


def _start_order(item) -> bool:
    return not any(item.get_closest_marker(kind) for kind in HEAVY)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """The long tests first, each tier in the seed's random order: xdist hands tests out in
    collection order, so the short ones fill the workers' last minutes instead of one long test
    running alone at the end."""
    items.sort(key=_start_order)


def pytest_terminal_summary(terminalreporter, config):
    """The order's seed at the end of every run: `-q` (as make runs pytest) hides the header
    line where pytest-randomly prints it, and a failed order is replayed from it."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int):
        terminalreporter.write_line(f"Using --randomly-seed={seed} (make test PYTEST_ARGS=--randomly-seed={seed} replays this order)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before any fixture of this test is set up: what it may start."""
    os.environ[guard.ALLOW] = ",".join(kind for kind in guard.KINDS if item.get_closest_marker(kind))
    os.environ[guard.TEST] = item.nodeid


@pytest.fixture(autouse=True)
def _started_only_what_is_marked(request):
    """Starts refused in child processes are logged there; the test fails on them here."""
    yield
    log: Path = request.config._llmill_guard_log
    refused = log.read_text()
    if refused:
        log.write_text("")
        pytest.fail(refused, pytrace=False)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory, migrated_sqlite) -> tuple[dict, str]:
    """One `prefect server start` (SQLite, from the migrated template) per xdist worker for the
    session: (the client's PREFECT_* settings for it, API URL). Tests that run flows against a
    server share it, and so do basic auth and the results-storage block; those about a fresh
    server (the served runs, the worker script, e2e) start their own. Only the PREFECT_* settings: the rest of the environment a test
    passes on is its own (the start guard's variables name the running test)."""
    from tests.helpers import prefect_server

    home = tmp_path_factory.mktemp("prefect-server")
    with prefect_server(home, sqlite_template=migrated_sqlite) as (env, api):
        yield {k: v for k, v in env.items() if k.startswith("PREFECT_")}, api


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory, prefect_api):
    """Flows run in this process against the session's server; results in a tmp dir."""
    from prefect.settings import (PREFECT_API_AUTH_STRING, PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
                                  PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings)

    env, api = prefect_api
    results = tmp_path_factory.mktemp("prefect-results")
    # no flow-run heartbeats (nothing here reads them): each flow's end would wait for the
    # heartbeat thread's 1 s sleep, ~1 s per (mostly cached) flow, as `llmill run` skips on its
    # embedded server (flows.cli)
    with temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: env["PREFECT_API_AUTH_STRING"],
                             PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(results), PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory) -> Path:
    """The data root that session fixtures build into; every dataset in it is content-addressed,
    so a test that asks for one already built gets it back without recomputing."""
    return tmp_path_factory.mktemp("shared-root")


@pytest.fixture(scope="session")
def library_corpus(shared_root) -> tuple[str, str, str]:
    """(documents, tokenizer, shards) from 120 library reference sources, vocabulary 512."""
    from tests.corpus import tokenized

    return tokenized(shared_root, 120)


# The one 300-step pretraining of the suite: test_train checks its loss and export, the
# fine-tuning tests start from it.
PRETRAIN_STEPS = dict(steps=300, micro_batch_size=16, seq_len=64, lr=3e-3, warmup_steps=5, eval_every=100, eval_windows=16,
                      checkpoint_every=300, log_every=20, trackers=[], threads_per_process=0)


@pytest.fixture(scope="session")
def pretrained_lm(shared_root, library_corpus) -> str:
    """A pretrain dataset (run directory) of test-tiny on the library corpus."""
    from model.config import ModelShape, TrainConfig
    from tasks.pretrain import VERSION, PretrainConfig, pretrain
    from tasks.stage import run_stage

    _, tok, shards = library_corpus
    cfg = PretrainConfig(model=ModelShape(preset="test-tiny"), train=TrainConfig(**PRETRAIN_STEPS))
    return str(run_stage("pretrain", VERSION, pretrain, {"shards": shards, "tokenizer": tok}, cfg, shared_root, resumable=True))


@pytest.fixture(scope="session")
def single_run(library_corpus, tmp_path_factory) -> Path:
    """One single-process training at tests.helpers.run_spec's defaults (40 steps of 8 x 64
    tokens): the uninterrupted run that exact resume, the DDP group at equal global batch and the
    retried pretrain task are compared against. Tests copy it before writing to it."""
    from model.launch import run_training
    from tests.helpers import run_spec

    _, tok, shards = library_corpus
    out = tmp_path_factory.mktemp("single-run") / "run"
    run_training(run_spec((tok, shards), out))
    return out


@pytest.fixture(scope="session")
def site_warc(tmp_path_factory) -> Path:
    """Python docs pages from six sections of the site, in one WARC file."""
    from tests.helpers import python_doc_site_pages, write_warc

    return write_warc(tmp_path_factory.mktemp("site-warc") / "docs.warc.gz", python_doc_site_pages(14))


@pytest.fixture(scope="session")
def tiny_pipeline(shared_root, site_warc) -> dict:
    """The whole pipeline at test-tiny size on the site WARC, as a config tree: the pipeline test
    runs it in-process and the service tests run it served, over the same content-addressed
    root, so whichever runs first computes the datasets and the others find them."""
    from tests.helpers import tiny_pipeline_config

    return tiny_pipeline_config(shared_root / "pipeline", site_warc)



@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory):
    """A real Dask scheduler and two one-thread workers on 127.0.0.1, running this checkout."""
    from tests.helpers import DaskCluster

    with DaskCluster(tmp_path_factory.mktemp("dask")) as cluster:
        yield cluster


@pytest.fixture(params=["local", pytest.param("dask", marks=pytest.mark.dask_cluster)])
def engine(request):
    """Each shard executor in turn: the local pool, and the session's Dask cluster; one retry."""
    from tasks.executor import ExecutorConfig

    if request.param == "local":
        return ExecutorConfig(retries=1)
    return ExecutorConfig(kind="dask", address=request.getfixturevalue("dask_cluster").address, retries=1)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 API (moto's server mode) on 127.0.0.1 for the session."""
    from tests.helpers import S3Server

    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory) -> Path:
    """A SQLite database with Prefect's schema, migrated once per session: each server starts on
    a fresh copy, without the 10 s of CPU (15-20 s on a busy machine) a new database's migrations
    cost. The xdist workers share it (the first builds it under a lock in the session's tmp dir)."""
    import fcntl
    import subprocess

    from tests.helpers import PREFECT

    # under xdist each worker's base temp is a folder of the session's own
    shared = tmp_path_factory.getbasetemp().parent if os.environ.get("PYTEST_XDIST_WORKER") else tmp_path_factory.getbasetemp()
    template = shared / "prefect-template.db"
    with open(shared / "prefect-template.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not template.is_file():
            home = Path(tempfile.mkdtemp(prefix="prefect-db-", dir=shared))
            env = {**os.environ, "PREFECT_HOME": str(home)}
            env.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)
            done = subprocess.run([PREFECT, "server", "database", "upgrade", "-y"], env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0 and (home / "prefect.db").is_file(), done.stdout[-2000:] + done.stderr[-2000:]
            os.replace(home / "prefect.db", template)  # whole or absent: a worker that failed here leaves none
    return template
