"""Pieces shared by tests/integration/test_workloads.py and benchmarks/bench_workloads.py:
the service scripts they deploy, finding instance processes in /proc by their environment,
asking a service on its port, and reading a deployment's `status`.

Stdlib only. Every function is a plain blocking call run by the caller's (main) thread."""

from __future__ import annotations

import urllib.request
from pathlib import Path

# a Python HTTP service answering "<node> <instance>" on $PORT
WEB = """\
import http.server
import os


class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (os.environ["PRISN_NODE"] + " " + os.environ["PRISN_INSTANCE"]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""
# a port-less service that only sleeps
IDLE = "import time\nwhile True:\n    time.sleep(1)\n"


def instance_processes(under: str | None = None) -> list[tuple[int, str, str]]:
    """(pid, PRISN_DEPLOYMENT, PRISN_NODE) of every live (non-zombie) process that has
    PRISN_DEPLOYMENT in its environment, sorted by pid. With `under`, only those whose
    command line contains it (e.g. the directory of this run's scripts: other sessions on
    the same machine may run instances of the same names)."""
    out = []
    needle = under.encode() if under is not None else None
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            state = (d / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state == b"Z":
            continue
        if needle is not None:
            try:
                if needle not in (d / "cmdline").read_bytes():
                    continue
            except OSError:
                continue
        kv = dict(e.split(b"=", 1) for e in env if b"=" in e)
        dep = kv.get(b"PRISN_DEPLOYMENT")
        if dep is not None:
            out.append((int(d.name), dep.decode(), kv.get(b"PRISN_NODE", b"").decode()))
    return sorted(out)


def processes(deployment: str, under: str | None = None) -> list[tuple[int, str]]:
    """(pid, PRISN_NODE) of every live process whose environment names `deployment` (and,
    with `under`, whose command line contains it)."""
    return [(pid, node) for pid, dep, node in instance_processes(under) if dep == deployment]


def answer(port: int, timeout: float = 2.0) -> str | None:
    """The body a service on 127.0.0.1:`port` answers to `GET /`, or None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout) as r:
            return r.read().decode()
    except OSError:
        return None


def running_status(status: dict, n: int) -> dict | None:
    """`status` (a deployment's `status` object) if exactly `n` instances are Running and
    `ready_replicas` agrees, else None."""
    ok = [i for i in status.get("instances", ()) if i.get("state") == "Running"]
    return status if len(ok) == n and status.get("ready_replicas") == n else None
