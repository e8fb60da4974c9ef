"""Secrets on real processes (issue 15): a three-node cluster started with a cluster key
stores a secret written on a follower (with the CLI), every node reads it back, snapshots are
taken, and no file under any data dir (RocksDB files, WAL, snapshots) nor any log holds a
plain value. Without a cluster key the node says so at start, and the value is on disk in
the clear (which shows that the grep can find it)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ServerProc, leader_of, single_node, start_cluster, wait_for

pytestmark = pytest.mark.timeout(300)

EXTRA = ["--write-timeout", "5s", "--election-timeout", "500ms", "--snapshot-threshold", "4",
         "--snapshot-interval", "0"]
WAIT = 60.0
SEED = int(os.environ.get("PRISN_TEST_SEED", "0")) or random.SystemRandom().randrange(1, 2**32)
WARNING = "secrets are stored unencrypted: start with a cluster key to encrypt them at rest"


def _cli(*args: str, server: ServerProc) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISN_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return subprocess.run([sys.executable, "-m", "prisn.cli", "--server",
                           f"127.0.0.1:{server.http_port}", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def _keygen(path: Path) -> Path:
    r = subprocess.run([sys.executable, "-m", "prisn.cli", "keygen", "--out", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return path


def _files_holding(root: Path, needle: bytes) -> list[str]:
    """Every regular file under `root` whose bytes contain `needle`."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            try:
                if needle in p.read_bytes():
                    found.append(str(p))
            except OSError:
                pass  # a file removed while walking (RocksDB compaction): nothing to read
    return found


def _values(node: ServerProc, name: str) -> dict[str, str] | None:
    r = node.req("GET", f"/api/v1/secrets/{name}", timeout=5)
    return r.json()["data"] if r.status == 200 else None


def _snapshots(node: ServerProc) -> list[Path]:
    d = node.data_dir / "snapshots"
    return [p for p in d.iterdir() if p.is_file()] if d.exists() else []


def test_keyed_cluster_keeps_no_plaintext_on_disk(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    first = f"first-{rng.getrandbits(64):016x}-value"
    second = f"second-{rng.getrandbits(64):016x}-value"
    key = _keygen(tmp_path / "cluster.key")
    nodes = start_cluster(tmp_path / "c", [*EXTRA, "--cluster-key-file", str(key)])
    try:
        leader = leader_of(nodes)
        follower = next(n for n in nodes if n is not leader)
        p = _cli("secret", "create", "db", "--from-literal", f"PASSWORD={first}",
                 "--from-literal", "USER=app", server=follower)
        assert p.returncode == 0, (p.stdout, p.stderr, f"seed {SEED}")
        assert first not in p.stdout + p.stderr
        for n in nodes:
            wait_for(lambda n=n: _values(n, "db") == {"PASSWORD": first, "USER": "app"}, WAIT,
                     f"secret readable on {n.node_id}")
        listing = leader.req("GET", "/api/v1/secrets").json()
        assert [s["name"] for s in listing["items"]] == ["db"]
        assert first not in str(listing)
        p = _cli("secret", "rotate", "db", "--from-literal", f"PASSWORD={second}",
                 server=leader)
        assert p.returncode == 0 and "version 2" in p.stdout, (p.stdout, p.stderr)
        p = _cli("secret", "get", "db", server=next(n for n in nodes if n is not follower
                                                     and n is not leader))
        assert p.returncode == 0, p.stderr
        # the rotation is applied on that node once it answers with the new value
        for n in nodes:
            wait_for(lambda n=n: _values(n, "db") == {"PASSWORD": second}, WAIT,
                     f"rotated secret on {n.node_id}")
        r = leader.req("POST", "/api/v1/deployments",
                       {"name": "web", "source": "x", "secrets": ["db"]})
        assert r.status == 201, r.body
        r = leader.req("POST", "/api/v1/deployments",
                       {"name": "bad", "source": "x", "secrets": ["nope"]})
        assert r.status == 400 and "secret default/nope does not exist" in r.json()["message"]
        for i in range(10):  # --snapshot-threshold 4: every node snapshots the secrets
            r = leader.req("POST", "/api/v1/deployments", {"name": f"filler{i}", "source": "x"})
            assert r.status == 201, r.body
        for n in nodes:
            wait_for(lambda n=n: len(_snapshots(n)) > 0, WAIT, f"a snapshot on {n.node_id}")
    finally:
        for n in nodes:
            n.stop()
    for n in nodes:
        for value in (first, second):
            assert _files_holding(n.data_dir, value.encode()) == [], (n.node_id, f"seed {SEED}")
            assert value not in n.log_path.read_text(errors="replace"), n.node_id
        assert WARNING not in n.log_path.read_text(errors="replace")


def test_without_a_cluster_key_the_start_up_log_warns(tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    value = f"plain-{rng.getrandbits(64):016x}-value"
    node = single_node(tmp_path, extra=["--snapshot-threshold", "4", "--snapshot-interval", "0"])
    node.start().wait_ready(WAIT)
    try:
        r = node.req("POST", "/api/v1/secrets", {"name": "db", "data": {"P": value}})
        assert r.status == 201, r.body
        assert _values(node, "db") == {"P": value}
        r = node.req("GET", "/api/v1/secrets/db")
        assert r.json()["encrypted"] is False
    finally:
        node.stop()
    log = node.log_path.read_text(errors="replace")
    assert log.count(WARNING) == 1, log[-2000:]
    assert value not in log
    # the control for the keyed test: unencrypted, the grep does find the value
    assert _files_holding(node.data_dir, value.encode()), "plain value not found on disk"
