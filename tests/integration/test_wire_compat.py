"""A rolling upgrade, at wire level, with three real nodes (issue 13 item 5).

n2 pretends to speak a newer minor wire version: the test-only fault layer
(`transport/faults.py`, rule ``wire``) rewrites every frame it sends to carry ``m: 1`` and
fields no node knows, and sends a message of an unknown type after every fifth frame. n1 and
n3 run today's code. The cluster must keep electing (also with n2 as leader) and committing,
the current nodes must count n2's unknown type in
``prisn_peer_messages_dropped_total{reason="unknown_type"}`` and nothing as malformed, and
every node must show the version each peer speaks in ``prisn_peer_wire_version``.

The codec-level half is tests/unit/test_wire_compat.py. On the old codec this test fails: n1
and n3 refuse every frame of n2 (unknown fields), so n2 never takes part.
"""

from __future__ import annotations

import json
import re

from tests.helpers import PROMTOOL, promtool_check
from tests.procs import ServerProc, cluster_node, leader_of, wait_for

RULES = {"seed": 1, "links": [
    {"src": "n2", "dst": "*",
     "wire": {"minor": 1, "extra": {"x_new": [1, "a", {"k": None}], "x_flag": True},
              "unknown_every": 5}},
]}


def metric(node: ServerProc, name: str, **labels: str) -> float | None:
    """The value of the series `name{labels...}` (labels matched as a subset), or None."""
    text = node.req("GET", "/metrics", timeout=5).body.decode()
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None


def create(node: ServerProc, name: str) -> int:
    return node.req("POST", "/api/v1/deployments", {"name": name, "source": "x"},
                    headers={"Idempotency-Key": name}, timeout=20).status


def test_a_node_of_a_newer_minor_sits_in_a_cluster_of_current_nodes(tmp_path):
    control = tmp_path / "faults.json"
    control.write_text(json.dumps(RULES))
    env = {"PRISN_TEST_FAULTS": str(control)}

    def start(n: ServerProc) -> ServerProc:
        n.env.update(env)
        return n.start()

    n1 = start(cluster_node(tmp_path, "n1", bootstrap=True))
    nodes = [n1]
    try:
        n1.wait_ready(40)
        nodes.append(start(cluster_node(tmp_path, "n2", peers=[n1.raft_addr])))
        nodes.append(start(cluster_node(tmp_path, "n3", peers=[n1.raft_addr,
                                                              nodes[1].raft_addr])))
        n1, n2, n3 = nodes
        for n in nodes:
            n.wait_ready(60)
        wait_for(lambda: all(sum(x["state"] in ("leader", "follower") for x in
                                 n.status()["nodes"]) == 3 for n in nodes), 60, "three voters")

        # committing, through every node (n2's forwards carry the extra fields)
        for i, n in enumerate(nodes):
            assert create(n, f"w{i}") == 201, n.node_id
        # electing: n2 leads (its AppendEntries and votes are rewritten), then n3
        for target in (n2, n3):
            assert target.req("POST", "/api/v1/cluster/election").status == 202
            wait_for(lambda t=target: leader_of(nodes, 30) is t, 60,
                     f"{target.node_id} leads")
            for n in nodes:
                assert create(n, f"{target.node_id}-{n.node_id}") == 201
        for n in nodes:
            wait_for(lambda n=n: n.req("GET", "/api/v1/deployments/n3-n3").status == 200,
                     30, f"{n.node_id} applied everything")

        # n1 and n3 dropped n2's unknown type as such, and nothing as malformed
        for n in (n1, n3):
            wait_for(lambda n=n: (metric(n, "prisn_peer_messages_dropped_total",
                                         reason="unknown_type") or 0) > 0, 30,
                     f"{n.node_id} counts the unknown type")
            assert metric(n, "prisn_peer_messages_dropped_total", reason="malformed") == 0
            assert metric(n, "prisn_peer_wire_version", peer="n2", version="1.1") == 1
        assert metric(n1, "prisn_peer_wire_version", peer="n3", version="1.0") == 1
        assert metric(n2, "prisn_peer_wire_version", peer="n1", version="1.0") == 1
        assert metric(n2, "prisn_peer_messages_dropped_total", reason="unknown_type") in (None, 0)
        if PROMTOOL is not None:  # the new series pass the exposition lint
            promtool_check(n1.req("GET", "/metrics", timeout=5).body.decode())
        # the rewrite really ran on n2's links (the fault layer's own counts)
        def unknown_sent() -> int:
            return sum(json.loads(p.read_text())["unknown"]
                       for p in (tmp_path / "faults.json.stats").glob("n2__*.json"))

        wait_for(lambda: unknown_sent() > 0, 30, "n2's fault layer sent unknown types")
        assert all(n.alive() for n in nodes)
    finally:
        for n in nodes:
            n.stop()
