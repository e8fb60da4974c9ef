"""Real three-node clusters of `prisn server` processes on loopback (issue: clustering)."""

from __future__ import annotations

import re
import shutil
import signal
import time

import pytest

from tests.procs import (
    ServerProc,
    cluster_node,
    free_port,
    leader_of,
    start_cluster,
    wait_for,
)

FAST = ["--write-timeout", "2s"]


_leader_of = leader_of


def _applied_everywhere(nodes: list[ServerProc], index: int) -> None:
    for n in nodes:
        wait_for(lambda n=n: n.status()["applied_index"] >= index, 15,
                 f"{n.node_id} applied {index}")


def _quick_start(tmp_path, extra: list[str] | None = None) -> list[ServerProc]:
    return start_cluster(tmp_path, FAST + (extra or []))


@pytest.fixture
def cluster(tmp_path):
    nodes = _quick_start(tmp_path)
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def _remove(via: ServerProc, node_id: str):
    """DELETE a member, retrying the documented 409 "configuration change in progress" (the
    last joiner's promotion may not have committed yet right after formation)."""
    def attempt():
        r = via.req("DELETE", f"/api/v1/cluster/nodes/{node_id}")
        return None if r.status == 409 and b"in progress" in r.body else r
    return wait_for(attempt, 10, f"removal of {node_id} past a change in progress")


def _create(node: ServerProc, name: str, **kw) -> int:
    return node.req("POST", "/api/v1/deployments", {"name": name, "source": "x"}, **kw).status


def test_quick_start_status_forwarding_and_strong_reads(cluster):
    n1, n2, n3 = cluster
    leader = _leader_of(cluster)
    for n in cluster:
        st = n.status()
        assert st["leader"] == leader.node_id and st["healthy"] is True
        assert {x["id"] for x in st["nodes"]} == {"n1", "n2", "n3"}
        assert {x["address"] for x in st["nodes"]} == {n1.raft_addr, n2.raft_addr, n3.raft_addr}
        assert st["cluster_id"] == n1.status()["cluster_id"] != ""
        assert set(st) >= {"term", "commit_index", "applied_index", "node_id"}
    follower = next(n for n in cluster if n is not leader)
    r = follower.req("POST", "/api/v1/deployments", {"name": "fw", "source": "x"})
    assert r.status == 201 and r.headers["x-prisn-node"] == follower.node_id
    assert r.headers["x-prisn-leader"] == leader.node_id
    for n in cluster:  # a strong read anywhere sees the acknowledged write at once
        r = n.req("GET", "/api/v1/deployments/fw", headers={"X-Prisn-Consistency": "strong"})
        assert r.status == 200, (n.node_id, r.body)
    h = follower.req("GET", "/api/v1/cluster/health")
    assert h.status == 200 and h.json()["healthy"] is True
    metrics = leader.req("GET", "/metrics").body.decode()
    assert "raft_state 2.0" in metrics and "raft_peers 2.0" in metrics
    assert "raft_replication_lag_seconds{peer=" in metrics
    # issue 12 item 11: a follower exports its own lag behind the leader (peer = its id)
    fm = follower.req("GET", "/metrics").body.decode()
    pat = r'^raft_replication_lag_seconds\{peer="' + follower.node_id + r'"\} (\S+)$'
    m = re.search(pat, fm, re.M)
    assert m and 0 <= float(m.group(1)) < 30, fm
    health = follower.req("GET", "/api/v1/cluster/health").json()
    me = next(x for x in health["nodes"] if x["id"] == follower.node_id)
    assert me["lag_seconds"] is not None and me["lag_seconds"] >= 0


def test_leader_sigkill_failover_and_rejoin(cluster):
    leader = _leader_of(cluster)
    assert _create(leader, "before") == 201
    leader.kill(signal.SIGKILL)
    leader.wait_exit()
    survivors = [n for n in cluster if n is not leader]
    new_leader = wait_for(lambda: (lambda s: s["leader"] not in ("", None, leader.node_id)
                                   and s["leader"])(survivors[0].status()), 10, "new leader")
    assert new_leader != leader.node_id
    assert _create(survivors[0], "after") == 201
    st = survivors[1].status()
    assert any(x["id"] == leader.node_id for x in st["nodes"])
    leader.restart().wait_ready(30)  # same command line, --bootstrap included for n1
    idx = survivors[0].status()["commit_index"]
    _applied_everywhere(cluster, idx)
    for name in ("before", "after"):
        assert leader.req("GET", f"/api/v1/deployments/{name}").status == 200
    assert len({n.status()["cluster_id"] for n in cluster}) == 1


def test_forced_election_and_removal(cluster):
    leader = _leader_of(cluster)
    target = next(n for n in cluster if n is not leader)
    r = target.req("POST", "/api/v1/cluster/election")
    assert r.status == 202
    wait_for(lambda: target.status()["leader"] == target.node_id, 10, "target leads")
    assert _create(target, "x1") == 201
    victim = next(n for n in cluster if n is not target)
    assert leader.req("DELETE", "/api/v1/cluster/nodes/nope").status == 404
    r = _remove(leader, victim.node_id)
    assert r.status == 204, r.body
    rest = [n for n in cluster if n is not victim]
    for n in rest:
        wait_for(lambda n=n: {x["id"] for x in n.status()["nodes"]} ==
                 {m.node_id for m in rest}, 10, "membership without victim")
    assert _create(rest[0], "x2") == 201
    metrics = target.req("GET", "/metrics").body.decode()
    assert "raft_peers 1.0" in metrics


def test_remove_leader_hands_over(cluster):
    leader = _leader_of(cluster)
    other = next(n for n in cluster if n is not leader)
    r = _remove(other, leader.node_id)
    assert r.status == 204, r.body
    rest = [n for n in cluster if n is not leader]
    wait_for(lambda: all({x["id"] for x in n.status()["nodes"]} == {m.node_id for m in rest}
                         for n in rest), 15, "leader removed")
    new = _leader_of(rest)
    assert new is not leader and _create(new, "y") == 201


def test_quorum_loss_503_and_stale_reads(cluster):
    leader = _leader_of(cluster)
    assert _create(leader, "kept") == 201
    others = [n for n in cluster if n is not leader]
    for n in others:
        n.kill(signal.SIGKILL)
        n.wait_exit()
    t0 = time.monotonic()
    r = leader.req("POST", "/api/v1/deployments", {"name": "lost", "source": "x"}, timeout=10)
    assert r.status == 503, r.body
    assert time.monotonic() - t0 < 8
    body = r.json()
    assert set(body) == {"error", "message"} and "quorum" in body["message"]
    assert "may still commit" in body["message"]
    assert leader.req("GET", "/api/v1/deployments/kept").status == 200  # stale read served
    strong = leader.req("GET", "/api/v1/deployments/kept",
                        headers={"X-Prisn-Consistency": "strong"}, timeout=15)
    assert strong.status == 503
    wait_for(lambda: leader.req("GET", "/api/v1/cluster/health").status == 503, 10,
             "health reports the lost quorum")


def test_full_restart_loses_nothing(cluster):
    leader = _leader_of(cluster)
    for i in range(30):
        assert _create(cluster[i % 3], f"r{i}") == 201
    # strong: the writes were acknowledged by all three nodes, not all by the leader
    before = leader.req("GET", "/api/v1/deployments?limit=1000",
                        headers={"X-Prisn-Consistency": "strong"}).json()["items"]
    for n in cluster:
        assert n.stop() == 0
    for n in cluster:
        n.restart()
    for n in cluster:
        n.wait_ready(30)
    new_leader = _leader_of(cluster)
    after = new_leader.req("GET", "/api/v1/deployments?limit=1000",
                           headers={"X-Prisn-Consistency": "strong"}).json()["items"]
    assert after == before


def test_sigterm_on_leader_hands_over(cluster):
    leader = _leader_of(cluster)
    rest = [n for n in cluster if n is not leader]
    assert leader.stop() == 0
    new = _leader_of(rest)
    assert new is not leader and _create(new, "after-term") == 201


def test_static_peers_form(tmp_path):
    ports = [free_port() for _ in range(3)]
    peers = [f"127.0.0.1:{p}" for p in ports]
    nodes = [cluster_node(tmp_path, f"s{i}", peers=peers, raft_port=ports[i], extra=FAST)
             for i in range(3)]
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready(30)
        wait_for(lambda: all(len([x for x in n.status()["nodes"] if x["state"] in
                                  ("leader", "follower")]) == 3 for n in nodes), 30,
                 "three voters")
        leader = _leader_of(nodes)
        assert _create(leader, "s") == 201
        assert len({n.status()["cluster_id"] for n in nodes}) == 1
        # a restart with the same command resumes; it never founds a second cluster
        for n in nodes:
            n.stop()
        for n in nodes:
            n.restart()
        for n in nodes:
            n.wait_ready(30)
        assert len({n.status()["cluster_id"] for n in nodes}) == 1
        assert _leader_of(nodes).req("GET", "/api/v1/deployments/s").status == 200
    finally:
        for n in nodes:
            n.stop()


def test_force_new_cluster_after_total_failure(tmp_path):
    nodes = _quick_start(tmp_path)
    try:
        leader = _leader_of(nodes)
        assert _create(leader, "survivor") == 201
        _applied_everywhere(nodes, leader.status()["commit_index"])
        old_cluster = leader.status()["cluster_id"]
        for n in nodes:
            n.kill(signal.SIGKILL)
            n.wait_exit()
        n1, n2, _ = nodes
        n1.args = [a for a in n1.args if a != "--bootstrap"] + ["--force-new-cluster"]
        n1.restart().wait_ready(30)
        st = n1.status()
        assert st["leader"] == "n1" and st["cluster_id"] != old_cluster
        assert [x["id"] for x in st["nodes"]] == ["n1"]
        assert n1.req("GET", "/api/v1/deployments/survivor").status == 200
        assert _create(n1, "new-era") == 201
        # add n2 back "as in Add a Node": a fresh data dir and --peers
        shutil.rmtree(n2.data_dir)
        i = n2.args.index("--peers")
        n2.args[i + 1] = n1.raft_addr
        n2.restart().wait_ready(30)
        wait_for(lambda: n2.req("GET", "/api/v1/deployments/new-era").status == 200, 15,
                 "n2 caught up")
        assert n2.status()["cluster_id"] == n1.status()["cluster_id"]
        # the flag left in place: a restart resumes the new cluster, it does not found another
        new_cluster = n1.status()["cluster_id"]
        assert n1.stop() == 0
        n1.restart().wait_ready(30)
        assert n1.status()["cluster_id"] == new_cluster
        wait_for(lambda: len([x for x in n1.status()["nodes"]
                              if x["state"] in ("leader", "follower")]) == 2, 20, "two voters")
        assert _create(n1, "after-restart") == 201
    finally:
        for n in nodes:
            n.stop()
