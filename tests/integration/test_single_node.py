"""One real `prisn server` process on loopback: the API end to end, restarts, SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading

import pytest

from tests.procs import free_port, single_node, wait_for


@pytest.fixture
def node(tmp_path):
    n = single_node(tmp_path).start()
    try:
        n.wait_ready()
        yield n
    finally:
        n.stop()


def test_deployment_lifecycle_and_headers(node):
    r = node.req("POST", "/api/v1/deployments",
                 {"name": "web", "source": "print(1)", "port": 8080, "env": {"A": "1"}})
    assert r.status == 201, r.body
    dep = r.json()
    assert dep["type"] == "service" and dep["generation"] == 1 and dep["namespace"] == "default"
    assert r.headers["x-prisn-node"] == "n1"
    assert r.headers["x-prisn-leader"] == "n1"
    assert node.req("POST", "/api/v1/deployments", {"name": "web", "source": "x"}).status == 409
    r = node.req("PATCH", "/api/v1/deployments/web", {"replicas": 5})
    assert r.status == 200 and r.json()["replicas"] == 5 and r.json()["generation"] == 2
    r = node.req("POST", "/api/v1/deployments/web/scale", {"replicas": 2})
    assert r.status == 200 and r.json()["generation"] == 3
    r = node.req("GET", "/api/v1/deployments/web", headers={"X-Prisn-Consistency": "strong"})
    assert r.status == 200 and r.json()["replicas"] == 2
    assert node.req("GET", f"/api/v1/deployments/{dep['id']}").status == 200
    listing = node.req("GET", "/api/v1/deployments").json()
    assert listing["total"] == 1 and listing["items"][0]["name"] == "web"
    assert node.req("DELETE", "/api/v1/deployments/web").status == 204
    assert node.req("GET", "/api/v1/deployments/web").status == 404
    bad = node.req("POST", "/api/v1/deployments", b"{not json")
    assert bad.status == 400 and set(bad.json()) == {"error", "message"}
    assert node.req("GET", "/nope").json()["error"] == "Not Found"


def test_health_ready_metrics(node):
    h = node.req("GET", "/health").json()
    assert h["status"] == "healthy" and h["node_id"] == "n1" and h["state"] == "leader"
    assert node.req("GET", "/ready").status == 200
    node.req("POST", "/api/v1/deployments", {"name": "a", "source": "x"})
    text = node.req("GET", "/metrics").body.decode()
    for name in ("raft_state 2.0", "raft_term", "raft_commit_index", "raft_applied_index",
                 "raft_peers 0.0", "prisn_deployments_total 1.0", "prisn_api_requests_total",
                 "prisn_api_request_duration_seconds_bucket", "prisn_log_fsync_seconds_bucket",
                 "prisn_snapshot_index", "prisn_raft_log_start_index 1.0",
                 "prisn_snapshot_installs_received_total 0.0"):
        assert name in text, name
    st = node.status()
    assert st["leader"] == "n1" and st["healthy"] is True
    assert st["nodes"] == [{"id": "n1", "address": st["nodes"][0]["address"], "state": "leader"}]


def test_restart_keeps_everything(tmp_path):
    n = single_node(tmp_path).start().wait_ready()
    try:
        for i in range(50):
            assert n.req("POST", "/api/v1/deployments",
                         {"name": f"d{i}", "source": "x", "replicas": i % 7}).status == 201
        n.req("PATCH", "/api/v1/deployments/d3", {"replicas": 9})
        before = n.req("GET", "/api/v1/deployments?limit=1000").json()
        assert n.stop() == 0
        n.restart().wait_ready()
        after = n.req("GET", "/api/v1/deployments?limit=1000").json()
        assert after == before
        assert n.req("POST", "/api/v1/deployments", {"name": "d0", "source": "x"}).status == 409
    finally:
        n.stop()


@pytest.mark.parametrize("trial", range(3))
def test_sigkill_during_writes_loses_no_acknowledged_write(tmp_path, trial):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    n = single_node(tmp_path).start().wait_ready()
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int) -> None:
        i = 0
        while not stop.is_set() and i < 100_000:
            name = f"w{w}-{i}"
            i += 1
            try:
                r = n.req("POST", "/api/v1/deployments", {"name": name, "source": "x"},
                          timeout=5)
            except OSError:
                return
            if r.status == 201:
                with lock:
                    acked.append(name)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    try:
        target = rng.randint(20, 400)
        wait_for(lambda: len(acked) >= target, 30, f"{target} acknowledged writes")
        n.kill(signal.SIGKILL)
        n.wait_exit()
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    try:
        n.restart().wait_ready()
        present = {d["name"] for d in
                   n.req("GET", "/api/v1/deployments?limit=1000").json()["items"]}
        total = n.req("GET", "/api/v1/deployments?limit=1").json()["total"]
        offset = 1000
        while offset < total:
            page = n.req("GET", f"/api/v1/deployments?limit=1000&offset={offset}").json()
            present |= {d["name"] for d in page["items"]}
            offset += 1000
        missing = [a for a in acked if a not in present]
        assert not missing, f"seed {seed}: {len(missing)} acknowledged writes lost: {missing[:5]}"
    finally:
        n.stop()


def _cli(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prisn.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_cli_version_and_bad_flags(tmp_path):
    r = _cli("--version")
    assert r.returncode == 0 and "prisn" in r.stdout
    for bad in (["--bind", "nonsense"], ["--peers", "a:b"], ["--election-timeout", "x"],
                ["--no-such-flag"], ["--heartbeat-interval", "100ms", "--election-timeout", "150ms"],
                ["--rate-limit", "nan"], ["--rate-limit", "inf"], ["--rate-limit", "-1"],
                ["--api-key", "short"], ["--tls-cert", str(tmp_path / "missing.pem"),
                                         "--tls-key", str(tmp_path / "missing.key")],
                ["--tls-cert", str(tmp_path)]):
        r = _cli("server", "--data-dir", str(tmp_path), *bad)
        assert r.returncode == 2, (bad, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith("prisn: error:")
    r = _cli("server", "--data-dir", str(tmp_path), env={"PRISN_BIND": "garbage"})
    assert r.returncode == 2 and "--bind" in r.stderr


def test_environment_configures_and_flags_win(tmp_path):
    port = free_port()
    env_port = free_port()
    env = {"PRISN_BIND": f"127.0.0.1:{env_port}", "PRISN_NODE_ID": "envnode",
           "PRISN_DATA_DIR": str(tmp_path / "d")}
    p = subprocess.Popen([sys.executable, "-m", "prisn.cli", "server", "--bind",
                          f"127.0.0.1:{port}"], env={**os.environ, **env},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        from tests.procs import request
        h = wait_for(lambda: request(port, "GET", "/health", timeout=1).json(), 20, "health")
        assert h["node_id"] == "envnode"
        assert (tmp_path / "d" / "raft").exists()
        p.send_signal(signal.SIGINT)
        assert p.wait(15) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_sigterm_exits_zero_and_unwritable_data_dir_fails(tmp_path):
    n = single_node(tmp_path).start().wait_ready()
    assert n.stop() == 0  # stop() kills after its own deadline, so a hang fails here
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _cli("server", "--bind", f"127.0.0.1:{free_port()}", "--data-dir", str(blocker / "sub"))
    assert r.returncode == 1 and "cannot start" in r.stderr


def test_systemd_notify_ready_once_serving_and_stopping(tmp_path):
    """Type=notify: READY=1 arrives on $NOTIFY_SOCKET once the API answers; STOPPING=1 on
    SIGTERM."""
    import socket as socketlib

    path = str(tmp_path / "notify.sock")
    sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    n = single_node(tmp_path)
    n.env = {"NOTIFY_SOCKET": path}
    n.start()
    try:
        assert sock.recv(256) == b"READY=1"
        assert n.req("GET", "/health", timeout=5).status == 200  # serving when it said so
        n.kill(signal.SIGTERM)
        assert sock.recv(256) == b"STOPPING=1"
        assert n.wait_exit() == 0
    finally:
        n.stop()
        sock.close()
