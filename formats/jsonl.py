"""JSON lines appended by processes that may be killed mid-line (the crawl journal, training
metrics). A kill can leave a torn last line; appending after it would glue the next record
to it and every later reader would stop or fail there. So a writer cuts the torn tail before
it appends (as the WARC recovery cuts a torn record), and a reader refuses a bad line
anywhere else instead of reading past it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def cut_torn_tail(path: Path) -> int:
    """Truncate `path` after its last newline: what follows is a line a kill tore (each record
    is one write ending in its newline). Returns the bytes cut; a missing file is left alone."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    with open(path, "r+b") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < size:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return size - end


def read_records(path: Path) -> list[dict]:
    """Every record of a JSON-lines file whose torn tail, if any, was cut; a line that does not
    parse is an error naming the file and line, never a silent end."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as e:
            raise ValueError(f"{path}:{number}: not a JSON record ({e}); the file is damaged beyond a torn last line") from None
    return records
