import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.llmill_config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_demo_config_loads_with_overrides():
    cfg = load_config(None, ["crawl.max_pages=7", "clean.language.languages=[en, de]", "dedup.near=false"])
    assert cfg.crawl.max_pages == 7
    assert cfg.clean.language.languages == ["en", "de"]
    assert cfg.dedup.near is False
    assert cfg.crawl.seeds == ["builtin:pydoc"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("crawl.max_pagez=3", "unknown config key 'crawl.max_pagez'"),
        ("clean.c4.curly=1", "unknown config key 'clean.c4.curly'"),
        ("crawl.max_pages=-1", "config key 'crawl.max_pages'"),
        ("extract.backend=lynx", "config key 'extract.backend'"),
        ("dedup.bands=20", "bands x rows"),
        ("nonsense", "expected key=value"),
        ("refresh.cron=nope", "config key 'refresh.cron': Value error, Invalid cron string"),
        ("refresh.timezone=Mars/Base", "config key 'refresh.timezone': Value error, Invalid timezone"),
    ],
)
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, [override])


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("crawl: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_cli_stops_at_once_naming_the_key():
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--set", "crawl.bogus=1"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "40"},  # narrower than the message: it must not be broken into lines
    )
    assert proc.returncode == 2
    assert "demo.yaml: unknown config key 'crawl.bogus'" in proc.stdout + proc.stderr


def test_cli_gives_the_embedded_server_time_for_its_first_start():
    """A fresh PREFECT_HOME's embedded server migrates a new SQLite database before it answers;
    Prefect's 20 s default was too short on a busy 2-core machine (a CI run failed on it)."""
    import os

    code = ("from flows.cli import _load; _load(None, []); "
            "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as s, "
            "PREFECT_SERVER_ANALYTICS_ENABLED as a; print(s.value(), a.value())")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["180", "False"]


def test_flow_heartbeats_are_off_on_the_embedded_server_only():
    """A flow's end waits for the heartbeat thread's 1 s sleep; heartbeats only matter to a server
    that outlives the run's process, so `llmill` turns them off on the embedded one."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.cli import _embedded_server_settings

    from prefect.settings import Settings

    default = Settings().flows.heartbeat_frequency
    assert default is not None  # Prefect's default: on
    # set here: the suite's in-process flows turn heartbeats off for the session (prefect_harness)
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: default}):
        with temporary_settings({PREFECT_API_URL: None}), _embedded_server_settings():
            assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() is None
        with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}), _embedded_server_settings():
            assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() == default
