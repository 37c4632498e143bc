"""What a test may start: trainers, Prefect servers, browsers and databases only when it is
marked for them (`trainer`, `prefect_server`, `browser`, `database`, `dask_cluster`), so the fast tier
(`make test-fast`, which deselects those marks) can never start one by accident.

The pytest process patches `subprocess.Popen`; every child Python process gets the same patch
through `sitecustomize.py` in this folder (on PYTHONPATH), so a trainer started by a CLI
started by a test is caught too. A refused start raises in the process that tried it and is
appended to the file named by LLMILL_TEST_GUARD_LOG, which the test's teardown reads.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ALLOW = "LLMILL_TEST_ALLOW"  # comma-separated kinds the running test is marked for
LOG = "LLMILL_TEST_GUARD_LOG"
TEST = "LLMILL_TEST_ID"
KINDS = ("trainer", "prefect_server", "browser", "database", "dask_cluster")
POSTGRES = {"initdb", "pg_ctl", "postgres", "pg_ctlcluster"}
BROWSERS = {"chromium", "chromium-browser", "chrome", "google-chrome", "chromedriver"}


class GuardError(RuntimeError):
    pass


def kind_of(argv) -> str | None:
    """The heavy thing a command line starts, if any."""
    if isinstance(argv, (str, bytes, os.PathLike)):
        args = [os.fsdecode(argv)]
    else:
        args = [os.fsdecode(a) for a in argv]
    names = [Path(a).name for a in args]
    if "model.train" in args:  # python -m model.train, torchrun ... -m model.train, accelerate launch ...
        return "trainer"
    if any("prefect.server.api.server" in a for a in args):  # the ephemeral server (uvicorn)
        return "prefect_server"
    if "prefect" in names and ("server" in args or "worker" in args):
        i = names.index("prefect")
        if args[i + 1 : i + 3] in (["server", "start"], ["worker", "start"]):
            return "prefect_server"
    if "dask" in names and args[names.index("dask") + 1 : names.index("dask") + 2] in (["scheduler"], ["worker"]):
        return "dask_cluster"
    if any(n in BROWSERS for n in names):
        return "browser"
    if any(n in POSTGRES for n in names):
        return "database"
    return None


def check(argv) -> None:
    allowed = os.environ.get(ALLOW)
    if allowed is None:  # not under the test suite's guard
        return
    kind = kind_of(argv)
    if kind is None or kind in allowed.split(","):
        return
    shown = argv if isinstance(argv, (str, bytes)) else " ".join(map(os.fsdecode, argv))
    message = (f"{os.environ.get(TEST, 'a test')} started a {kind} without @pytest.mark.{kind}: {shown[:300]}")
    log = os.environ.get(LOG)
    if log:
        with open(log, "a") as f:
            f.write(message + "\n")
    raise GuardError(message)


_original_init = subprocess.Popen.__init__


def _guarded_init(self, args, *a, **kw):
    check(args)
    _original_init(self, args, *a, **kw)


def install() -> None:
    subprocess.Popen.__init__ = _guarded_init


def uninstall() -> None:
    subprocess.Popen.__init__ = _original_init
