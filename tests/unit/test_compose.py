"""docker-compose.yml checked by a real Compose v2 (offline), and against .env.example,
the Dockerfile and the worker script; the services themselves run natively in
tests/integration/test_serve.py from this same file."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.helpers import COMPOSE_FILE, compose_binary, compose_config

ROOT = COMPOSE_FILE.parent


def test_compose_file_passes_compose_config(tmp_path):
    run = subprocess.run([str(compose_binary()), "-f", str(COMPOSE_FILE), "--env-file", str(ROOT / ".env.example"), "config", "-q"],
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    # without the secrets Compose refuses, naming them
    empty = tmp_path / "empty.env"
    empty.write_text("")
    run = subprocess.run([str(compose_binary()), "-f", str(COMPOSE_FILE), "--env-file", str(empty), "config", "-q"],
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    # (Compose names the first missing one it meets, in no fixed order)
    assert run.returncode != 0 and re.search(r"required variable (POSTGRES_PASSWORD|PREFECT_AUTH_STRING) is missing", run.stderr + run.stdout)


def test_env_example_names_every_variable_and_nothing_secret_is_committed():
    used = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))
    example = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line and not line.startswith("#")}
    assert used <= example, used - example
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    tracked = subprocess.run(["git", "ls-files", ".env"], cwd=ROOT, capture_output=True, text=True).stdout
    assert tracked == ""


def test_services_images_volumes_and_the_worker(tmp_path):
    cfg = compose_config(tmp_path)
    services = cfg["services"]
    assert set(services) == {"postgres", "prefect-server", "worker", "dask-scheduler", "dask-worker"}
    for name, svc in services.items():
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest") and re.search(r":\d", image), (name, image)
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["prefect-server"]
    assert services["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    server_env = services["prefect-server"]["environment"]
    assert server_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == "postgresql+asyncpg://prefect:llmill-test-pw@postgres:5432/prefect"
    assert server_env["PREFECT_SERVER_API_AUTH_STRING"] == services["worker"]["environment"]["PREFECT_API_AUTH_STRING"] == "llmill:test-secret"
    assert server_env["PREFECT_UI_API_URL"].endswith(":4200/api")
    worker = services["worker"]
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
    targets = {v["target"]: v["source"] for v in worker["volumes"]}
    assert targets == {"/app/data": "datasets", "/llmill/results": "results"}
    assert worker["environment"]["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] == "/llmill/results"
    assert {v["target"] for v in services["postgres"]["volumes"]} == {"/var/lib/postgresql/data"}
    # the container runs what the Dockerfile says and what the native test runs
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert worker["command"] == ["sh", "deploy/worker.sh"] and 'CMD ["sh", "deploy/worker.sh"]' in dockerfile
    assert re.search(r"^FROM python:3\.11\.\d+-slim", dockerfile, re.M) and "ARG TORCH_INDEX_URL" in dockerfile
    script = (ROOT / "deploy" / "worker.sh").read_text()
    for step in ("llmill deploy", "prefect worker start --pool", "--set executor.kind=dask"):  # deploy creates the pool
        assert step in script


def test_dask_services_run_the_worker_image_and_the_flow_uses_them(tmp_path):
    services = compose_config(tmp_path)["services"]
    scheduler, dask_worker, worker = services["dask-scheduler"], services["dask-worker"], services["worker"]
    # the same image and build as the flow's worker: the code the executor checks is the same
    assert scheduler["image"] == dask_worker["image"] == worker["image"]
    assert scheduler["build"] == dask_worker["build"] == worker["build"]
    assert scheduler["command"][:2] == ["dask", "scheduler"] and "8786" in scheduler["command"]
    # the dashboard is published on this machine only
    assert [(p["host_ip"], p["published"], p["target"]) for p in scheduler["ports"]] == [("127.0.0.1", "8787", 8787)]
    assert "healthcheck" in scheduler
    assert dask_worker["command"][:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]
    assert dask_worker["environment"]["DASK_DISTRIBUTED__WORKER__DAEMON"] == "False"  # shards run in child processes
    assert dask_worker["environment"]["PREFECT_API_URL"] == worker["environment"]["PREFECT_API_URL"]
    assert dask_worker["depends_on"]["dask-scheduler"]["condition"] == "service_healthy"
    assert worker["depends_on"]["dask-scheduler"]["condition"] == "service_healthy"
    assert worker["environment"]["LLMILL_DASK_ADDRESS"] == "tcp://dask-scheduler:8786"
    # workers read and write the flow's data root
    assert {v["target"]: v["source"] for v in dask_worker["volumes"]} == {"/app/data": "datasets"}


def test_the_s3_profile_adds_a_store_and_the_workers_use_it_when_env_says_so(tmp_path):
    plain = compose_config(tmp_path)
    assert not {"s3", "s3-bucket"} & set(plain["services"])  # off unless asked for
    for name in ("worker", "dask-worker"):  # and then nothing points the workers at a store
        env = plain["services"][name]["environment"]
        assert env["AWS_ENDPOINT_URL"] == "" and env["AWS_ACCESS_KEY_ID"] == "", (name, env)
    assert plain["services"]["worker"]["environment"]["LLMILL_ROOT"] == ""

    values = {"S3_ACCESS_KEY_ID": "llmill", "S3_SECRET_ACCESS_KEY": "s3-test-secret", "LLMILL_ROOT": "s3://llmill/data",
              "LLMILL_RESULTS_URL": "s3://llmill/results", "LLMILL_S3_ENDPOINT_URL": "http://s3:9000"}
    services = compose_config(tmp_path, values, profiles=("s3",))["services"]
    store, bucket = services["s3"], services["s3-bucket"]
    for svc in (store, bucket):
        assert re.search(r":RELEASE\.\d{4}-", svc["image"]), svc["image"]  # pinned
    assert store["environment"] == {"MINIO_ROOT_USER": "llmill", "MINIO_ROOT_PASSWORD": "s3-test-secret"}
    assert "healthcheck" in store and bucket["depends_on"]["s3"]["condition"] == "service_healthy"
    assert [(p["host_ip"], p["target"]) for p in store["ports"]] == [("127.0.0.1", 9001)]  # the console on this machine only
    assert "store/llmill" in " ".join(bucket["entrypoint"])
    for name in ("worker", "dask-worker"):
        env = services[name]["environment"]
        assert (env["AWS_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("http://s3:9000", "llmill", "s3-test-secret")
    worker = services["worker"]["environment"]
    assert (worker["LLMILL_ROOT"], worker["LLMILL_RESULTS_URL"]) == ("s3://llmill/data", "s3://llmill/results")
    # worker.sh deploys with that root and makes the task cache a block beside it; the image has s3fs
    script = (ROOT / "deploy" / "worker.sh").read_text()
    assert '--set "root=$LLMILL_ROOT"' in script and 'llmill results-storage "$LLMILL_RESULTS_URL"' in script
    assert "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=remote-file-system/llmill-results" in script
    assert "-e '.[s3]'" in (ROOT / "deploy" / "Dockerfile").read_text()


def test_the_ui_is_published_on_this_machine_only(tmp_path):
    ports = compose_config(tmp_path)["services"]["prefect-server"]["ports"]
    assert [(p["host_ip"], p["published"], p["target"]) for p in ports] == [("127.0.0.1", "4200", 4200)]


@pytest.mark.parametrize("auth", ["admin:change-me", "admin:", "", "no-password-at-all"])
def test_the_worker_refuses_to_start_with_the_example_or_an_empty_password(auth):
    env = {"PATH": "/usr/bin:/bin", "PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT_API_AUTH_STRING": auth}
    proc = subprocess.run(["sh", "deploy/worker.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2 and "refusing to start" in proc.stderr, (proc.returncode, proc.stderr[-500:])


def test_the_worker_image_runs_as_a_user_of_its_own():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"chown \S+ /app/data /llmill/results", dockerfile)  # the volumes are writable by it
    final = dockerfile.split("\nFROM ")[-1]  # the last stage is the image that runs
    assert "build-essential" not in final and "build-essential" in dockerfile  # compilers for pip builds stay in the build stage
    assert "COPY --from=build /opt/venv /opt/venv" in final and re.search(r"^USER (\S+)", final, re.M)
