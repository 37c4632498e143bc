"""`builtin:pydoc`: the running interpreter's pydoc pages of the standard library, served on
127.0.0.1 for the duration of a crawl so the demo needs no internet.

The server runs in its own process started with `-I -S`: rendering a module's page imports
the module, so its side effects stay out of the caller, and site-packages stay off the path.
This file therefore imports nothing but the standard library.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SEED = "builtin:pydoc"

# Modules whose import opens windows or browsers, prints, or runs a test suite.
EXCLUDED_MODULES = frozenset(
    "antigravity this tkinter turtle turtledemo idlelib test ensurepip lib2to3 pydoc_data "
    "msilib winreg winsound msvcrt _winapi nt".split()
)

ROBOTS = "User-agent: *\nDisallow: /search\nDisallow: /getfile\nDisallow: /get?\n"


def module_allowed(name: str) -> bool:
    top = name.split(".")[0]
    return (
        bool(top)
        and not top.startswith("_")
        and top not in EXCLUDED_MODULES
        and top in sys.stdlib_module_names
        and "__main__" not in name.split(".")  # importing `venv.__main__` runs venv: it made a venv named "0" here
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
            self._send(200, page)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


@contextlib.contextmanager
def serve_pydoc(port: int = 0, timeout_s: float = 30.0):
    """Yield the base URL of a pydoc server on 127.0.0.1 and stop it on exit."""
    workdir = tempfile.mkdtemp(prefix="llmill-pydoc-")  # whatever an import writes lands here, not in the caller's directory
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", str(Path(__file__).resolve()), str(port)],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
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
    _serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
