"""The data flow under a real Prefect server: bad input survives, caching across runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.data_flow import data_flow
from flows.llmill_config import LlmillConfig, load_config
from formats.manifest import load_manifest
from tests.helpers import all_task_states, bad_pages, python_doc_pages, write_warc

STAGES = ("ingest", "extract", "clean", "dedup")

pytestmark = pytest.mark.prefect_server


@pytest.fixture(scope="module")
def warcs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("warcs")
    write_warc(d / "good.warc.gz", python_doc_pages(16, start=40))
    write_warc(d / "bad.warc.gz", bad_pages())
    whole = write_warc(d / "whole.warc.gz", python_doc_pages(6, start=80)).read_bytes()
    (d / "truncated.warc.gz").write_bytes(whole[: len(whole) * 2 // 3])
    (d / "whole.warc.gz").unlink()
    return d


def config(root: Path, warcs: Path, **overrides) -> LlmillConfig:
    tree = {
        "root": str(root),
        "ingest": {"paths": [str(warcs / "*.warc.gz")]},
        "extract": {"workers": 2},
        # the demo's rules for documentation pages, which FineWeb's defaults would mostly drop
        "clean": {**load_config().clean.model_dump(), "workers": 2},
        "dedup": {"workers": 2},
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        tree.setdefault(section, {})[name] = value
    return LlmillConfig.model_validate(tree)


def run(cfg: LlmillConfig):
    state = data_flow(cfg, return_state=True)
    assert state.is_completed(), state
    return state.result(), all_task_states(state.state_details.flow_run_id, STAGES)


@pytest.fixture(scope="module")
def first_run(prefect_harness, warcs, tmp_path_factory) -> tuple[Path, dict, dict]:
    """The data flow's first run on a new root: what the bad-input test inspects and where the
    caching test starts from (it deletes and rebuilds the clean dataset in place, same content)."""
    root = tmp_path_factory.mktemp("data-flow-root")
    return (root, *run(config(root, warcs)))


def test_bad_input_is_quarantined_and_the_flow_completes(first_run):
    _, result, states = first_run
    assert set(states.values()) == {"Completed"}
    ext = load_manifest(result["docs"]).stats
    assert ext["quarantined_by_reason"].keys() >= {"bad_encoding", "empty", "too_large", "binary", "damaged_warc"}
    quarantine = pq.read_table(Path(result["docs"]) / "quarantine").to_pylist()
    assert all(q["reason"] for q in quarantine)
    assert any(q["url"] == "http://bad.test/huge" and q["reason"].startswith("too_large") for q in quarantine)
    kept = pq.read_table(Path(result["dedup"]) / "docs").column("url").to_pylist()
    assert len(kept) >= 12 and all(u.startswith("https://docs.python.org/") or u.startswith("http://bad.test/latin1") for u in kept)
    clean = load_manifest(result["clean"]).stats
    dropped = pq.read_table(Path(result["clean"]) / "dropped").to_pylist()
    assert clean["dropped"] == len(dropped) == sum(clean["dropped_by_rule"].values())
    assert all(d["rule"] for d in dropped)


def test_caching_across_runs(first_run, warcs):
    tmp_path, first, states = first_run
    assert all(states[s] == "Completed" for s in STAGES), states
    created = {s: load_manifest(first[k]).created_at for s, k in zip(STAGES[1:], ("docs", "clean", "dedup"))}

    # nothing changed: every task answers from cache, no stage function runs
    second, states = run(config(tmp_path, warcs))
    assert all(states[s] == "Cached" for s in STAGES), states
    assert second == first
    assert {s: load_manifest(second[k]).created_at for s, k in zip(STAGES[1:], ("docs", "clean", "dedup"))} == created

    # a stage's dataset deleted: it and only the stages after it run again
    shutil.rmtree(first["clean"])
    third, states = run(config(tmp_path, warcs))
    assert states["ingest"] == states["extract"] == "Cached", states
    assert states["clean"] == states["dedup"] == "Completed", states
    assert third["docs"] == first["docs"] and Path(third["clean"]).is_dir()

    # one stage's config changed: that stage and those after it rerun, not those before
    fourth, states = run(config(tmp_path, warcs, clean__min_chars=200))
    assert states["ingest"] == states["extract"] == "Cached", states
    assert states["clean"] == states["dedup"] == "Completed", states
    assert fourth["clean"] != third["clean"]

    # and that changed run is itself cached next time
    _, states = run(config(tmp_path, warcs, clean__min_chars=200))
    assert all(states[s] == "Cached" for s in STAGES), states
