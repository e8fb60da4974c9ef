"""A scripted HTTP server on a real socket and the CLI as a subprocess, for CLI tests that
need answers a real prisn server cannot be made to give on demand (exactly one 503, a
status that changes after the second request, ...)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.procs import CLI_TIMEOUT


def prisn(*args: str, server: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISN_")}
    return subprocess.run([sys.executable, "-m", "prisn.cli", "--server", server, *args],
                          env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT,
                          stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------------- a scripted server
class Script(ThreadingHTTPServer):
    """Answers each request with the next scripted (status, headers, body) for its method and
    path (then 500), or with what a callable given instead of the list returns for the
    server, and records (method, path, headers) of every request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers: dict[tuple[str, str], list[tuple[int, dict[str, str], Any]]] = {}
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.targets: list[str] = []  # every request's path with its query string
        self.bodies: list[Any] = []  # every request's JSON body (None: none or not JSON)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Script

    def _answer(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            self.server.bodies.append(json.loads(raw) if raw else None)
        except ValueError:
            self.server.bodies.append(None)
        path = self.path.split("?")[0]
        self.server.targets.append(self.path)
        self.server.seen.append((self.command, path, {k.lower(): v for k, v in
                                                      self.headers.items()}))
        queue = self.server.answers.get((self.command, path), [])
        if callable(queue):  # an answer computed from what was seen so far
            status, headers, body = queue(self.server)
        else:
            status, headers, body = queue.pop(0) if queue else (
                500, {}, {"error": "x", "message": "no script"})
        raw_lines = isinstance(body, bytes)  # a streamed answer (newline-delimited JSON)
        data = body if raw_lines else b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type",
                         "application/x-ndjson" if raw_lines else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _answer  # noqa: N815

    def log_message(self, *args: Any) -> None:
        pass


UNAVAILABLE = (503, {"Retry-After": "0"},
               {"error": "Service Unavailable", "message": "no quorum is available"})
DEP = {"name": "app", "namespace": "default", "type": "job", "replicas": 1, "port": 0,
       "generation": 1, "source": "app.py", "runtime": "python"}
