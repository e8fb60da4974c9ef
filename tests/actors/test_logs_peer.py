"""Instance output read through another node (issue 14 part 6), with real parts: two raft
actor shells (fake cores, real threads, real ZeroMQ TCP peer sockets and replicators), each
node's real `RaftNodeClient` (API bridge), real log files in the runner's layout, and the real
HTTP app of node A. A placement says the instance runs on node B: `GET .../logs` asked of A
returns the bytes of B's file, fetched over the peer link; a member that does not answer is
a 503 naming it. (The server does not wire the runner and scheduler yet, so the placement is
applied to A's store in process.)"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq
from tornado.httpclient import AsyncHTTPClient

from actors.api.app import make_app, make_server
from actors.api.bridge import RaftNodeClient
from actors.api.errors import Unavailable
from actors.raft import RaftActor
from actors.runner import instance_dir
from prisn.fsm.placements import batch_command
from prisn.messages import LogsReply, LogsRequest, Msg, Role
from prisn.raft.boot import Membership
from prisn.workloads.model import Slot
from prisn.workloads.scheduler import Place
from tests.feeder import Feeder
from tests.helpers import free_port, unique_id
from transport.codec import encode

pytestmark = pytest.mark.timeout(120)

CLUSTER = "c-logs"
INSTANCE = "default.web.1.2"  # web/1, placed second (epoch 2): the runner's id


@dataclass(frozen=True)
class Status:
    membership: Membership
    cluster_id: str = CLUSTER
    role: Role = Role.FOLLOWER
    leader_id: str = ""
    progress: dict = field(default_factory=dict)
    fatal: str = ""
    disk_error: str = ""


class Core:
    """Just enough of a core for the shell: a membership and nothing to step."""

    def __init__(self, membership: Membership) -> None:
        self.st = Status(membership)
        self.stepped: list[Msg] = []

    def startup(self) -> list[Msg]:
        return []

    def step(self, batch: list[Msg]) -> list[Msg]:
        self.stepped.extend(batch)
        return []

    def status(self) -> Status:
        return self.st

    def address_of(self, nid: str) -> str | None:
        return self.st.membership.address_of(nid)


@dataclass
class Node:
    nid: str
    raft: RaftActor
    core: Core
    client: RaftNodeClient
    data_dir: Path


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Node, Node, str, zmq.Context]]:
    """Nodes A and B (running), and C: a member whose address nobody listens on."""
    ctx = zmq.Context()
    a, b, c = (unique_id("logs", t) for t in "abc")
    addrs = {n: f"127.0.0.1:{free_port()}" for n in (a, b, c)}
    membership = Membership(cluster=CLUSTER, voters=addrs)
    nodes = []
    for nid in (a, b):
        core = Core(membership)
        raft = RaftActor(ctx, nid, core, listen_addr=addrs[nid])  # type: ignore[arg-type]
        raft.start()
        raft.started.wait(10)
        assert raft.failure is None
        store = Feeder().store
        client = RaftNodeClient(ctx, nid, store, raft_status=core.status,
                                raft_stats=lambda: None, boot_commit=0,
                                started_at=time.monotonic())
        client.log_dir = str(tmp_path / nid)
        nodes.append(Node(nid, raft, core, client, tmp_path / nid))
    try:
        yield nodes[0], nodes[1], c, ctx
    finally:
        for n in nodes:
            n.raft.stop()
        for n in nodes:
            n.raft.join(10)
        ctx.term()


def write_output(data_dir: Path, instance: str, chunks: dict[int, bytes],
                 stream: str = "output") -> None:
    """Files as the runner writes them: instances/<quoted id>/<stream>.<offset>.log
    (``output``: the mixed stream of older versions, read as stdout)."""
    d = instance_dir(data_dir, instance)
    d.mkdir(parents=True, exist_ok=True)
    for start, data in chunks.items():
        (d / f"{stream}.{start}.log").write_bytes(data)


def run(body: Any, *nodes: Node) -> None:
    async def main() -> None:
        for n in nodes:
            n.client.open()
        try:
            async with asyncio.timeout(60):
                await body()
        finally:
            for n in nodes:
                n.client.close()

    asyncio.run(main())


def test_logs_of_an_instance_on_node_b_are_read_through_node_a(pair) -> None:
    a, b, _c, _ctx = pair
    raw = b"listening on 8080\n" + bytes([0xff, 0xfe]) + b" bad utf-8\n"
    write_output(b.data_dir, INSTANCE, {0: b"old line\n", 9: raw})
    write_output(b.data_dir, INSTANCE, {0: b"Traceback\n"}, "stderr")
    os.makedirs(a.data_dir, exist_ok=True)  # A holds nothing for it
    f = Feeder(a.client.store)
    f.create(name="web", port=8080, replicas=2)
    f.run(batch_command([Place(Slot("default", "web", 0), a.nid, None),
                         Place(Slot("default", "web", 1), b.nid, None)], key="p1",
                        ts="2025-01-01T00:00:00.000Z"))
    got: dict[str, Any] = {}

    async def body() -> None:
        # the bridge: over the peer link, from an offset, a tail, and a bounded limit
        r = await a.client.read_logs(b.nid, INSTANCE, offset=None, tail=None,
                                     limit=1 << 20, timeout=20)
        assert (r.code, r.offset, r.next_offset, r.data) == (200, 0, 9 + len(raw),
                                                             b"old line\n" + raw)
        assert r.src == b.nid and r.instance == INSTANCE
        r = await a.client.read_logs(b.nid, INSTANCE, offset=None, tail=len(raw), limit=5,
                                     timeout=20)
        assert (r.offset, r.data) == (9, raw[:5])
        r = await a.client.read_logs(b.nid, INSTANCE, offset=None, tail=None,
                                     limit=1 << 20, timeout=20, stream="stderr")
        assert (r.code, r.data, r.next_offset) == (200, b"Traceback\n", 10)
        # the HTTP route of A
        app = make_app(a.client)
        server = make_server(app)
        port = free_port()
        server.listen(port, "127.0.0.1")
        http = AsyncHTTPClient()
        try:
            base = f"http://127.0.0.1:{port}/api/v1/deployments/web/logs"
            resp = await http.fetch(base + "?instance=1", raise_error=False)
            got["one"] = (resp.code, json.loads(resp.body))
            resp = await http.fetch(base + "?instance=default/web/1&offset=9&limit=17",
                                    raise_error=False)
            got["offset"] = (resp.code, json.loads(resp.body))
            resp = await http.fetch(base, raise_error=False)  # instance 0: on A, no file
            got["first"] = (resp.code, json.loads(resp.body))
            resp = await http.fetch(base + "?instance=7", raise_error=False)
            got["unplaced"] = (resp.code, json.loads(resp.body))
            resp = await http.fetch(base + "?limit=2000000", raise_error=False)
            got["limit"] = (resp.code, json.loads(resp.body))
            resp = await http.fetch(base + "?instance=1&stream=stderr", raise_error=False)
            got["stderr"] = (resp.code, json.loads(resp.body))
            resp = await http.fetch(base + "?instance=1&stream=all", raise_error=False)
            got["badstream"] = (resp.code, json.loads(resp.body))
        finally:
            server.stop()
            http.close()

    run(body, a, b)
    code, chunk = got["one"]
    assert code == 200, chunk
    assert chunk == {"instance": INSTANCE, "node": b.nid, "stream": "stdout", "offset": 0,
                     "next_offset": 9 + len(raw), "truncated": False,
                     "data": (b"old line\n" + raw).decode("utf-8", "replace")}
    assert "\ufffd" in chunk["data"]
    code, chunk = got["offset"]
    assert (code, chunk["offset"], chunk["next_offset"], chunk["data"]) == (
        200, 9, 26, "listening on 8080")
    code, chunk = got["first"]
    assert (code, chunk["instance"], chunk["node"], chunk["data"]) == (
        200, "default.web.0.1", a.nid, "")
    code, err = got["unplaced"]
    assert code == 404 and "instance 7 of deployment default/web" in err["message"]
    assert got["limit"][0] == 400 and "limit" in got["limit"][1]["message"]
    code, chunk = got["stderr"]
    assert (code, chunk["stream"], chunk["data"], chunk["next_offset"]) == (
        200, "stderr", "Traceback\n", 10)
    assert got["badstream"][0] == 400 and "stream" in got["badstream"][1]["message"]
    assert a.core.stepped == [] and b.core.stepped == []  # the raft cores never see them


def test_a_member_that_does_not_answer_is_named(pair) -> None:
    a, b, c, _ctx = pair
    errors: list[str] = []

    async def body() -> None:
        for node in (c, "not-a-member"):
            try:
                await a.client.read_logs(node, INSTANCE, offset=None, tail=None, limit=10,
                                         timeout=1.0)
            except Unavailable as e:
                errors.append(e.message)
        assert a.client.inflight == 0

    run(body, a, b)
    assert errors == [f"node {c} did not answer within 1s",
                      "node not-a-member is not a member of this cluster"]


def test_only_members_replies_to_our_asks_and_wellformed_requests_get_through(pair) -> None:
    """A reply to a request we did not make, a request claiming to come from a non-member
    or from another cluster, and a malformed one are dropped by B's raft shell (counted)."""
    a, b, c, ctx = pair
    write_output(b.data_dir, INSTANCE, {0: b"secret\n"})
    peer = ctx.socket(zmq.PUSH)  # an intruder on B's peer port (no CURVE in this test)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(f"tcp://{b.core.st.membership.address_of(b.nid)}")
    bad = [
        LogsRequest(src="intruder", dst=b.nid, cluster=CLUSTER, rid=1, instance=INSTANCE),
        LogsRequest(src=a.nid, dst=b.nid, cluster="other", rid=2, instance=INSTANCE),
        LogsRequest(src=a.nid, dst=b.nid, cluster=CLUSTER, rid=3, instance=INSTANCE,
                    limit=(1 << 20) + 1),
        LogsRequest(src=a.nid, dst=c, cluster=CLUSTER, rid=4, instance=INSTANCE),
        LogsReply(src=a.nid, dst=b.nid, cluster=CLUSTER, rid=5, data=b"x" * 10,
                  next_offset=3),
    ]
    before = b.raft._peer_dropped
    try:
        for m in bad:
            peer.send(encode(m))
        deadline = time.monotonic() + 20
        while b.raft._peer_dropped - before < len(bad):
            assert time.monotonic() < deadline, "B's shell did not drop them all"
            time.sleep(0.01)  # polling another thread's counter with a deadline
    finally:
        peer.close(0)
    assert b.core.stepped == []
