"""Peer security with real processes: a cluster keyed with `prisn keygen` forms, elects and
replicates (joins through --peers work); a node with another key or none cannot join nor
disturb it; raw ZeroMQ sockets sending garbage or a forged, well-formed AppendEntries with the
right cluster id change nothing; every refusal is counted in `prisn_peer_auth_failures_total`.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from prisn.fsm.commands import CommandFactory, encode_entry
from prisn.messages import AppendEntries, EntryKind, JoinRequest, TimeoutNow, VoteRequest
from tests.procs import ServerProc, cluster_node, leader_of, start_cluster, wait_for
from transport.codec import encode

pytestmark = pytest.mark.timeout(180)

# A 300 ms election timeout: the quiet windows below span several of them.
TIMING = ["--write-timeout", "3s", "--heartbeat-interval", "50ms", "--election-timeout", "300ms"]
QUIET_WINDOW = 2.0  # seconds of unchanged term/leader/commit (about 6 election timeouts)

SEED = int(os.environ.get("PRISN_TEST_SEED", "0")) or random.SystemRandom().randrange(1, 2**32)


def keygen(path: Path) -> Path:
    """`prisn keygen --out path`, the way an operator makes the key."""
    r = subprocess.run([sys.executable, "-m", "prisn.cli", "keygen", "--out", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    return {"cluster": keygen(d / "cluster.key"), "other": keygen(d / "other.key")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, keys) -> Iterator[list[ServerProc]]:
    nodes = start_cluster(tmp_path_factory.mktemp("keyed"),
                          TIMING + ["--cluster-key-file", str(keys["cluster"])])
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def refusals(node: ServerProc) -> dict[str, float]:
    """`prisn_peer_auth_failures_total` of `node` by reason."""
    body = node.req("GET", "/metrics", timeout=5).body.decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^prisn_peer_auth_failures_total\{reason="(\w+)"\} (\S+)$', body, re.M)}


def total_refusals(nodes: list[ServerProc]) -> float:
    return sum(sum(refusals(n).values()) for n in nodes)


def snapshot(nodes: list[ServerProc]) -> dict[str, tuple]:
    """What must not move: term, leader, commit index, members, deployments."""
    out = {}
    for n in nodes:
        st = n.status()
        deps = n.req("GET", "/api/v1/deployments?limit=1000").json()
        out[n.node_id] = (st["term"], st["leader"], st["commit_index"], st["cluster_id"],
                          sorted((x["id"], x["address"]) for x in st["nodes"]),
                          sorted(d["name"] for d in deps["items"]))
    return out


def assert_quiet(nodes: list[ServerProc], before: dict[str, tuple], what: str) -> None:
    """Poll through QUIET_WINDOW: every sample equals `before` and every node lives."""
    deadline = time.monotonic() + QUIET_WINDOW
    while True:
        for n in nodes:
            assert n.alive(), f"{what}: {n.node_id} died: {n.tail()}"
        now = snapshot(nodes)
        assert now == before, f"{what} (seed {SEED}): changed from {before} to {now}"
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)


def settled(nodes: list[ServerProc]) -> dict[str, tuple]:
    """A snapshot once every node has applied what the leader committed."""
    leader = leader_of(nodes)
    target = leader.status()["commit_index"]
    for n in nodes:
        wait_for(lambda n=n: n.status()["applied_index"] >= target, 15, f"{n.node_id} applied")
    return snapshot(nodes)


def test_keyed_cluster_forms_elects_and_replicates(cluster):
    leader = leader_of(cluster)
    r = leader.req("POST", "/api/v1/deployments", {"name": "keyed", "source": "app.py"})
    assert r.status == 201, r.body
    target = leader.status()["commit_index"]
    for n in cluster:
        wait_for(lambda n=n: n.status()["applied_index"] >= target, 15, f"{n.node_id} applied")
        assert n.req("GET", "/api/v1/deployments/keyed").status == 200
        assert refusals(n) == {"key": 0.0, "handshake": 0.0}  # members are never refused
        log = n.log_path.read_text(errors="replace")
        assert "CurveZMQ" in log and "unauthenticated" not in log, n.tail()
    # a follower forwards a write to the leader over the encrypted link
    follower = next(n for n in cluster if n is not leader)
    r = follower.req("POST", "/api/v1/deployments", {"name": "keyed-fw", "source": "x"})
    assert r.status == 201, r.body


@pytest.mark.parametrize("key", ["other", None], ids=["wrong-key", "no-key"])
def test_a_node_without_the_key_cannot_join_or_disturb(cluster, keys, tmp_path, key):
    before = settled(cluster)
    refused = total_refusals(cluster)
    extra = TIMING + (["--cluster-key-file", str(keys[key])] if key else [])
    intruder = cluster_node(tmp_path, "n9", peers=[n.raft_addr for n in cluster], extra=extra)
    intruder.start()
    try:
        # its join requests are refused at the handshake, and counted
        wait_for(lambda: total_refusals(cluster) > refused, 15, "refusals counted")
        assert_quiet(cluster, before, f"a node with {key or 'no'} key")
        assert intruder.alive(), intruder.tail()
        st = intruder.status()
        assert not st["leader"] and not intruder.ready()
        assert st["cluster_id"] != before["n1"][3]
        if key is None:
            assert "peer traffic is unauthenticated and unencrypted" in intruder.tail(200)
    finally:
        intruder.stop()
    # it never reached any core: nothing about n9 in the members, and the cluster still writes
    leader = leader_of(cluster)
    r = leader.req("POST", "/api/v1/deployments", {"name": f"after-{key or 'none'}",
                                                  "source": "x"})
    assert r.status == 201, r.body


def _forged_frames(cid: str, st: dict, leader: str, follower: str,
                   rng: random.Random) -> list[bytes]:
    """Well-formed peer messages of this very cluster that, were they admitted, would move
    the term, append and commit a deployment, or start an election."""
    term, commit = st["term"], st["commit_index"]
    cmd = CommandFactory().create({"name": "forged", "source": "evil.py"})
    entry = [commit + 1, term + 1000, int(EntryKind.COMMAND), encode_entry(leader, 1, cmd)]
    frames = [rng.randbytes(rng.randrange(0, 300)) for _ in range(50)]
    frames += [
        encode(AppendEntries(src=leader, dst="", cluster=cid, term=term + 1000,
                             prev_index=commit, prev_term=term, entries=[entry],
                             commit=commit + 1)),
        encode(AppendEntries(src=leader, dst="", cluster=cid, term=term, prev_index=commit,
                             prev_term=term, entries=[[commit + 1, term, 0, entry[3]]],
                             commit=commit + 1)),
        encode(VoteRequest(src=follower, dst="", cluster=cid, term=term + 1000,
                           last_index=10**9, last_term=term + 1000)),
        encode(TimeoutNow(src=leader, dst="", cluster=cid, term=term)),
        encode(JoinRequest(src="n9", dst="", cluster=cid, term=term, node_id="n9",
                           addr="127.0.0.1:9")),
    ]
    return frames


def _raw_push(ctx: zmq.Context, addr: str, frames: list[bytes]) -> zmq.Socket:
    """A plain ZeroMQ PUSH queueing `frames` for `addr` (it keeps retrying the handshake)."""
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 10_000)
    s.connect(f"tcp://{addr}")
    for f in frames:
        s.send(f, zmq.NOBLOCK)
    return s


def test_raw_sockets_with_garbage_and_forged_append_entries_change_nothing(cluster, keys):
    rng = random.Random(SEED)
    before = settled(cluster)
    leader = leader_of(cluster)
    follower = next(n for n in cluster if n is not leader)
    st = leader.status()
    frames = _forged_frames(st["cluster_id"], st, leader.node_id, follower.node_id, rng)
    counts = {n.node_id: sum(refusals(n).values()) for n in cluster}
    ctx = zmq.Context()
    socks = []
    try:
        # plaintext PUSH sockets: the frames wait for a handshake that never succeeds
        socks += [_raw_push(ctx, n.raft_addr, frames) for n in cluster]
        # and a CURVE client with a key pair of its own (it does not know the server key)
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, 0)
        pub, sec = zmq.curve_keypair()
        s.curve_serverkey, s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()[0], pub, sec
        s.connect(f"tcp://{follower.raft_addr}")
        for f in frames:
            s.send(f, zmq.NOBLOCK)
        socks.append(s)
        for n in cluster:
            wait_for(lambda n=n: sum(refusals(n).values()) > counts[n.node_id], 15,
                     f"{n.node_id} counted a refusal")
        assert_quiet(cluster, before, "garbage and forged frames")
    finally:
        for s in socks:
            s.close(0)
        ctx.term()
    for n in cluster:
        assert n.req("GET", "/api/v1/deployments/forged").status == 404


def test_server_refuses_a_malformed_key_file_with_exit_2(tmp_path):
    bad = tmp_path / "short.key"
    bad.write_text("prisn-cluster-key v1\nAAAA\n")
    node = cluster_node(tmp_path, "bad", bootstrap=True,
                        extra=["--cluster-key-file", str(bad)]).start()
    assert node.wait_exit(30) == 2, node.tail()
    lines = [ln for ln in node.tail().splitlines() if "error" in ln]
    assert lines and lines[-1].startswith("prisn: error: --cluster-key-file"), node.tail()
    assert "3 bytes, expected 32" in lines[-1]
