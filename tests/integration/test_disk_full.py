"""A full disk: writes fail with 507 and a clear message, the node keeps serving reads and
stays in its cluster, and it recovers by itself (no restart) once space is freed.

Each test mounts a small tmpfs as a node's data dir (root only; skipped cleanly elsewhere)
and puts a padding file on it first: deleting the padding is "the operator frees space".
The node's own log file stays outside the tmpfs.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.procs import ServerProc, cluster_node, leader_of, single_node, wait_for

BIG = "x" * (256 << 10)  # one write: a 256 KiB source
PAD = 2 << 20
DISK_MSG = "the log cannot be written: no space left on device"
FAST = ["--write-timeout", "3s"]


@contextmanager
def tmpfs(path: Path, size_mib: int) -> Iterator[Path]:
    """Mount a `size_mib` tmpfs at `path` with a 2 MiB padding file; skip if impossible."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        (path / "padding").write_bytes(b"\0" * PAD)
        yield path / "padding"
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def post(n: ServerProc, name: str, source: str = "x", timeout: float = 10.0):
    return n.req("POST", "/api/v1/deployments", {"name": name, "source": source},
                 headers={"Idempotency-Key": f"k-{name}"}, timeout=timeout)


def fill(n: ServerProc, via: ServerProc, prefix: str, limit: int = 80) -> tuple[list, list]:
    """Big writes through `via` until `n` answers 507 to a small write. Returns (names
    acknowledged 201, names answered 507)."""
    acked: list[str] = []
    refused: list[str] = []
    for i in range(limit):
        name = f"{prefix}{i}"
        r = post(via, name, BIG)
        if r.status == 201:
            acked.append(name)
        elif r.status == 507:
            refused.append(name)
            assert DISK_MSG in r.json()["message"], r.body
        else:
            assert r.status == 503, r.body  # a write in flight when the leader stepped down
        probe = post(n, f"{prefix}probe{i}")
        if probe.status == 507:
            refused.append(f"{prefix}probe{i}")
            body = probe.json()
            assert body["error"] and body["message"].startswith(DISK_MSG), body
            return acked, refused
        assert probe.status in (201, 503), probe.body
        if probe.status == 201:
            acked.append(f"{prefix}probe{i}")
    raise AssertionError(f"{n.node_id}'s disk never filled: {n.tail()}")


def applied_same(nodes: list[ServerProc], timeout: float = 30.0) -> None:
    def same() -> bool:
        sts = [n.status() for n in nodes]
        idx = {s["applied_index"] for s in sts}
        return len(idx) == 1 and all(s["commit_index"] == s["applied_index"] for s in sts)
    wait_for(same, timeout, "the same applied index everywhere")


@contextmanager
def cluster_with(tmp: Path, on_tmpfs: str, size_mib: int) -> Iterator[tuple[list, Path]]:
    """n1 bootstraps, n2 and n3 join; `on_tmpfs`'s data dir is a tmpfs."""
    n1 = cluster_node(tmp, "n1", bootstrap=True, extra=FAST)
    nodes = [n1]
    nodes.append(cluster_node(tmp, "n2", peers=[n1.raft_addr], extra=FAST))
    nodes.append(cluster_node(tmp, "n3", peers=[n1.raft_addr, nodes[1].raft_addr], extra=FAST))
    target = next(n for n in nodes if n.node_id == on_tmpfs)
    with tmpfs(target.data_dir, size_mib) as pad:
        try:
            for n in nodes:
                n.start()
                n.wait_ready(30)
            wait_for(lambda: all(sum(x["state"] in ("leader", "follower")
                                     for x in n.status()["nodes"]) == 3 for n in nodes),
                     30, "three voters")
            yield nodes, pad
        finally:
            for n in nodes:
                n.stop()


# --------------------------------------------------------------------------- (a) single node
def test_single_node_full_disk_507_reads_and_recovery(tmp_path):
    n = single_node(tmp_path, extra=FAST)
    with tmpfs(n.data_dir, 6) as pad:
        n.start().wait_ready()
        pid = n.proc.pid if n.proc else 0
        try:
            assert post(n, "small").status == 201
            assert "prisn_log_disk_errors_total 0.0" in n.req("GET", "/metrics").body.decode()
            acked, refused = fill(n, n, "big")
            acked.append("small")
            # reads and liveness go on; the node did not exit
            assert n.alive()
            assert n.req("GET", "/health").status == 200
            for name in acked:
                assert n.req("GET", f"/api/v1/deployments/{name}").status == 200, name
            r = post(n, "refused-again")
            assert r.status == 507 and DISK_MSG in r.json()["message"]
            refused.append("refused-again")
            text = n.req("GET", "/metrics").body.decode()
            assert "prisn_disk_error 1.0" in text
            errors = [ln for ln in text.splitlines()
                      if ln.startswith("prisn_log_disk_errors_total ")]
            assert errors and float(errors[0].split()[1]) >= 1, errors
            # the operator frees space: writes succeed again, same process
            pad.unlink()
            wait_for(lambda: post(n, "after", timeout=5).status == 201, 30,
                     "a write to succeed after freeing space")
            assert n.alive() and n.proc is not None and n.proc.pid == pid
            assert "prisn_disk_error 0.0" in n.req("GET", "/metrics").body.decode()
            for name in acked + ["after"]:
                assert n.req("GET", f"/api/v1/deployments/{name}").status == 200, name
            # a single voter drops what it could not persist: a 507 means "not applied"
            for name in refused:
                assert n.req("GET", f"/api/v1/deployments/{name}").status == 404, name
            assert "cannot be written" in n.tail(400) and "written again" in n.tail(400)
        finally:
            n.stop()


# --------------------------------------------------------------------------- (b) a follower
def test_follower_full_disk_cluster_keeps_committing_and_it_catches_up(tmp_path):
    with cluster_with(tmp_path, "n3", 6) as (nodes, pad):
        n3 = nodes[2]
        leader = leader_of(nodes)
        assert leader is not n3
        assert post(leader, "first").status == 201
        acked, _ = fill(n3, leader, "f")
        # 2 of 3 keep committing; the broken follower still serves reads and /health
        for i in range(5):
            assert post(leader, f"more{i}").status == 201
        assert post(n3, "via-n3").status == 507
        assert n3.req("GET", "/health").status == 200
        assert n3.req("GET", "/api/v1/deployments/first").status == 200
        assert leader_of(nodes) is leader  # it did not disturb the leader
        pad.unlink()
        applied_same(nodes)
        assert post(n3, "via-n3-after").status == 201
        for name in acked + ["first", "more4", "via-n3-after"]:
            assert n3.req("GET", f"/api/v1/deployments/{name}",
                          headers={"X-Prisn-Consistency": "strong"}).status == 200, name
        assert n3.alive()


# --------------------------------------------------------------------------- (c) the leader
def test_leader_full_disk_steps_down_and_rejoins(tmp_path):
    with cluster_with(tmp_path, "n1", 6) as (nodes, pad):
        n1 = nodes[0]
        assert leader_of(nodes) is n1  # the bootstrapping node leads
        acked, _ = fill(n1, n1, "l")
        others = nodes[1:]
        # it stepped down: another node leads within a few election timeouts
        new = leader_of(others, timeout=5)
        assert new is not n1
        wait_for(lambda: n1.status()["leader"] == new.node_id, 5, "n1 to follow the new leader")
        health = n1.req("GET", "/health")
        assert health.status == 200 and health.json()["state"] == "follower"
        for i in range(5):
            assert post(others[i % 2], f"after{i}").status == 201
        assert post(n1, "via-n1").status == 507
        pad.unlink()
        applied_same(nodes)
        assert leader_of(nodes) is new  # it rejoined as a follower
        assert post(n1, "via-n1-after").status == 201
        for name in acked + ["after4", "via-n1-after"]:
            assert n1.req("GET", f"/api/v1/deployments/{name}").status == 200, name
        assert n1.alive()
