"""The peer log messages (`logs.request` / `logs.reply`, issue 14 part 6): their codec round
trip, the bounds `prisn.workloads.logfetch` puts on them (what the raft shell drops), garbage
frames dropped by the decoder, and the JSON chunk shape (invalid UTF-8 replaced)."""

from __future__ import annotations

import random

import cbor2
import pytest

from prisn.messages import PEER_TYPES, WIRE_VERSION, LogsReply, LogsRequest
from prisn.raft.boot import Membership
from prisn.workloads.logfetch import (
    MAX_LOG_REPLY,
    chunk_json,
    find_instance,
    peer_error,
    reply_error,
    request_error,
    runner_id,
)
from prisn.workloads.model import Placement, Slot
from transport.codec import Decoder, decode, encode

MEMBERS = Membership(cluster="c", voters={"a": "h:1", "b": "h:2"}).members()


def req(**kw: object) -> LogsRequest:
    base: dict = {"src": "a", "dst": "b", "cluster": "c", "rid": 7, "instance": "default/web/0"}
    return LogsRequest(**{**base, **kw})  # type: ignore[arg-type]


def rep(**kw: object) -> LogsReply:
    base: dict = {"src": "b", "dst": "a", "cluster": "c", "rid": 7, "instance": "default/web/0",
                  "offset": 10, "next_offset": 13, "data": b"abc"}
    return LogsReply(**{**base, **kw})  # type: ignore[arg-type]


def test_both_are_peer_messages_and_round_trip() -> None:
    assert {"logs.request", "logs.reply"} <= PEER_TYPES
    for m in (req(), req(offset=5, tail=-1, limit=1), req(stream="stderr"), rep(), rep(code=503, reason="busy",
                                                                  data=b"", next_offset=10),
              rep(data=b"\x00\xff" * 1000, next_offset=2010, truncated=True)):
        assert decode(encode(m)) == m
    full = rep(data=b"x" * MAX_LOG_REPLY, next_offset=10 + MAX_LOG_REPLY)
    assert decode(encode(full)) == full and reply_error(full) is None


@pytest.mark.parametrize("m,why", [
    (req(instance=""), "instance"),
    (req(instance="x" * 201), "instance"),
    (req(offset=-2), "offset"),
    (req(tail=-5), "offset and tail"),
    (req(limit=0), "limit"),
    (req(limit=MAX_LOG_REPLY + 1), "limit"),
    (req(stream="both"), "stream"),
])
def test_request_bounds(m: LogsRequest, why: str) -> None:
    assert why in (request_error(m) or "")
    assert peer_error(m, me="b", cluster="c", members=MEMBERS) == request_error(m)


@pytest.mark.parametrize("m,why", [
    (rep(code=0), "code"),
    (rep(code=600), "code"),
    (rep(reason="r" * 1025), "too long"),
    (rep(data=b"x" * (MAX_LOG_REPLY + 1), next_offset=10 + MAX_LOG_REPLY + 1), "data over"),
    (rep(next_offset=12), "offsets"),
    (rep(offset=-1, next_offset=2), "offsets"),
])
def test_reply_bounds(m: LogsReply, why: str) -> None:
    assert why in (reply_error(m) or "")
    assert peer_error(m, me="a", cluster="c", members=MEMBERS) == reply_error(m)


def test_only_between_members_of_this_cluster_for_this_node() -> None:
    ok = req()
    assert peer_error(ok, me="b", cluster="c", members=MEMBERS) is None
    assert peer_error(ok, me="b", cluster="other", members=MEMBERS) == "wrong cluster"
    assert peer_error(ok, me="b", cluster="", members=MEMBERS) == "wrong cluster"
    assert peer_error(ok, me="a", cluster="c", members=MEMBERS) == "not between members"
    assert peer_error(req(src="z"), me="b", cluster="c",
                      members=MEMBERS) == "not between members"
    assert peer_error(req(src="b"), me="b", cluster="c",
                      members=MEMBERS) == "not between members"


def test_garbage_frames_are_dropped_never_raised() -> None:
    rng = random.Random(14)
    d = Decoder("test")
    good = encode(rep())
    frames = [b"", b"\xff", good[:-1], good[: len(good) // 2]]
    frames += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) for _ in range(50)]
    wrong_types = [
        {"v": WIRE_VERSION, "t": "logs.request", "src": "a", "dst": "b", "cluster": "c",
         "rid": "7", "instance": "x"},  # rid not an int
        {"v": WIRE_VERSION, "t": "logs.reply", "src": "b", "dst": "a", "cluster": "c",
         "rid": 7, "data": "text, not bytes"},
        {"v": WIRE_VERSION, "t": "logs.request", "src": "a", "dst": "b", "rid": 7,
         "instance": "x"},  # no cluster
    ]
    frames += [cbor2.dumps(m) for m in wrong_types]
    got = [d.try_decode(f) for f in frames]
    # random bytes may by chance decode to *some* message; never to a log message
    assert not any(isinstance(m, (LogsRequest, LogsReply)) for m in got)
    assert d.dropped >= 4 + len(wrong_types)
    # a field this release does not know is ignored (a newer minor may add one)
    newer = d.try_decode(cbor2.dumps({"v": WIRE_VERSION, "t": "logs.reply", "src": "b",
                                      "dst": "a", "cluster": "c", "rid": 7, "x_new": 1}))
    assert newer == LogsReply(src="b", dst="a", cluster="c", rid=7)
    small = Decoder("small", max_bytes=1024)
    assert small.try_decode(encode(rep(data=b"x" * 2000, next_offset=2010))) is None
    assert small.dropped == 1


def test_chunk_json_replaces_invalid_utf8() -> None:
    data = "héllo\n".encode() + b"\xff\xc3"
    body = chunk_json("default/web/0", "n2", 40, data, truncated=True)
    assert body == {"instance": "default/web/0", "node": "n2", "stream": "stdout",
                    "offset": 40, "next_offset": 40 + len(data), "truncated": True,
                    "data": "héllo\n\ufffd\ufffd"}
    assert chunk_json("i", "n2", 0, b"", False, "stderr")["stream"] == "stderr"


def test_a_request_without_a_stream_reads_stdout() -> None:
    """An older node's request has no `stream` field: it asks for stdout."""
    raw = cbor2.dumps({"v": WIRE_VERSION, "t": "logs.request", "src": "a", "dst": "b",
                       "cluster": "c", "rid": 1, "instance": "i"})
    m = Decoder("t").try_decode(raw)
    assert isinstance(m, LogsRequest) and m.stream == "stdout" and request_error(m) is None


def test_instances_are_found_by_index_slot_or_runner_id() -> None:
    placed = [Placement(Slot("default", "web", 2), "n3", 5),
              Placement(Slot("default", "web", 1), "n2", 9)]
    assert runner_id(placed[0]) == "default.web.2.5"
    assert find_instance(placed, None) is placed[1]  # the lowest index
    assert find_instance(placed, "2") is placed[0]
    assert find_instance(placed, "default/web/1") is placed[1]
    assert find_instance(placed, "default.web.2.5") is placed[0]
    for missing in ("0", "default/web/0", "default.web.2.4", "default.web.2", "x"):
        assert find_instance(placed, missing) is None
    assert find_instance([], None) is None


def test_runner_id_is_the_controllers_instance_id() -> None:
    instances = pytest.importorskip("prisn.fsm.instances")  # with the workloads wired
    p = Placement(Slot("ns", "web", 3), "n1", 12)
    assert runner_id(p) == instances.instance_id(p.slot, p.epoch)
