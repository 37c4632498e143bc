import json

import pytest
from pydantic import BaseModel

from formats.manifest import is_dataset, load_manifest
from tasks.stage import run_stage, stage_dir


class Cfg(BaseModel):
    n: int = 1


def writer(inputs, cfg, out, progress):
    (out / "rows.txt").write_text("x\n" * cfg.n)
    return {"rows": cfg.n}


def test_output_place_depends_on_stage_config_and_inputs(tmp_path):
    a = run_stage("make", 1, writer, {}, Cfg(n=1), tmp_path)
    assert a == stage_dir(tmp_path, "make", 1, Cfg(n=1), {})
    assert run_stage("make", 1, writer, {}, Cfg(n=2), tmp_path) != a
    assert run_stage("make", 2, writer, {}, Cfg(n=1), tmp_path) != a
    b = run_stage("use", 1, writer, {"source": str(a)}, Cfg(n=1), tmp_path)
    m = load_manifest(b)
    assert m.inputs == [load_manifest(a).digest] and m.stats["rows"] == 1
    assert m.files[0].path == "rows.txt" and m.files[0].bytes == 2 and len(m.files[0].sha256) == 64
    assert json.loads((b / "manifest.json").read_text())["stage"] == "use"


def test_a_failed_stage_leaves_no_dataset_and_the_next_run_starts_clean(tmp_path):
    def broken(inputs, cfg, out, progress):
        (out / "half.txt").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_stage("make", 1, broken, {}, Cfg(), tmp_path)
    out = stage_dir(tmp_path, "make", 1, Cfg(), {})
    assert not is_dataset(out) and not out.exists()
    assert (out.parent / (out.name + ".partial") / "half.txt").exists()
    done = run_stage("make", 1, writer, {}, Cfg(), tmp_path)
    assert is_dataset(done) and not (done / "half.txt").exists()


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a dataset"):
        run_stage("use", 1, writer, {"source": str(tmp_path / "nowhere")}, Cfg(), tmp_path)
