"""Start, stop, kill and restart local prisn and etcd clusters for benchmarks.

Every process listens on 127.0.0.1 on ports the kernel hands out, keeps its data and log in a
temporary directory, and is waited for by polling its HTTP API with a deadline (never a fixed
sleep). Both cluster classes are context managers that stop their processes on exit.

    with PrisnCluster(3) as c:
        leader = c.wait_for_leader()
        c.kill(leader)                # SIGKILL
        c.wait_for_leader(exclude=leader)
        c.restart(leader)             # same command line, same data dir
        c.wait_healthy()

    with EtcdCluster(3) as e:
        e.leader(), e.http_targets(), ...

The prisn command is ``$PRISN_BIN`` (split like a shell would) if set, else ``prisn`` on PATH,
else ``python -c 'from prisn.cli import main; main()'`` run from the repository root.
"""

from __future__ import annotations

import atexit
import base64
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[1]
ETCD_BIN = "/usr/bin/etcd"
LOCALHOST = "127.0.0.1"

T = TypeVar("T")


# --------------------------------------------------------------------------- small helpers


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback TCP ports that were free a moment ago (bound together so the
    kernel hands out different ones, then released for the servers to bind)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOCALHOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 2.0,
    host: str = LOCALHOST,
) -> tuple[int, bytes]:
    """One blocking HTTP request to ``host:port`` (no proxies). Raises OSError/HTTPException."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def http_json(
    port: int,
    method: str,
    path: str,
    doc: object | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 2.0,
) -> tuple[int, Any]:
    """Like :func:`http_call`, with a JSON body and a JSON-decoded answer (None if not JSON)."""
    hdrs = dict(headers or {})
    body = None
    if doc is not None:
        body = json.dumps(doc).encode()
        hdrs.setdefault("Content-Type", "application/json")
    status, raw = http_call(port, method, path, body, hdrs, timeout)
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def try_http_json(
    port: int, method: str, path: str, doc: object | None = None, timeout: float = 1.0
) -> tuple[int, Any] | None:
    """:func:`http_json`, or None when the server does not answer."""
    try:
        return http_json(port, method, path, doc, timeout=timeout)
    except (OSError, http.client.HTTPException):
        return None


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
    check: Callable[[], None] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something other than None, within ``timeout`` s.

    ``check`` runs before each poll and may raise to give up early (e.g. a process died)."""
    deadline = time.monotonic() + timeout
    max_polls = int(timeout / interval) + 10
    for _ in range(max_polls):
        if check is not None:
            check()
        value = predicate()
        if value is not None:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(interval, remaining))
    raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")


# --------------------------------------------------------------------------- processes

_LIVE: set[ServerProcess] = set()


def _stop_all_at_exit() -> None:
    for p in list(_LIVE):
        p.stop(timeout=5.0)


atexit.register(_stop_all_at_exit)


@dataclass(eq=False)
class ServerProcess:
    """One server process: its command, log file, and the Popen while it runs."""

    name: str
    cmd: list[str]
    log_path: Path
    cwd: Path | None = None
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        if self.alive():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== start #{self.starts + 1}: {shlex.join(self.cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
            )
        self.starts += 1
        _LIVE.add(self)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after ``timeout`` s."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """``sig`` (SIGTERM), then SIGKILL if still alive after ``timeout`` s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.send_signal(sig)
            if self.wait(timeout) is None:
                self.send_signal(signal.SIGKILL)
                self.wait(10.0)
        _LIVE.discard(self)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 15.0) -> None:
        """Send ``sig`` and wait for the process to exit (escalating to SIGKILL after
        ``timeout`` s, so the port and data dir are free for a restart)."""
        self.stop(timeout=timeout, sig=sig)

    def ensure_running(self) -> None:
        """Raise (with the log's tail) if the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with code {self.proc.returncode}; log tail:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _make_base_dir(base_dir: str | os.PathLike[str] | None, prefix: str) -> tuple[Path, bool]:
    if base_dir is not None:
        p = Path(base_dir)
        p.mkdir(parents=True, exist_ok=True)
        return p, False
    return Path(tempfile.mkdtemp(prefix=prefix)), True


# --------------------------------------------------------------------------- prisn


def prisn_command() -> list[str]:
    """How to run the prisn CLI: $PRISN_BIN, else `prisn` on PATH, else via `prisn.cli`."""
    override = os.environ.get("PRISN_BIN")
    if override:
        return shlex.split(override)
    found = shutil.which("prisn")
    if found:
        return [found]
    return [
        sys.executable,
        "-c",
        "import sys; from prisn.cli import main; sys.argv[0] = 'prisn'; sys.exit(main())",
    ]


def prisn_available() -> bool:
    """True if the prisn CLI looks runnable here (`prisn.cli` imports, or $PRISN_BIN is set)."""
    if os.environ.get("PRISN_BIN"):
        return True
    cmd = [sys.executable, "-c", "import prisn.cli"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    try:
        res = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


@dataclass(eq=False)
class PrisnNode(ServerProcess):
    node_id: str = ""
    http_port: int = 0
    raft_port: int | None = None
    data_dir: Path = field(default_factory=Path)

    @property
    def http_addr(self) -> str:
        return f"{LOCALHOST}:{self.http_port}"

    @property
    def raft_addr(self) -> str | None:
        return f"{LOCALHOST}:{self.raft_port}" if self.raft_port is not None else None

    def ready(self) -> bool:
        res = try_http_json(self.http_port, "GET", "/ready")
        return res is not None and res[0] == 200

    def status(self) -> dict[str, Any] | None:
        res = try_http_json(self.http_port, "GET", "/api/v1/cluster/status")
        if res is None or res[0] != 200 or not isinstance(res[1], dict):
            return None
        return res[1]


def _status_leader(st: dict[str, Any] | None) -> str | None:
    if not st:
        return None
    leader = st.get("leader")
    return str(leader) if leader else None


class PrisnCluster:
    """N prisn servers on loopback: n1 bootstraps, n2..nN join with --peers (one at a time).

    ``clustered=False`` (with size 1) runs a plain ``prisn server`` without --cluster.
    ``cluster_key=True`` makes a cluster key with ``prisn keygen`` in the base directory and
    starts every node with ``--cluster-key-file`` (CurveZMQ peers; the same command line is
    used by `restart`)."""

    def __init__(
        self,
        size: int = 3,
        *,
        clustered: bool = True,
        base_dir: str | os.PathLike[str] | None = None,
        keep_dir: bool = False,
        command: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 60.0,
        cluster_key: bool = False,
    ) -> None:
        if size < 1 or (not clustered and size != 1):
            raise ValueError("size must be >= 1, and 1 when not clustered")
        self.size = size
        self.clustered = clustered
        self.base_dir, self._owns_dir = _make_base_dir(base_dir, "prisn-bench-")
        self.keep_dir = keep_dir
        self.ready_timeout = ready_timeout
        base_cmd = list(command) if command is not None else prisn_command()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env.setdefault("PYTHONUNBUFFERED", "1")
        ports = free_ports(2 * size)
        self.nodes: list[PrisnNode] = []
        extra = list(extra_args)
        if cluster_key and clustered:
            key_file = self.base_dir / "cluster.key"
            if not key_file.exists():
                subprocess.run(base_cmd + ["keygen", "--out", str(key_file)], cwd=REPO_ROOT,
                               env=env, check=True, capture_output=True, timeout=60)
            extra += ["--cluster-key-file", str(key_file)]
        for i in range(size):
            node_id = f"n{i + 1}"
            http_port = ports[2 * i]
            raft_port = ports[2 * i + 1] if clustered else None
            data_dir = self.base_dir / node_id
            cmd = base_cmd + [
                "server",
                "--bind",
                f"{LOCALHOST}:{http_port}",
                "--data-dir",
                str(data_dir),
                "--node-id",
                node_id,
                "--rate-limit",  # load generators drive one node from one address
                "0",
            ]
            if clustered:
                cmd += ["--cluster", "--raft-addr", f"{LOCALHOST}:{raft_port}"]
                if i == 0:
                    cmd.append("--bootstrap")
                else:
                    peers = ",".join(f"{LOCALHOST}:{ports[2 * j + 1]}" for j in range(i))
                    cmd += ["--peers", peers]
            cmd += extra
            self.nodes.append(
                PrisnNode(
                    name=f"prisn-{node_id}",
                    cmd=cmd,
                    log_path=self.base_dir / f"{node_id}.log",
                    cwd=REPO_ROOT,
                    env=env,
                    node_id=node_id,
                    http_port=http_port,
                    raft_port=raft_port,
                    data_dir=data_dir,
                )
            )

    # -- lifecycle

    def __enter__(self) -> PrisnCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        for i, node in enumerate(self.nodes):
            node.data_dir.mkdir(parents=True, exist_ok=True)
            node.start()
            self._wait_ready(node)
            if self.clustered:
                # each joiner waits until the cluster it joined agrees on a leader and sees it
                self.wait_healthy(expected_members=i + 1, nodes=self.nodes[: i + 1])

    def close(self) -> None:
        for node in self.nodes:
            node.stop(timeout=10.0)
        if self._owns_dir and not self.keep_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _check_alive(self, nodes: Sequence[PrisnNode]) -> Callable[[], None]:
        def check() -> None:
            for n in nodes:
                n.ensure_running()

        return check

    def _wait_ready(self, node: PrisnNode, timeout: float | None = None) -> None:
        wait_until(
            lambda: True if node.ready() else None,
            timeout or self.ready_timeout,
            f"{node.name} /ready",
            check=node.ensure_running,
        )

    # -- observation

    def alive_nodes(self) -> list[PrisnNode]:
        return [n for n in self.nodes if n.alive()]

    def http_targets(self, alive_only: bool = True) -> list[str]:
        nodes = self.alive_nodes() if alive_only else self.nodes
        return [n.http_addr for n in nodes]

    def node(self, node_id: str) -> PrisnNode | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)

    def leader(self, exclude: Sequence[PrisnNode] = ()) -> PrisnNode | None:
        """The leader a majority of the answering live nodes name (None if unknown/split)."""
        if not self.clustered:
            return self.nodes[0] if self.nodes[0].alive() else None
        votes: dict[str, int] = {}
        answered = 0
        for n in self.alive_nodes():
            lid = _status_leader(n.status())
            if lid is None:
                continue
            answered += 1
            votes[lid] = votes.get(lid, 0) + 1
        if not votes:
            return None
        lid, count = max(votes.items(), key=lambda kv: kv[1])
        if count * 2 <= answered:
            return None
        node = self.node(lid)
        if node is None or not node.alive() or node in exclude:
            return None
        return node

    def wait_for_leader(
        self, timeout: float | None = None, exclude: Sequence[PrisnNode] = ()
    ) -> PrisnNode:
        return wait_until(
            lambda: self.leader(exclude),
            timeout or self.ready_timeout,
            "a prisn leader",
        )

    def healthy_leader(
        self, expected_members: int | None = None, nodes: Sequence[PrisnNode] | None = None
    ) -> PrisnNode | None:
        """The leader if every node in ``nodes`` (default: all) runs, is /ready, names the same
        live leader, lists ``expected_members`` members (default: size) none of which is a
        ``learner`` (when it lists them), and does not say ``"healthy": false``."""
        nodes = list(self.nodes if nodes is None else nodes)
        expected = self.size if expected_members is None else expected_members
        leader_ids: set[str] = set()
        for n in nodes:
            if not n.alive() or not n.ready():
                return None
            if not self.clustered:
                continue
            st = n.status()
            lid = _status_leader(st)
            if st is None or lid is None:
                return None
            if st.get("healthy") is False:
                return None
            members = st.get("nodes")
            if isinstance(members, list):
                if len(members) < expected:
                    return None
                # a joiner is not a voter until promoted: a cluster with learners is still forming
                if any(isinstance(m, dict) and m.get("state") == "learner" for m in members):
                    return None
            leader_ids.add(lid)
        if not self.clustered:
            return nodes[0]
        if len(leader_ids) != 1:
            return None
        leader = self.node(leader_ids.pop())
        return leader if leader is not None and leader.alive() else None

    def wait_healthy(
        self,
        timeout: float | None = None,
        expected_members: int | None = None,
        nodes: Sequence[PrisnNode] | None = None,
    ) -> PrisnNode:
        """Wait until :meth:`healthy_leader` names a leader; return it."""
        nodes = list(self.nodes if nodes is None else nodes)
        try:
            return wait_until(
                lambda: self.healthy_leader(expected_members, nodes),
                timeout or self.ready_timeout,
                "a healthy prisn cluster",
                interval=0.1,
                check=self._check_alive(nodes),
            )
        except TimeoutError as e:
            raise TimeoutError(f"{e}; {self.describe(nodes)}") from None

    def describe(self, nodes: Sequence[PrisnNode] | None = None) -> str:
        """One line per node: running?, /ready, and its cluster status (for error messages)."""
        parts = []
        for n in self.nodes if nodes is None else nodes:
            st = n.status() if n.alive() else None
            parts.append(
                f"{n.node_id}(pid {n.pid}, {'up' if n.alive() else 'down'}, "
                f"ready={n.ready() if n.alive() else False}, status={st})"
            )
        return "nodes: " + "; ".join(parts)

    # -- faults

    def kill(self, node: PrisnNode, sig: int = signal.SIGKILL) -> None:
        """Signal ``node`` and wait until it has exited."""
        node.kill(sig)

    def restart(self, node: PrisnNode, wait_ready: bool = True) -> None:
        """Start ``node`` again with its same command line and data directory."""
        node.start()
        if wait_ready:
            self._wait_ready(node)


# --------------------------------------------------------------------------- etcd


@dataclass(eq=False)
class EtcdNode(ServerProcess):
    client_port: int = 0
    peer_port: int = 0
    data_dir: Path = field(default_factory=Path)

    @property
    def http_addr(self) -> str:
        return f"{LOCALHOST}:{self.client_port}"

    def healthy(self) -> bool:
        res = try_http_json(self.client_port, "GET", "/health")
        return (
            res is not None
            and res[0] == 200
            and isinstance(res[1], dict)
            and str(res[1].get("health")).lower() == "true"
        )

    def status(self) -> dict[str, Any] | None:
        """``POST /v3/maintenance/status`` (member id, leader id, raft term, ...)."""
        res = try_http_json(self.client_port, "POST", "/v3/maintenance/status", {})
        if res is None or res[0] != 200 or not isinstance(res[1], dict):
            return None
        return res[1]

    def is_leader(self) -> bool:
        st = self.status()
        if st is None:
            return False
        header = st.get("header") or {}
        return bool(st.get("leader")) and str(st.get("leader")) == str(header.get("member_id"))


class EtcdCluster:
    """N etcd members (Debian's /usr/bin/etcd) on loopback, bootstrapped with
    --initial-cluster; etcd's default heartbeat (100 ms) and election (1000 ms) timeouts."""

    def __init__(
        self,
        size: int = 3,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        keep_dir: bool = False,
        etcd_bin: str = ETCD_BIN,
        quota_backend_bytes: int | None = None,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 60.0,
    ) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self.base_dir, self._owns_dir = _make_base_dir(base_dir, "etcd-bench-")
        self.keep_dir = keep_dir
        self.ready_timeout = ready_timeout
        ports = free_ports(2 * size)
        names = [f"e{i + 1}" for i in range(size)]
        initial = ",".join(f"{names[i]}=http://{LOCALHOST}:{ports[2 * i + 1]}" for i in range(size))
        token = f"bench-{os.getpid()}-{ports[0]}"
        env = dict(os.environ)
        self.nodes: list[EtcdNode] = []
        for i, name in enumerate(names):
            client_port, peer_port = ports[2 * i], ports[2 * i + 1]
            data_dir = self.base_dir / name
            client_url = f"http://{LOCALHOST}:{client_port}"
            peer_url = f"http://{LOCALHOST}:{peer_port}"
            cmd = [
                etcd_bin,
                "--name",
                name,
                "--data-dir",
                str(data_dir),
                "--listen-client-urls",
                client_url,
                "--advertise-client-urls",
                client_url,
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
                "--initial-cluster",
                initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                token,
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            ]
            if quota_backend_bytes is not None:
                cmd += ["--quota-backend-bytes", str(quota_backend_bytes)]
            cmd += list(extra_args)
            self.nodes.append(
                EtcdNode(
                    name=f"etcd-{name}",
                    cmd=cmd,
                    log_path=self.base_dir / f"{name}.log",
                    env=env,
                    client_port=client_port,
                    peer_port=peer_port,
                    data_dir=data_dir,
                )
            )

    def __enter__(self) -> EtcdCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        for node in self.nodes:  # static bootstrap: all members start together
            node.start()
        self.wait_healthy()

    def close(self) -> None:
        for node in self.nodes:
            node.stop(timeout=10.0)
        if self._owns_dir and not self.keep_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def alive_nodes(self) -> list[EtcdNode]:
        return [n for n in self.nodes if n.alive()]

    def http_targets(self, alive_only: bool = True) -> list[str]:
        nodes = self.alive_nodes() if alive_only else self.nodes
        return [n.http_addr for n in nodes]

    def leader(self, exclude: Sequence[EtcdNode] = ()) -> EtcdNode | None:
        """The live member whose status says ``leader == header.member_id`` (highest raft
        term wins should two claim it)."""
        best: tuple[int, EtcdNode] | None = None
        for n in self.alive_nodes():
            if n in exclude:
                continue
            st = n.status()
            if st is None:
                continue
            header = st.get("header") or {}
            if not st.get("leader") or str(st.get("leader")) != str(header.get("member_id")):
                continue
            term = int(st.get("raftTerm") or header.get("raft_term") or 0)
            if best is None or term > best[0]:
                best = (term, n)
        return best[1] if best is not None else None

    def wait_for_leader(
        self, timeout: float | None = None, exclude: Sequence[EtcdNode] = ()
    ) -> EtcdNode:
        return wait_until(
            lambda: self.leader(exclude), timeout or self.ready_timeout, "an etcd leader"
        )

    def healthy_leader(self) -> EtcdNode | None:
        """The leader if every member runs, reports /health true, and all name one leader."""
        leader_ids: set[str] = set()
        for n in self.nodes:
            if not n.alive() or not n.healthy():
                return None
            st = n.status()
            if st is None or not st.get("leader"):
                return None
            leader_ids.add(str(st["leader"]))
        if len(leader_ids) != 1:
            return None
        return self.leader()

    def wait_healthy(self, timeout: float | None = None) -> EtcdNode:
        def check() -> None:
            for n in self.nodes:
                n.ensure_running()

        try:
            return wait_until(
                self.healthy_leader,
                timeout or self.ready_timeout,
                "a healthy etcd cluster",
                interval=0.1,
                check=check,
            )
        except TimeoutError as e:
            states = [
                f"{n.name}({'up' if n.alive() else 'down'}, healthy={n.alive() and n.healthy()}, "
                f"status={n.status() if n.alive() else None})"
                for n in self.nodes
            ]
            raise TimeoutError(f"{e}; members: {'; '.join(states)}") from None

    def kill(self, node: EtcdNode, sig: int = signal.SIGKILL) -> None:
        node.kill(sig)

    def reset_keys(self, prefix: bytes = b"bench/", timeout: float = 120.0) -> None:
        """Delete every key under ``prefix``, compact the history, defragment each member:
        keeps a long benchmark under etcd's backend quota (2 GiB by default)."""
        leader = self.wait_for_leader()
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        status, doc = http_json(
            leader.client_port,
            "POST",
            "/v3/kv/deleterange",
            {"key": base64.b64encode(prefix).decode(), "range_end": base64.b64encode(end).decode()},
            timeout=timeout,
        )
        if status != 200:
            raise RuntimeError(f"etcd deleterange failed: {status} {doc}")
        revision = int(((doc or {}).get("header") or {}).get("revision") or 0)
        if revision > 0:
            status, doc = http_json(
                leader.client_port,
                "POST",
                "/v3/kv/compaction",
                {"revision": revision, "physical": True},
                timeout=timeout,
            )
            if status != 200 and "compacted" not in json.dumps(doc):
                raise RuntimeError(f"etcd compaction failed: {status} {doc}")
        for n in self.alive_nodes():
            status, doc = http_json(
                n.client_port, "POST", "/v3/maintenance/defragment", {}, timeout=timeout
            )
            if status != 200:
                raise RuntimeError(f"etcd defragment of {n.name} failed: {status} {doc}")

    def restart(self, node: EtcdNode, wait_ready: bool = True) -> None:
        """Start ``node`` again with its same command line (its data dir makes it rejoin)."""
        node.start()
        if wait_ready:
            wait_until(
                lambda: True if node.healthy() else None,
                self.ready_timeout,
                f"{node.name} /health",
                check=node.ensure_running,
            )
