"""Real `prisn server` processes on loopback for integration and fault tests.

Every wait polls with a deadline; ports are ephemeral; each node's output goes to a log file in
its data dir so that a failing test can show it.
"""

from __future__ import annotations

import http.client
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import free_port, wait_for  # the shared helpers (re-exported)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def request(port: int, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None, timeout: float = 10.0) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else (body if isinstance(body, bytes)
                                          else json.dumps(body).encode())
        h = {"Content-Type": "application/json"} if data is not None else {}
        h.update(headers or {})
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


@dataclass
class ServerProc:
    """One `prisn server` process; `restart()` reuses its exact command line."""

    node_id: str
    data_dir: Path
    http_port: int
    raft_port: int
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def raft_addr(self) -> str:
        return f"127.0.0.1:{self.raft_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.node_id}.log"

    def start(self) -> ServerProc:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([sys.executable, "-m", "prisn.cli", *self.args],
                                     stdout=out, stderr=subprocess.STDOUT, env=env)
        out.close()
        return self

    def restart(self) -> ServerProc:
        assert self.proc is None or self.proc.poll() is not None, "still running"
        return self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self.kill(signal.SIGTERM)
        try:
            return self.wait_exit(15)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            return self.wait_exit(5)

    def req(self, method: str, path: str, body: Any = None, **kw: Any) -> Response:
        return request(self.http_port, method, path, body, **kw)

    def status(self) -> dict:
        return self.req("GET", "/api/v1/cluster/status", timeout=2).json()

    def ready(self) -> bool:
        try:
            return self.req("GET", "/ready", timeout=2).status == 200
        except (OSError, http.client.HTTPException):
            return False

    def wait_ready(self, timeout: float = 20.0) -> ServerProc:
        def ok() -> bool:
            if not self.alive():
                raise AssertionError(f"{self.node_id} exited: {self.tail()}")
            return self.ready()
        wait_for(ok, timeout, f"{self.node_id} ready")
        return self

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def single_node(tmp: Path, node_id: str = "n1", extra: list[str] | None = None) -> ServerProc:
    hp = free_port()
    args = ["server", "--bind", f"127.0.0.1:{hp}", "--data-dir", str(tmp / node_id / "data"),
            "--node-id", node_id, *(extra or [])]
    return ServerProc(node_id, tmp / node_id / "data", hp, 0, args)


def cluster_node(tmp: Path, node_id: str, *, bootstrap: bool = False, peers: list[str] = (),
                 raft_port: int | None = None, extra: list[str] | None = None) -> ServerProc:
    hp = free_port()
    rp = raft_port or free_port()
    args = ["server", "--bind", f"127.0.0.1:{hp}", "--data-dir", str(tmp / node_id / "data"),
            "--node-id", node_id, "--cluster", "--raft-addr", f"127.0.0.1:{rp}"]
    if bootstrap:
        args.append("--bootstrap")
    if peers:
        args += ["--peers", ",".join(peers)]
    args += extra or []
    return ServerProc(node_id, tmp / node_id / "data", hp, rp, args)


def start_cluster(tmp: Path, extra: list[str] | None = None) -> list[ServerProc]:
    """The seed's Quick Start on loopback: n1 bootstraps, n2 and n3 join with --peers.

    Returns once every node is ready and sees three voters. On failure the started nodes are
    stopped before the error propagates."""
    extra = extra or []
    n1 = cluster_node(tmp, "n1", bootstrap=True, extra=extra).start()
    nodes = [n1]
    try:
        n1.wait_ready()
        nodes.append(cluster_node(tmp, "n2", peers=[n1.raft_addr], extra=extra).start())
        nodes.append(cluster_node(tmp, "n3", peers=[n1.raft_addr, nodes[1].raft_addr],
                                  extra=extra).start())
        for n in nodes:
            n.wait_ready(30)
        wait_for(lambda: all(sum(x["state"] in ("leader", "follower") for x in
                                 n.status()["nodes"]) == 3 for n in nodes), 30, "three voters")
    except BaseException:
        for n in nodes:
            n.stop()
        raise
    return nodes


def leader_of(nodes: list[ServerProc], timeout: float = 15.0) -> ServerProc:
    """The live node that every live member agrees leads (polled with a deadline)."""
    live = [n for n in nodes if n.alive()]

    def agreed() -> ServerProc | None:
        ids = {n.status().get("leader") for n in live}
        if len(ids) == 1 and None not in ids and "" not in ids:
            return next((n for n in live if n.node_id in ids), None)
        return None

    return wait_for(agreed, timeout, "one agreed leader")


CLI_TIMEOUT = 60


def on_a_terminal(args: list[str], answer: str | None) -> tuple[int, str]:
    """Run `prisn ARGS` with stdin, stdout and stderr on a pseudo-terminal; type `answer`
    once the question appears (None: expect no question). (exit code, everything shown)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISN_")}
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "prisn.cli", *args], stdin=slave,
                         stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    shown = b""
    typed = False
    deadline = time.monotonic() + CLI_TIMEOUT
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.1)
            if r:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk and p.poll() is not None:
                    break
                shown += chunk
            elif p.poll() is not None:
                break
            if answer is not None and not typed and b"[y/N]" in shown:
                os.write(master, answer.encode() + b"\n")
                typed = True
        code = p.wait(5)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    return code, shown.decode(errors="replace")
