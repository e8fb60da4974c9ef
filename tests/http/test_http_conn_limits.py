"""The per-address connection cap and the idle timeout under pressure (issue 17, item 3):
`LimitedHTTPServer` with a manual clock; the server listens on 127.0.0.1 and "another
address" is a client socket bound to 127.0.0.2 (Linux routes all of 127/8 to lo)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from tornado.httpserver import HTTPServer
from tornado.testing import gen_test

from actors.api.limits import PRESSURE, LimitedHTTPServer, client_key
from actors.metrics import HttpLimitsCollector
from tests.helpers import until
from tests.http.cases import DEADLINE, LimitsCase

HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(("address", "key"), [
    (("10.0.0.1", 5), "10.0.0.1"),
    (("2001:db8:1:2:3:4:5:6", 5, 0, 0), "2001:db8:1:2::/64"),
    (("2001:db8:1:2:ffff::1", 5, 0, 0), "2001:db8:1:2::/64"),  # the same /64
    (("2001:db8:1:3::1", 5, 0, 0), "2001:db8:1:3::/64"),
    (("::ffff:10.0.0.1", 5, 0, 0), "10.0.0.1"),
    (("fe80::1%eth0", 5, 0, 2), "fe80::/64"),
    ("/run/prisn.sock", ""), (None, ""),
])
def test_client_key(address: Any, key: str) -> None:
    assert client_key(address) == key


class ConnCase(LimitsCase):
    rate = 0.0
    max_connections = 12
    max_conns_per_ip = 4
    pressure_idle_timeout = 5.0

    def get_http_server(self) -> HTTPServer:
        self.server = LimitedHTTPServer(
            self.app, max_body_size=self.max_body, max_header_size=self.max_header,
            max_connections=self.max_connections, max_conns_per_ip=self.max_conns_per_ip,
            idle_timeout=self.idle_timeout, pressure_idle_timeout=self.pressure_idle_timeout,
            body_timeout=self.body_timeout, response_timeout=self.response_timeout,
            sweep_interval=self.sweep_interval, clock=self.clock)
        return self.server

    async def open_from(self, host: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.get_http_port(),
                                             local_addr=(host, 0))

    async def idle_from(self, host: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A keep-alive connection from `host` that made one request and now sits idle."""
        r, w = await self.open_from(host)
        w.write(HEALTH)
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), DEADLINE)
        assert head.startswith(b"HTTP/1.1 200"), head
        await asyncio.wait_for(r.readexactly(int(re.search(
            rb"Content-Length: (\d+)", head).group(1))), DEADLINE)  # type: ignore[union-attr]
        return r, w

    async def get_from(self, host: str, path: str) -> bytes:
        r, w = await self.open_from(host)
        w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        try:
            return await self.closed(r)
        finally:
            w.close()


class TestPerAddressCap(ConnCase):
    @gen_test(timeout=30)
    async def test_one_address_cannot_take_every_slot(self) -> None:
        stats = self.server.stats
        held = [await self.idle_from("127.0.0.1") for _ in range(2)]
        held += [await self.open_from("127.0.0.1") for _ in range(2)]  # slowloris: no bytes
        held[-1][1].write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # half a header
        await until(lambda: self.server.connections_of(("127.0.0.1", 0)) == 4, "4 held")
        # one more from the same address: 429 in the error shape and closed, at once
        r, w = await self.open_from("127.0.0.1")
        reply = await self.closed(r)
        w.close()
        assert reply.startswith(b"HTTP/1.1 429 "), reply
        body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
        assert body["error"] == "Too Many Requests" and "your address" in body["message"]
        assert b"Retry-After: 1" in reply
        assert stats.connections_refused == stats.connections_refused_per_ip == 1
        # another address is served: probes, readiness and metrics
        for path in ("/health", "/ready", "/metrics"):
            out = await self.get_from("127.0.0.2", path)
            assert out.startswith(b"HTTP/1.1 200 "), (path, out[:200])
        # the held connections were not disturbed; closing one gives its slot back
        assert self.server.connections_of(("127.0.0.1", 0)) == 4
        held[0][1].close()
        await until(lambda: self.server.connections_of(("127.0.0.1", 0)) == 3, "a slot freed")
        r, w = await self.idle_from("127.0.0.1")
        w.close()
        for _, writer in held[1:]:
            writer.close()
        await until(lambda: stats.connections_open == 0, "all closed")
        assert self.server._per_ip == {}  # no entry outlives its connections

    def test_the_refusals_are_a_metric(self) -> None:
        m = self.app.ctx.metrics
        self.server.stats.connections_refused = 3
        self.server.stats.connections_refused_per_ip = 2
        m.registry.register(HttpLimitsCollector(lambda: self.server.stats, lambda: 0))
        text = m.render()[0].decode()
        assert re.search(r"^prisn_http_connections_refused_total 3\.0$", text, re.M), text
        assert re.search(r"^prisn_http_connections_refused_per_ip_total 2\.0$", text, re.M)


class TestIdleUnderPressure(ConnCase):
    """Idle keep-alive connections get `pressure_idle_timeout` instead of `idle_timeout`
    from PRESSURE of the node cap on (9 of 12 here)."""

    max_conns_per_ip = 12

    @gen_test(timeout=30)
    async def test_idle_connections_go_sooner_when_slots_run_short(self) -> None:
        stats = self.server.stats
        threshold = int(PRESSURE * self.max_connections)
        assert threshold == 9
        idle = [await self.idle_from("127.0.0.1") for _ in range(threshold - 1)]
        await until(lambda: self.server.phases().count("idle") == threshold - 1, "idle")
        self.clock.advance(self.pressure_idle_timeout + 1)
        self.server.sweep()  # below the threshold: the normal 60 s apply
        assert stats.idle_closed == 0 and self.server.idle_limit() == self.idle_timeout
        idle.append(await self.idle_from("127.0.0.2"))
        await until(lambda: stats.connections_open == threshold, "at the threshold")
        assert self.server.idle_limit() == self.pressure_idle_timeout
        self.server.sweep()  # the first 8 have been idle 6 s > 5 s; the newest not yet
        await until(lambda: stats.connections_open == 1, "the old idle ones closed")
        assert stats.idle_closed == threshold - 1
        self.clock.advance(self.pressure_idle_timeout + 1)
        self.server.sweep()  # back below the threshold: the last one keeps its 60 s
        assert stats.connections_open == 1
        for _, w in idle:
            w.close()
