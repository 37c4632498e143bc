"""Deployments for real: a `prefect server start` on 127.0.0.1 (SQLite), `llmill serve` serving
every flow, and a pipeline run started through the API exactly as the UI's Run button does
(POST /api/deployments/{id}/create_flow_run), completing with its report artifact. Basic auth
on the server refuses a client without the credentials."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from formats.manifest import load_manifest
from tests.helpers import compose_config, free_port, prefect_server

ROOT = Path(__file__).resolve().parents[2]
FLOWS = {"data", "data-refresh", "pretrain", "finetune", "evaluate", "pipeline"}


@contextmanager
def dask_from_compose(tmp: Path, api: str):
    """The dask-scheduler and dask-worker services' commands and environments, read from
    docker-compose.yml, bound to 127.0.0.1 and a free port here, in one process group.
    Yields the scheduler's address."""
    from distributed import Client

    services = compose_config(tmp)["services"]
    port, bin_dir = free_port(), Path(sys.executable).parent
    address = f"tcp://127.0.0.1:{port}"
    native = {"dask": str(bin_dir / "dask"), "0.0.0.0": "127.0.0.1", "8786": str(port), "0.0.0.0:8787": "127.0.0.1:0",
              "tcp://dask-scheduler:8786": address}
    scheduler_cmd = [native.get(c, c) for c in services["dask-scheduler"]["command"]]
    worker_cmd = [native.get(c, c) for c in services["dask-worker"]["command"]] + ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    worker_env = {**os.environ, **services["dask-worker"]["environment"], "PREFECT_API_URL": api,
                  "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp / "dask.log", "ab")
    scheduler = subprocess.Popen(scheduler_cmd, cwd=ROOT, env=worker_env, stdout=log, stderr=subprocess.STDOUT, process_group=0)
    procs = [scheduler]
    try:
        for _ in range(services["dask-worker"]["deploy"]["replicas"]):
            procs.append(subprocess.Popen(worker_cmd, cwd=ROOT, env=worker_env, stdout=log, stderr=subprocess.STDOUT,
                                          process_group=scheduler.pid))
        deadline = time.monotonic() + 120
        while True:
            try:
                with Client(address, timeout=5, set_as_default=False) as client:
                    client.wait_for_workers(len(procs) - 1, timeout=120)
                break
            except OSError:
                assert time.monotonic() < deadline and scheduler.poll() is None, (tmp / "dask.log").read_text()[-3000:]
                time.sleep(0.5)
        yield address
    finally:
        os.killpg(scheduler.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(scheduler.pid, signal.SIGKILL)
                proc.wait()


def worker_env_from_compose(tmp: Path, api: str, config: Path) -> dict:
    """The worker service's environment, its paths and the server's address mapped to this machine."""
    env = dict(compose_config(tmp)["services"]["worker"]["environment"])
    env.update(PREFECT_API_URL=api, PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(tmp / "results"), LLMILL_CONFIG=str(config))
    return env


PG_BIN = Path("/usr/lib/postgresql/15/bin")


@contextmanager
def postgres_cluster():
    """A private PostgreSQL 15 cluster (Debian's) on 127.0.0.1, run as the postgres user;
    yields the asyncpg URL the compose file's PREFECT_SERVER_DATABASE_CONNECTION_URL has."""
    import shutil
    import tempfile

    if not (PG_BIN / "initdb").exists():
        pytest.fail("PostgreSQL 15 is not installed: apt-get install postgresql (make test does)")
    base = Path(tempfile.mkdtemp(prefix="llmill-pg-"))  # outside pytest's root-only tmp tree
    data, sock, pwfile = base / "data", base / "sock", base / "pw"
    sock.mkdir()
    pwfile.write_text("llmill-test-pw\n")
    base.chmod(0o755)
    subprocess.run(["chown", "-R", "postgres:postgres", str(base)], check=True)
    port = free_port()

    def as_postgres(*cmd, **kw):
        return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True, text=True, timeout=120, **kw)

    r = as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-U", "prefect", f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8")
    assert r.returncode == 0, r.stderr
    # a throwaway cluster: no flushes to disk (Prefect's migrations are ~150 transactions; durability
    # across a crash is not what these tests are about)
    r = as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(base / "pg.log"),
                    "-o", f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off", "start")
    assert r.returncode == 0, r.stderr + (base / "pg.log").read_text()
    try:
        r = as_postgres(str(PG_BIN / "createdb"), "-h", str(sock), "-p", str(port), "-U", "prefect", "prefect")
        assert r.returncode == 0, r.stderr
        yield f"postgresql+asyncpg://prefect:llmill-test-pw@127.0.0.1:{port}/prefect"
    finally:
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "stop")
        shutil.rmtree(base, ignore_errors=True)


def flow_runs_in_postgres(url: str) -> int:
    import asyncio

    import asyncpg

    async def count() -> int:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return await conn.fetchval("select count(*) from flow_run")
        finally:
            await conn.close()

    return asyncio.run(count())


def api_client(env: dict) -> httpx.Client:
    user, password = env["PREFECT_API_AUTH_STRING"].split(":", 1)
    return httpx.Client(auth=(user, password), timeout=30)


def wait_for(fn, timeout: float, what: str, step: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """As `docker compose stop` stops a service: SIGTERM to its main process only, which winds
    down its own children, then, after the grace period (Docker's default 10 s; the compose file
    sets none), SIGKILL for whatever of its group is left. In the suite the worker sometimes never
    returned from its SIGTERM shutdown after a finished run (alone it always did), and the old
    30 s wait left its CPU idle for 22 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def create_flow_run(http: httpx.Client, api: str, deployment_id: str, body: dict, log: Path) -> dict:
    """POST create_flow_run as the UI's Run button does. A 5xx is retried a few times, as a person
    would press Run again: the SQLite server can answer one with a transient error while the
    served process writes its deployments and runs."""
    url = f"{api}/deployments/{deployment_id}/create_flow_run"
    for attempt in range(5):
        resp = http.post(url, json=body)
        if resp.status_code < 500:
            break
        time.sleep(2 * (attempt + 1))
    assert resp.status_code == 201, (resp.status_code, resp.text[-2000:], log.read_text()[-3000:])
    return resp.json()


def run_to_completion(http: httpx.Client, api: str, deployment_id: str, log: Path, timeout: float) -> dict:
    """A run with no parameters, as the UI's Run button with the form's defaults, to its end."""
    run = create_flow_run(http, api, deployment_id, {}, log)

    def finished():
        state = http.get(f"{api}/flow_runs/{run['id']}").json()["state"]
        assert state["type"] not in ("FAILED", "CRASHED", "CANCELLED"), (state, log.read_text()[-4000:])
        return state["type"] == "COMPLETED"

    wait_for(finished, timeout, f"flow run {run['id']}")
    return run


@pytest.fixture(params=[pytest.param("sqlite", marks=pytest.mark.browser), pytest.param("postgresql", marks=pytest.mark.database)])
def database(request):
    """(PostgreSQL URL or None, SQLite template or None)."""
    if request.param == "sqlite":
        yield None, request.getfixturevalue("migrated_sqlite")
    else:
        with postgres_cluster() as url:
            yield url, None


@pytest.mark.prefect_server
@pytest.mark.trainer
def test_served_deployments_run_from_the_api_like_the_ui(tmp_path, database, tiny_pipeline):
    # a fresh server and serve process each time; the datasets on the shared root are reused
    # (test_pipeline and the other database's run compute the same ones)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_pipeline))
    (tmp_path / "prefect").mkdir()
    database, sqlite_template = database
    with prefect_server(tmp_path / "prefect", database, sqlite_template) as (env, api), api_client(env) as http:
        serve_log = tmp_path / "serve.log"
        with open(serve_log, "w") as log:
            serve = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", str(config)], cwd=ROOT, env=env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            def deployments():
                assert serve.poll() is None, serve_log.read_text()[-3000:]
                found = http.post(f"{api}/deployments/filter", json={}).json()
                return found if {d["name"] for d in found} >= FLOWS else None

            found = {d["name"]: d for d in wait_for(deployments, 120, "the served deployments")}
            assert "results storage: local" in serve_log.read_text()  # it says where the task cache lives
            pipeline = found["pipeline"]
            # the UI's run form: the typed config, its sections as fields, the file's values as defaults
            schema = pipeline["parameter_openapi_schema"]
            assert "config" in schema["properties"]
            definitions = schema.get("definitions") or schema.get("$defs")
            assert {"crawl", "pretrain", "finetune", "evaluate"} <= set(definitions["LlmillConfig"]["properties"])
            assert pipeline["parameters"]["config"]["pretrain"]["model"]["preset"] == "test-tiny"
            assert "training" in found["pretrain"]["tags"] and "training" not in found["data"]["tags"]
            (schedule,) = found["data-refresh"]["schedules"]  # daily, paused until a person enables it
            assert schedule["schedule"]["cron"] == "0 3 * * *" and schedule["active"] is False

            run = run_to_completion(http, api, pipeline["id"], serve_log, 420)
            # minutes later the server's scheduler has still made no refresh run: the schedule is paused
            assert http.post(f"{api}/flow_runs/filter", json={"flow_runs": {"deployment_id": {"any_": [found["data-refresh"]["id"]]}}}).json() == []
            artifacts = http.post(f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": ["evaluation-report", "evaluation-headline"]}}}).json()
            assert {a["key"] for a in artifacts} == {"evaluation-report", "evaluation-headline"}
            report = next(a for a in artifacts if a["key"] == "evaluation-report")
            assert "llmill evaluation report" in report["data"] and "data:image/png;base64," in report["data"]
            if database:  # the runs really went to PostgreSQL
                assert flow_runs_in_postgres(database) >= 5  # the pipeline and its four subflows
            # the trainings' global concurrency limit exists, one slot
            limit = http.get(f"{api}/v2/concurrency_limits/llmill-accelerator").json()
            assert limit["limit"] == 1
            # a run from the form that points the root elsewhere is refused before anything starts
            hostile = {**found["data"]["parameters"]["config"], "root": str(tmp_path / "elsewhere")}
            refused = create_flow_run(http, api, found["data"]["id"], {"parameters": {"config": hostile}}, serve_log)

            def failed():
                state = http.get(f"{api}/flow_runs/{refused['id']}").json()["state"]
                assert state["type"] != "COMPLETED", state
                return state if state["type"] in ("FAILED", "CRASHED") else None

            state = wait_for(failed, 120, "the refused run")
            assert "fixes root" in (state["message"] or "") + serve_log.read_text(), (state, serve_log.read_text()[-2000:])
            assert not (tmp_path / "elsewhere").exists()
            if database is None:  # the UI, once: it reads the same API whatever the database
                ui_shows_the_run_and_its_report(api, env, http.get(f"{api}/flow_runs/{run['id']}").json(), report["id"], tmp_path)
        finally:
            stop(serve)


def ui_shows_the_run_and_its_report(api: str, env: dict, flow_run: dict, artifact_id: str, shots: Path) -> None:
    """Headless chromium logs in (the UI keeps the basic-auth string in localStorage, as its login
    page does), opens the finished flow run and the report artifact, and saves screenshots."""
    from tests.browser import Browser

    ui = api.removesuffix("/api")
    token = base64.b64encode(env["PREFECT_API_AUTH_STRING"].encode()).decode()
    with Browser() as browser:
        browser.open(ui + "/")
        browser.wait_for_origin(ui)
        browser.evaluate(f"localStorage.setItem('prefect-password', '{token}')")
        browser.open(f"{ui}/runs/flow-run/{flow_run['id']}")
        # the flow's name arrives by its own API call, after the run's; wait for all three
        browser.wait_for_text(flow_run["name"], "Completed", "pipeline", timeout=90)
        assert browser.screenshot(shots / "ui-flow-run.png").stat().st_size > 10_000
        browser.open(f"{ui}/artifacts/artifact/{artifact_id}")
        browser.wait_for_text("llmill evaluation report", "LM bits per byte", "xz -9 given the training text", timeout=90)
        assert browser.screenshot(shots / "ui-report-artifact.png").stat().st_size > 10_000


@pytest.mark.prefect_server
def test_basic_auth_refuses_clients_without_credentials(prefect_api):
    # the session's server: started as the compose file starts it, basic auth included
    server, api = prefect_api
    env = {**os.environ, **server}
    assert httpx.get(f"{api}/health").status_code == 200  # health stays open for probes
    assert httpx.post(f"{api}/deployments/filter", json={}).status_code == 401
    assert httpx.post(f"{api}/deployments/filter", json={}, auth=("llmill", "wrong")).status_code == 401
    with api_client(env) as http:
        listed = http.post(f"{api}/deployments/filter", json={})
        assert listed.status_code == 200
    # Prefect's own client: in with PREFECT_API_AUTH_STRING, refused without it
    probe = "from prefect import get_client\nwith get_client(sync_client=True) as c: print(len(c.read_deployments()))"
    ok = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip() == str(len(listed.json())), ok.stderr[-2000:]
    anonymous = {k: v for k, v in env.items() if k != "PREFECT_API_AUTH_STRING"}
    denied = subprocess.run([sys.executable, "-c", probe], env=anonymous, capture_output=True, text=True, timeout=120)
    assert denied.returncode != 0 and "401" in denied.stderr, denied.stderr[-2000:]


@pytest.mark.prefect_server
@pytest.mark.dask_cluster
def test_worker_script_registers_and_runs_deployments(tmp_path, migrated_sqlite):
    """deploy/worker.sh and the Dask services, natively, with the services' commands and
    environments from docker-compose.yml: the served data flow runs its shards on Dask."""
    from tests.helpers import python_doc_site_pages, tiny_pipeline_config, write_warc

    # the tiny pipeline's config on its own small input and root (not the shared tiny pipeline's
    # datasets, nor its xdist worker): the data stages must run now, on the Dask workers, rather
    # than be found in the shared root's cache
    warc = write_warc(tmp_path / "small.warc.gz", python_doc_site_pages(2))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**tiny_pipeline_config(tmp_path / "data", warc), "executor": {"shard_bytes": 40_000}}))
    (tmp_path / "prefect").mkdir()
    with prefect_server(tmp_path / "prefect", sqlite_template=migrated_sqlite) as (env, api), api_client(env) as http, \
            dask_from_compose(tmp_path, api) as dask_address:
        worker_env = {**env, **worker_env_from_compose(tmp_path, api, config), "LLMILL_DASK_ADDRESS": dask_address,
                      "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        worker_log = tmp_path / "worker.log"
        with open(worker_log, "w") as log:
            worker = subprocess.Popen(["sh", "deploy/worker.sh"], cwd=ROOT, env=worker_env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        try:
            def deployments():
                assert worker.poll() is None, worker_log.read_text()[-3000:]
                found = http.post(f"{api}/deployments/filter", json={}).json()
                return found if {d["name"] for d in found} >= FLOWS else None

            found = {d["name"]: d for d in wait_for(deployments, 180, "the deployments the worker registers")}
            assert {d["work_pool_name"] for d in found.values()} == {worker_env["LLMILL_WORK_POOL"]}
            assert f"results storage: local {tmp_path / 'results'}" in " ".join(worker_log.read_text().split())
            executor = found["data"]["parameters"]["config"]["executor"]
            assert (executor["kind"], executor["address"]) == ("dask", dask_address)  # worker.sh set it from the compose env
            run_to_completion(http, api, found["data"]["id"], worker_log, 300)
            extracted = load_manifest(next((tmp_path / "data" / "extract").glob("*[0-9a-f]"))).stats
            assert extracted["shards"] >= 3 and extracted["shards_processed"] == extracted["shards"]
            assert list((tmp_path / "data" / "dedup").glob("*/manifest.json"))
            assert any((tmp_path / "results").iterdir())  # results persisted where the compose volume would hold them
        finally:
            stop(worker)
