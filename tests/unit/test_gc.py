"""`llmill gc` on a local root: partial directories and stale locks of runs not running now."""

from pathlib import Path

from pydantic import BaseModel

from tasks.gc import delete, garbage
from tasks.stage import StageLock


def test_local_gc_lists_stale_partials_and_locks_but_not_datasets_or_running_stages(tmp_path: Path):
    (tmp_path / "clean" / "aaaa").mkdir(parents=True)
    (tmp_path / "clean" / "aaaa" / "manifest.json").write_text("{}")  # a dataset
    (tmp_path / "clean" / "bbbb.partial").mkdir()  # a killed run's work
    (tmp_path / "clean" / "cccc.lock").write_text("")  # a killed run's lock, no partial
    (tmp_path / "dedup" / "dddd.partial").mkdir(parents=True)  # a running stage's work
    with StageLock(tmp_path / "dedup" / "dddd.lock"):
        found = garbage(tmp_path)
        assert found == sorted([str(tmp_path / "clean" / "bbbb.partial"), str(tmp_path / "clean" / "cccc.lock")])
        delete(found)
        assert garbage(tmp_path) == []
    assert (tmp_path / "clean" / "aaaa" / "manifest.json").is_file() and (tmp_path / "dedup" / "dddd.partial").is_dir()
    assert garbage(tmp_path) == [str(tmp_path / "dedup" / "dddd.partial")]  # its run ended without a dataset


class Toy(BaseModel):
    version: int


def toy(inputs, cfg, out, progress):
    (out / "data.txt").write_text(f"{cfg.version} {inputs}")
    return {}


def test_gc_lists_dataset_versions_that_nothing_newer_reads(tmp_path: Path):
    import json

    from tasks.stage import run_stage

    def chain(version: int) -> tuple[Path, Path]:
        first = run_stage("first", 1, toy, {}, Toy(version=version), tmp_path)
        return first, run_stage("second", 1, toy, {"source": str(first)}, Toy(version=version), tmp_path)

    old_first, old_second = chain(1)
    kept_first = run_stage("first", 1, toy, {}, Toy(version=2), tmp_path)  # newer than old_first, but...
    pinned_first, pinned_second = chain(3)  # ...this chain is newest of both stages
    assert garbage(tmp_path) == sorted(str(p) for p in (old_first, old_second, kept_first))
    # a data-refresh version list keeps what it names, and so what those read
    (tmp_path / "refresh").mkdir()
    (tmp_path / "refresh" / "x.json").write_text(json.dumps({"versions": [{"tokens": str(old_second)}]}))
    assert garbage(tmp_path) == [str(kept_first)]
    delete(garbage(tmp_path))
    assert not kept_first.exists() and old_first.exists() and pinned_second.exists()
