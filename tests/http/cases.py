"""The HTTP tests' shared fixture: `ApiCase` (a FakeNodeClient behind the real app) and its
data. Test modules import it from here, never from each other."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.testing import AsyncHTTPTestCase

from actors.api.app import make_app, make_server
from actors.api.limits import (
    LimitedHTTPServer,
    RateLimiter,
)
from actors.api.node import FakeNodeClient, NodeInfo
from prisn.fsm.commands import CommandFactory

JSON = {"Content-Type": "application/json"}
SPEC: dict[str, Any] = {"name": "web", "source": "print('hi')", "port": 8080}


def three_nodes() -> list[NodeInfo]:
    return [
        NodeInfo("node1", "10.0.0.1:7332", "leader"),
        NodeInfo("node2", "10.0.0.2:7332", "follower", last_contact_seconds=0.05,
                 lag_entries=0, lag_seconds=0.0, inflight_messages=1),
        NodeInfo("node3", "10.0.0.3:7332", "follower", last_contact_seconds=0.07,
                 lag_entries=3, lag_seconds=0.2, inflight_messages=0),
        NodeInfo("node4", "10.0.0.4:7332", "learner"),
    ]


class ApiCase(AsyncHTTPTestCase):
    """Base: a FakeNodeClient behind `make_app`; subclasses tune the knobs."""

    write_timeout = 5.0
    read_timeout = 5.0
    max_body = 10 * 1024 * 1024
    max_inflight = 10000

    def get_app(self) -> Any:
        self.node = FakeNodeClient("node1", nodes=three_nodes())
        ids = (f"id-{n}" for n in itertools.count(1))
        self.app = make_app(
            self.node, write_timeout=self.write_timeout, read_timeout=self.read_timeout,
            max_body=self.max_body, max_inflight=self.max_inflight,
            commands=CommandFactory(clock=lambda: 1_700_000_000.0, new_id=lambda: next(ids)),
        )
        return self.app

    def get_http_server(self) -> HTTPServer:
        return make_server(self.app)

    # ---------------------------------------------------------------- helpers
    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any, HTTPResponse]:
        data: bytes | None = raw
        if data is None and body is not None:
            data = json.dumps(body).encode()
        if data is None and method in ("POST", "PUT", "PATCH"):
            data = b""
        resp = self.fetch(path, method=method, body=data, headers={**JSON, **(headers or {})},
                          raise_error=False, allow_nonstandard_methods=True)
        parsed = json.loads(resp.body) if resp.body and resp.headers.get(
            "Content-Type", "").startswith("application/json") else None
        return resp.code, parsed, resp

    def assert_error(self, code: int, body: Any, resp: HTTPResponse, reason: str,
                     *, contains: str = "") -> None:
        assert resp.code == code, (resp.code, body)
        assert isinstance(body, dict), resp.body
        assert body["error"] == reason, body
        assert isinstance(body["message"], str) and body["message"], body
        assert contains in body["message"], body
        self.assert_node_headers(resp)

    def assert_node_headers(self, resp: HTTPResponse) -> None:
        assert resp.headers["X-Prisn-Node"] == "node1"
        assert resp.headers["X-Prisn-Leader"] == (self.node.leader_id or "")

    def raw_request(self, head: bytes, body: bytes = b"") -> bytes:
        """Send `head` (+ `body`) on a plain socket; return everything until the server closes."""
        with socket.create_connection(("127.0.0.1", self.get_http_port()), timeout=10) as s:
            s.sendall(head + body)
            chunks = []
            while True:
                try:
                    data = s.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks)

    def raw(self, req: bytes) -> bytes:
        """Send `req` on a fresh connection from inside the IOLoop (the server answers while it
        runs); everything the server answers until it closes."""
        port = self.get_http_port()

        async def send() -> bytes:
            loop = self.io_loop.asyncio_loop  # type: ignore[attr-defined]
            s = socket.create_connection(("127.0.0.1", port))
            s.setblocking(False)
            await loop.sock_sendall(s, req)
            out = b""
            while chunk := await loop.sock_recv(s, 65536):
                out += chunk
            s.close()
            return out

        return self.io_loop.run_sync(send)

    def create(self, **over: Any) -> dict[str, Any]:
        code, body, _ = self.call("POST", "/api/v1/deployments", {**SPEC, **over})
        assert code == 201, body
        return body  # type: ignore[no-any-return]


DEADLINE = 10.0  # seconds any awaited condition may take before the test fails


# ---------------------------------------------------------------------- over HTTP
class LimitsCase(ApiCase):
    """ApiCase behind a LimitedHTTPServer with a manual clock and no automatic sweep."""

    rate = 1.0
    burst = 2
    max_connections = 100
    max_header = 16384
    sweep_interval = 0.0
    idle_timeout = 60.0
    body_timeout = 10.0
    response_timeout: float | None = 30.0

    def get_app(self) -> Any:
        app = super().get_app()
        self.clock = Clock()
        if self.rate:
            app.ctx.limiter = RateLimiter(self.rate, self.burst, clock=self.clock)
        return app

    def get_http_server(self) -> HTTPServer:
        self.server = LimitedHTTPServer(
            self.app, max_body_size=self.max_body, max_header_size=self.max_header,
            max_connections=self.max_connections, idle_timeout=self.idle_timeout,
            body_timeout=self.body_timeout, response_timeout=self.response_timeout,
            sweep_interval=self.sweep_interval, clock=self.clock)
        return self.server

    async def fetch_async(self, path: str, **kw: Any) -> Any:
        kw.setdefault("raise_error", False)
        return await self.http_client.fetch(self.get_url(path), **kw)

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.get_http_port())

    async def closed(self, reader: asyncio.StreamReader) -> bytes:
        """Everything the server sends until it closes the connection (DEADLINE)."""
        out = b""
        try:
            while True:
                chunk = await asyncio.wait_for(reader.read(65536), DEADLINE)
                if not chunk:
                    return out
                out += chunk
        except ConnectionResetError:
            return out


# ---------------------------------------------------------------------- response parsing
def parse(raw: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """(status, headers, body) of the first non-1xx response in `raw`; None if empty."""
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, raw[:200]
        status_line, *hdr_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {}
        for ln in hdr_lines:
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
        if 100 <= status < 200:
            raw = rest
            continue
        return status, headers, rest
    return None


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


class Clock:
    """A manual monotonic clock."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out
