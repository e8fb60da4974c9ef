"""One address cannot take a real node's connection slots (issue 17, item 3): with the
default limits (1024 connections per node, 128 per client address) a client on 127.0.0.1
holds its 128 connections idle, or as slowloris headers; one more from 127.0.0.1 is refused
at once, and /health, /ready and /metrics still answer 200 to 127.0.0.2 (Linux routes all of
127/8 to lo; the node listens on 127.0.0.1)."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import ServerProc, single_node, wait_for

pytestmark = pytest.mark.timeout(120)

PER_IP = 128  # the documented default of --max-conns-per-ip
PROMPT = 5.0  # a refusal must come well before the 10 s header sweep or the 60 s idle timeout


def connect(node: ServerProc, source: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(PROMPT)
    s.bind((source, 0))
    s.connect(("127.0.0.1", node.http_port))
    return s


def read_response(s: socket.socket) -> bytes:
    """One response (headers + Content-Length body) from a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)content-length: (\d+)", head)
    need = int(m.group(1)) if m else 0
    while len(body) < need:
        chunk = s.recv(65536)
        assert chunk, data
        body += chunk
    return head + b"\r\n\r\n" + body


def get_from(node: ServerProc, source: str, path: str) -> bytes:
    s = connect(node, source)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                  .encode())
        return read_response(s)
    finally:
        s.close()


def metric(node: ServerProc, name: str) -> float:
    """A metric, scraped from 127.0.0.2 (127.0.0.1 may be at its cap)."""
    text = get_from(node, "127.0.0.2", "/metrics").partition(b"\r\n\r\n")[2].decode()
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    assert m, name
    return float(m.group(1))


def quiet(node: ServerProc) -> None:
    """Wait until the node has seen every earlier client connection close (its own count is
    then only the scrape's), so that 127.0.0.1 starts with all of its slots."""
    wait_for(lambda: metric(node, "prisn_http_connections_open") == 1, 10, "no other connection")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[ServerProc]:
    n = single_node(tmp_path).start()
    try:
        n.wait_ready()
        yield n
    finally:
        n.stop()


@pytest.mark.parametrize("how", ["idle", "slowloris"])
def test_one_address_at_its_cap_leaves_the_node_to_the_others(node: ServerProc,
                                                              how: str) -> None:
    quiet(node)
    held: list[socket.socket] = []
    try:
        for _ in range(PER_IP):
            s = connect(node, "127.0.0.1")
            held.append(s)
            if how == "idle":  # one request, then an idle keep-alive connection
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert read_response(s).startswith(b"HTTP/1.1 200 ")
            else:  # a header that never ends
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: ")
        wait_for(lambda: metric(node, "prisn_http_connections_open") >= PER_IP, 10,
                 f"{PER_IP} connections open")
        # (a) one more from 127.0.0.1 is refused promptly, in the error shape
        extra = connect(node, "127.0.0.1")
        try:
            reply = read_response(extra)
        finally:
            extra.close()
        assert reply.startswith(b"HTTP/1.1 429 "), reply[:200]
        err = json.loads(reply.partition(b"\r\n\r\n")[2])
        assert err["error"] == "Too Many Requests" and f"limit {PER_IP}" in err["message"]
        # (b) another address is served
        for path in ("/health", "/ready", "/metrics"):
            out = get_from(node, "127.0.0.2", path)
            assert out.startswith(b"HTTP/1.1 200 "), (path, out[:200])
        assert metric(node, "prisn_http_connections_refused_per_ip_total") == 1
        # the address's own connections still work (idle ones take their next request)
        if how == "idle":
            held[0].sendall(b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert read_response(held[0]).startswith(b"HTTP/1.1 200 ")
    finally:
        for s in held:
            s.close()
    # slots come back: 127.0.0.1 is served again and the node still writes
    wait_for(lambda: get_from(node, "127.0.0.1", "/health").startswith(b"HTTP/1.1 200 "), 10,
             "127.0.0.1 served again")
    assert node.req("POST", "/api/v1/deployments", {"name": "w", "source": "x"}).status == 201


def test_the_cap_is_a_flag_and_a_variable(tmp_path: Path) -> None:
    n = single_node(tmp_path)
    n.env = {"PRISN_MAX_CONNS_PER_IP": "2"}
    n.start()
    try:
        n.wait_ready()
        quiet(n)
        held = [connect(n, "127.0.0.1") for _ in range(2)]
        wait_for(lambda: metric(n, "prisn_http_connections_open") >= 3, 10, "2 held + 1")
        extra = connect(n, "127.0.0.1")
        try:
            assert read_response(extra).startswith(b"HTTP/1.1 429 ")
        finally:
            extra.close()
        assert get_from(n, "127.0.0.2", "/health").startswith(b"HTTP/1.1 200 ")
        for s in held:
            s.close()
    finally:
        n.stop()
    bad = single_node(tmp_path, "n2", extra=["--max-conns-per-ip", "0"]).start()
    assert bad.wait_exit(20) == 2, bad.tail()
