"""Bad bytes on the Raft port of a live cluster: dropped and counted, nothing changes."""

from __future__ import annotations

import os
import random

import cbor2
import pytest
import zmq

from prisn.fsm.commands import encode_entry
from prisn.messages import AppendEntries, ForwardPropose, ForwardRequest, Propose, VoteRequest
from tests.procs import leader_of as _leader_of
from tests.procs import start_cluster, wait_for
from transport.codec import encode

FAST = ["--write-timeout", "2s"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    nodes = start_cluster(tmp_path_factory.mktemp("garbage"), FAST)
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def _blast(addr: str, frames: list[bytes]) -> None:
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, 2000)
        s.connect(f"tcp://{addr}")
        for f in frames:
            s.send(f)
        s.close()  # linger: flush before the context goes
    finally:
        ctx.term()


def test_garbage_and_forged_messages_change_nothing(cluster):
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    leader = _leader_of(cluster)
    before = {n.node_id: n.status() for n in cluster}
    term = before[leader.node_id]["term"]
    cid = before[leader.node_id]["cluster_id"]
    frames = [rng.randbytes(rng.randrange(0, 300)) for _ in range(200)]
    frames += [b"", b"\xff" * 64, cbor2.dumps({"v": 1, "t": "raft.append"}),
               cbor2.dumps([1, 2, 3]), cbor2.dumps({"v": 99, "t": "raft.vote"})]
    # a well-formed local message type arriving from outside: never reaches the core
    frames.append(encode(Propose(src="x", dst="raft", rid=1, data=b"evil")))
    # peer messages of another cluster, with a huge term: refused by the cluster-id check
    frames.append(encode(AppendEntries(src="intruder", dst="", cluster="not-" + cid,
                                       term=term + 1000, prev_index=0, prev_term=0,
                                       entries=[[1, term + 1000, 0, b"evil"]], commit=1)))
    frames.append(encode(VoteRequest(src="intruder", dst="", cluster="not-" + cid,
                                     term=term + 1000, last_index=10**9, last_term=10**9)))
    for n in cluster:
        _blast(n.raft_addr, frames)
    # the cluster still commits and nothing moved the term or leader
    r = leader.req("POST", "/api/v1/deployments", {"name": "after-garbage", "source": "x"})
    assert r.status == 201, f"seed {seed}: {r.body}"
    target = leader.status()["commit_index"]
    for n in cluster:
        assert n.alive(), f"seed {seed}: {n.node_id} died: {n.tail()}"
        wait_for(lambda n=n: n.status()["applied_index"] >= target, 10, f"{n.node_id} applied")
        st = n.status()
        assert st["term"] == term and st["leader"] == leader.node_id, f"seed {seed}: {st}"
        assert st["cluster_id"] == cid
        assert n.req("GET", "/api/v1/deployments/after-garbage").status == 200
        # the refusals were counted where an operator can see them
        metrics = n.req("GET", "/metrics").body.decode()
        wait_for(lambda n=n: _dropped(n.req("GET", "/metrics").body.decode()) > 0, 10,
                 f"{n.node_id} counts dropped peer messages")
        assert "prisn_peer_messages_dropped_total" in metrics


def _dropped(metrics: str) -> float:
    """Sum of prisn_peer_messages_dropped_total over its reasons."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("prisn_peer_messages_dropped_total{"))


def test_a_forward_from_a_non_member_is_dropped(cluster):
    """Issue 17 item 2: on an unkeyed peer port, a well-formed `raft.forward` of the right
    cluster and term from a node that is not a voter is dropped and counted; the leader
    appends nothing (its commit index does not move) and the cluster still takes writes."""
    leader = _leader_of(cluster)
    st = leader.status()
    data = encode_entry("intruder", 1, {"v": 1, "op": "delete", "key": "k", "ts": 0,
                                        "ns": "default", "name": "victim"})
    frames = [encode(ForwardPropose(src="intruder", dst=leader.node_id,
                                    cluster=st["cluster_id"], term=st["term"], rid=7,
                                    data=data)),
              encode(ForwardRequest(src="intruder", dst=leader.node_id,
                                    cluster=st["cluster_id"], term=st["term"], rid=8,
                                    op="transfer", node_id="intruder", addr=""))]
    _blast(leader.raft_addr, frames)
    wait_for(lambda: _reason(leader, "forward_from_non_voter") >= 2, 10,
             "the leader counts the refused forwards")
    after = leader.status()
    assert after["commit_index"] == st["commit_index"] and after["term"] == st["term"]
    assert after["leader"] == leader.node_id
    r = leader.req("POST", "/api/v1/deployments", {"name": "after-forward", "source": "x"})
    assert r.status == 201, r.body


def _reason(node, reason: str) -> float:
    text = node.req("GET", "/metrics").body.decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("prisn_peer_messages_dropped_total{")
               and f'reason="{reason}"' in line)
