"""`builtin:pydoc`: the running interpreter's pydoc pages of the standard library, served on
127.0.0.1 for the duration of a crawl so the demo needs no internet.

The server runs in its own process (`-s -S -P`, an environment of its own): rendering a
module's page imports the module, so its side effects stay out of the caller, and
site-packages stay off the path.
This file therefore imports nothing but the standard library.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SEED = "builtin:pydoc"
# The pages' URLs, whatever port the server got: document ids are hashes of URLs, so the same
# pages give the same corpus on every run. `.invalid` never resolves (RFC 2606); the crawler
# connects to the server it started instead (tasks/net_guard.py: `served`).
BASE = "http://pydoc.llmill.invalid/"

# Modules whose import opens windows or browsers, prints, or runs a test suite.
EXCLUDED_MODULES = frozenset(
    "antigravity this tkinter turtle turtledemo idlelib test ensurepip lib2to3 pydoc_data "
    "msilib winreg winsound msvcrt _winapi nt".split()
)

ROBOTS = "User-agent: *\nDisallow: /search\nDisallow: /getfile\nDisallow: /get?\n"

# Pages show the server process's argv (the sys module's page) and its environment (default
# values such as cgi's `environ=os.environ`): it runs with this environment and nothing of the
# caller's, so no secret of the caller's (AWS keys, a Prefect API key) ends up in the corpus and
# every run serves the same pages.
# -I (or -E) would ignore PYTHONHASHSEED, and sets in default values (frozenset reprs) would be
# ordered differently on every run: the server gets -s -P and this whole environment instead.
SERVER_ENVIRONMENT = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/nonexistent", "PYTHONHASHSEED": "0"}

# Default values render as reprs such as `<object object at 0x7f3b7a0c4bb0>`, whose address
# changes with every server process: cut to `<object object>`, so a page is the same on every run.
# In the page the spaces are `&nbsp;` and the `>` is escaped once or twice.
# ctypes's libraries show `, handle 7efeaaa062e0` the same way.
ADDRESS = re.compile(r"(?:(?: |&nbsp;)at(?: |&nbsp;)0x|,(?: |&nbsp;)handle(?: |&nbsp;))[0-9a-fA-F]{4,16}(?=&amp;gt;|&gt;|>)")


def module_allowed(name: str) -> bool:
    top = name.split(".")[0]
    return (
        bool(top)
        and not top.startswith("_")
        and top not in EXCLUDED_MODULES
        and top in sys.stdlib_module_names
        and "__main__" not in name.split(".")  # importing `venv.__main__` runs venv: it made a venv named "0" here
        # test suites (`distutils.tests.test_dist`, `ctypes.test`): not documentation, and their
        # pages show per-process values (a TESTFN named by the process id)
        and not {"test", "tests"} & set(name.split("."))
    )


def _serve(port: int) -> None:  # runs in the server process
    import http.server
    import pydoc
    import threading
    from urllib.parse import parse_qs, urlsplit

    # pydoc renders a page by (re)importing its module, dropping it from sys.modules first; two
    # threads doing that at once see half-initialized modules and report import errors at random
    render = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep the crawl's terminal readable
            pass

        def _send(self, status: int, body: str, ctype: str = "text/html") -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", f"{ctype}; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            parts = urlsplit(self.path)
            path = parts.path
            if path == "/robots.txt":
                return self._send(200, ROBOTS, "text/plain")
            if path.endswith(".css"):
                return self._send(200, pydoc._url_handler(path, "text/css"), "text/css")
            name = None
            if path.endswith(".html") and path not in ("/index.html", "/topics.html", "/keywords.html"):
                name = path[1:-5]
            elif path == "/get":
                name = parse_qs(parts.query).get("key", [""])[0]
            if name is not None and not module_allowed(name):
                return self._send(404, "<html><body><h1>404 Not Found</h1></body></html>")
            try:
                with render:
                    page = pydoc._url_handler(self.path, "text/html")
            except Exception as e:  # a module that fails to import: report, keep serving
                return self._send(500, f"<html><body>{type(e).__name__}</body></html>")
            if "no Python documentation found" in page or "ErrorDuringImport" in page:
                return self._send(404, page)
            self._send(200, ADDRESS.sub("", page))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


@contextlib.contextmanager
def serve_pydoc(port: int = 0, timeout_s: float = 30.0):
    """Yield the base URL of a pydoc server on 127.0.0.1 and stop it on exit."""
    workdir = tempfile.mkdtemp(prefix="llmill-pydoc-")  # whatever an import writes lands here, not in the caller's directory
    proc = subprocess.Popen(
        [sys.executable, "-s", "-S", "-P", str(Path(__file__).resolve())],
        cwd=workdir,
        env=SERVER_ENVIRONMENT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        proc.stdin.write(f"{port}\n")  # not in argv or the environment: pages show both
        proc.stdin.close()
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("PORT "):
            raise RuntimeError(f"the pydoc server did not start (port {port} busy?)")
        base = f"http://127.0.0.1:{int(line.split()[1])}/"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(base + "robots.txt", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    # the sys page shows this process's argv, executable and __main__: names, not the paths of
    # this checkout and its venv, so two clones serve the same pages
    sys.argv[:] = ["pydoc_site.py"]
    sys.orig_argv[:] = ["python", "-s", "-S", "-P", "pydoc_site.py"]
    sys.executable = sys._base_executable
    # the interpreter asked the import system whether the script's path is a zip or a directory
    # before running it: that path is a key of path_importer_cache, also on the page
    sys.path_importer_cache.pop(__file__, None)
    __file__ = "pydoc_site.py"
    _serve(int(sys.stdin.readline() or 0))
