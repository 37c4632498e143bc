"""`llmill gc` on a local root: partial directories and stale locks of runs not running now."""

from pathlib import Path

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
