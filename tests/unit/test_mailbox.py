"""ZeroMQ mailboxes (`transport.mailbox`): tcp endpoint forms, bounded local queues that raise
`MailboxFull` instead of losing a message, and peer sockets that never block."""

from __future__ import annotations

import time

import pytest
import zmq

import transport.mailbox as mailbox
from prisn.messages import StoreSynced, Tick
from tests.helpers import free_port, unique_id
from transport.codec import decode
from transport.mailbox import (
    PEER_HWM,
    MailboxFull,
    Outbox,
    bind_inbox,
    bind_peer_inbox,
    connect_peer,
    inproc_address,
    tcp_endpoint,
)


def node_id(tag: str) -> str:
    return unique_id("mb", tag)


# --------------------------------------------------------------------------- tcp_endpoint
@pytest.mark.parametrize("addr,bind,expected", [
    (":7332", True, "tcp://0.0.0.0:7332"),
    (":7332", False, "tcp://127.0.0.1:7332"),
    ("host:7332", True, "tcp://host:7332"),
    ("host:7332", False, "tcp://host:7332"),
    ("10.1.2.3:1", False, "tcp://10.1.2.3:1"),
    ("[::1]:7332", True, "tcp://[::1]:7332"),
    ("[::1]:7332", False, "tcp://[::1]:7332"),
    ("[::]:7332", True, "tcp://[::]:7332"),
    ("[2001:db8::5]:65535", False, "tcp://[2001:db8::5]:65535"),
])
def test_tcp_endpoint_forms(addr: str, bind: bool, expected: str) -> None:
    assert tcp_endpoint(addr, bind=bind) == expected


@pytest.mark.parametrize("addr", [
    "", "7332", "host", "host:", ":", "host:port", "host:73a2", "host:-1", "host:+1",
    "host:7332 ", "host: 7332", "[::1]", "[::1]:", "host:7.5",
])
@pytest.mark.parametrize("bind", [True, False])
def test_tcp_endpoint_bad_values_raise_value_error(addr: str, bind: bool) -> None:
    with pytest.raises(ValueError):
        tcp_endpoint(addr, bind=bind)


@pytest.mark.parametrize("addr", ["host:70000", "host:99999", "127.0.0.1:\u0663\u0663", "::1"])
def test_tcp_endpoint_rejects_ports_that_are_not_ports(addr: str) -> None:
    with pytest.raises(ValueError):
        tcp_endpoint(addr, bind=False)


# --------------------------------------------------------------------------- local mailboxes
def test_inproc_address() -> None:
    assert inproc_address("n1", "raft") == "inproc://n1/raft"


def test_outbox_delivers_in_order_one_socket_per_destination(ctx: zmq.Context) -> None:
    node = node_id("order")
    a, b = bind_inbox(ctx, node, "a"), bind_inbox(ctx, node, "b")
    out = Outbox(ctx, node)
    try:
        for seq in range(50):
            out.send("a" if seq % 2 else "b", StoreSynced(seq=seq))
        out.send_bytes("a", b"raw bytes are not decoded here")
        got_a = [a.recv() for _ in range(26)]
        got_b = [decode(b.recv()) for _ in range(25)]
        assert [decode(f).seq for f in got_a[:25]] == list(range(1, 50, 2))  # type: ignore[attr-defined]
        assert got_a[25] == b"raw bytes are not decoded here"
        assert [m.seq for m in got_b] == list(range(0, 50, 2))  # type: ignore[attr-defined]
        assert sorted(out._socks) == ["a", "b"]
    finally:
        out.close()
        a.close(0)
        b.close(0)
    assert out._socks == {}


def test_bind_inbox_options_and_exclusive_address(ctx: zmq.Context) -> None:
    node = node_id("bind")
    sock = bind_inbox(ctx, node, "raft")
    try:
        assert sock.getsockopt(zmq.LINGER) == 0
        assert sock.getsockopt(zmq.RCVHWM) == mailbox.LOCAL_HWM
        assert sock.getsockopt_string(zmq.LAST_ENDPOINT) == f"inproc://{node}/raft"
        with pytest.raises(zmq.ZMQError):
            bind_inbox(ctx, node, "raft").close(0)
    finally:
        sock.close(0)


def test_outbox_raises_mailbox_full_and_never_loses_a_message(
        ctx: zmq.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mailbox, "LOCAL_HWM", 2)
    node = node_id("full")
    inbox = bind_inbox(ctx, node, "sink")
    out = Outbox(ctx, node, send_timeout_ms=20)
    sent = 0
    try:
        with pytest.raises(MailboxFull, match="sink"):
            for seq in range(10_000):  # bounded: a broken HWM fails the test, not hangs it
                out.send("sink", StoreSynced(seq=seq))
                sent += 1
        assert 0 < sent < 10_000
        received = []
        while inbox.poll(0):
            received.append(decode(inbox.recv()).seq)  # type: ignore[attr-defined]
        assert received == list(range(sent))  # everything accepted arrived, in order
        out.send("sink", Tick())  # room again once drained
        assert inbox.poll(2000) and decode(inbox.recv()) == Tick()
    finally:
        out.close()
        inbox.close(0)


# --------------------------------------------------------------------------- peer sockets
def test_connect_peer_never_blocks_when_nobody_listens(ctx: zmq.Context) -> None:
    sock = connect_peer(ctx, f"127.0.0.1:{free_port()}")
    try:
        assert sock.getsockopt(zmq.IMMEDIATE) == 1
        assert sock.getsockopt(zmq.LINGER) == 0
        assert sock.getsockopt(zmq.SNDHWM) == PEER_HWM
        for _ in range(PEER_HWM + 10):  # nothing is queued for a peer that is not there
            with pytest.raises(zmq.Again):
                sock.send(b"hello", zmq.NOBLOCK)
    finally:
        sock.close(0)


def test_connect_peer_rejects_a_bad_address(ctx: zmq.Context) -> None:
    with pytest.raises(ValueError):
        connect_peer(ctx, "not-an-address")


def open_sockets(ctx: zmq.Context) -> list[zmq.Socket]:
    return [s for s in list(ctx._sockets) if not s.closed]


def test_connect_peer_leaks_no_socket_on_a_bad_address(ctx: zmq.Context) -> None:
    try:
        with pytest.raises(ValueError) as info:
            connect_peer(ctx, "not-an-address")
        assert info.value is not None  # the failure is still referenced, as an actor keeps it
        assert open_sockets(ctx) == []
    finally:
        for s in open_sockets(ctx):  # let ctx.term() finish either way
            s.close(0)


def round_trip(ctx: zmq.Context, host: str) -> None:
    """Bind a peer inbox on `host`, connect a peer socket to it, deliver one frame."""
    try:
        inbox = bind_peer_inbox(ctx, f"{host}:0")
    except zmq.ZMQError as e:  # a machine without IPv6 loopback
        pytest.skip(f"cannot bind {host}: {e}")
    push = None
    try:
        assert inbox.getsockopt(zmq.MAXMSGSIZE) == mailbox.PEER_MAX_MSG_BYTES
        port = inbox.getsockopt_string(zmq.LAST_ENDPOINT).rpartition(":")[2]
        push = connect_peer(ctx, f"{host}:{port}")
        if ":" in host:  # libzmq refuses IPv6 endpoints on a socket without ZMQ_IPV6
            assert push.getsockopt(zmq.IPV6) == 1
        deadline = time.monotonic() + 10
        while True:  # IMMEDIATE: sends fail until the connection is up
            try:
                push.send(b"ping", zmq.NOBLOCK)
                break
            except zmq.Again:
                assert time.monotonic() < deadline, "peer link never came up"
                inbox.poll(10)
        assert inbox.poll(5000) and inbox.recv() == b"ping"
    finally:
        if push is not None:
            push.close(0)
        inbox.close(0)


def test_peer_link_round_trip_on_ipv4_loopback(ctx: zmq.Context) -> None:
    round_trip(ctx, "127.0.0.1")


def test_peer_link_round_trip_on_ipv6_loopback(ctx: zmq.Context) -> None:
    round_trip(ctx, "[::1]")
