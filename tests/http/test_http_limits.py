"""Hard limits on HTTP input (`actors.api.limits`): token-bucket math with an injected clock,
429 + Retry-After in the API error shape, the LRU bound, exempt probes, oversized headers,
the connection cap, and the slow-client sweep (header, body, response, idle)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from tornado.httpclient import HTTPClientError
from tornado.testing import gen_test

from actors.api.limits import (
    EXEMPT_ROUTES,
    HandshakeLogFilter,
    RateLimiter,
    TooManyRequests,
)
from actors.metrics import HttpLimitsCollector
from tests.helpers import until
from tests.http.cases import DEADLINE, SPEC, Clock, LimitsCase


# ---------------------------------------------------------------------- bucket math
def test_burst_then_refill_at_rate() -> None:
    clock = Clock()
    rl = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [rl.retry_after("a") for _ in range(3)] == [0, 0, 0]
    assert rl.retry_after("a") == 1  # empty: the next token is 0.5 s away -> 1 s
    assert rl.refused == 1
    clock.advance(0.5)  # one token back
    assert rl.retry_after("a") == 0
    assert rl.retry_after("a") == 1
    clock.advance(100.0)  # refill is capped at the burst
    assert [rl.retry_after("a") for _ in range(4)] == [0, 0, 0, 1]


def test_refused_requests_take_no_token_and_retry_after_is_whole_seconds() -> None:
    clock = Clock()
    rl = RateLimiter(rate=0.1, burst=1, clock=clock)  # one request per 10 s
    assert rl.retry_after("a") == 0
    assert rl.retry_after("a") == 10
    clock.advance(2.5)
    for _ in range(50):  # hammering does not push the next token further away
        assert rl.retry_after("a") == 8  # ceil(7.5)
    clock.advance(7.5)
    assert rl.retry_after("a") == 0
    assert rl.refused == 51


def test_a_refusal_asked_without_counting_is_not_counted() -> None:
    """`count=False` (the fast paths, which leave the 429 to the Application's `check`)
    refuses the same way and takes no token, but leaves `refused` alone."""
    clock = Clock()
    rl = RateLimiter(rate=0.1, burst=1, clock=clock)
    assert rl.retry_after("a", count=False) == 0
    assert rl.retry_after("a", count=False) == 10
    assert rl.refused == 0
    assert rl.retry_after("a") == 10
    assert rl.refused == 1


def test_addresses_are_independent_and_exempt_routes_free() -> None:
    clock = Clock()
    rl = RateLimiter(rate=1.0, burst=1, clock=clock)
    assert rl.retry_after("a") == 0 and rl.retry_after("a") == 1
    assert rl.retry_after("b") == 0
    assert EXEMPT_ROUTES == {"/health", "/ready"}
    for route in EXEMPT_ROUTES:
        assert all(rl.retry_after("a", route) == 0 for _ in range(100))
    assert rl.retry_after("a", "/metrics") == 1
    try:
        rl.check("a", "/api/v1/deployments")
    except TooManyRequests as exc:
        assert exc.status == 429 and exc.retry_after == 1 and "1 requests/s" in exc.message
    else:
        raise AssertionError("no 429")


def test_table_is_bounded_and_evicts_least_recently_seen() -> None:
    clock = Clock()
    rl = RateLimiter(rate=1.0, burst=1, max_clients=3, clock=clock)
    for a in ("a", "b", "c"):
        assert rl.retry_after(a) == 0
    assert rl.retry_after("a") == 1  # a is now the most recently seen
    assert rl.retry_after("d") == 0  # evicts b (least recently seen)
    assert len(rl) == 3
    assert rl.retry_after("a") == 1  # still remembered: still empty
    assert rl.retry_after("c") == 1
    assert rl.retry_after("b") == 0  # forgotten: a fresh bucket
    for i in range(10_000):
        rl.retry_after(f"x{i}")
    assert len(rl) == 3


def test_bad_limiter_settings_refused() -> None:
    for rate, burst in ((0, 1), (-1, 1), (float("inf"), 1), (float("nan"), 1), (1, 0)):
        try:
            RateLimiter(rate, burst)
        except ValueError:
            continue
        raise AssertionError((rate, burst))


def test_handshake_log_filter_rate_limits_ssl_errors_only() -> None:
    import logging
    clock = Clock()
    f = HandshakeLogFilter(interval=10.0, clock=clock)

    def rec(msg: str) -> logging.LogRecord:
        return logging.LogRecord("tornado.general", logging.WARNING, "", 0, msg, None, None)

    assert f.filter(rec("SSL Error on 1"))
    assert not any(f.filter(rec("SSL Error on 2")) for _ in range(5))
    assert f.filter(rec("something else"))
    clock.advance(10.0)
    r = rec("SSL Error on 3")
    assert f.filter(r) and "5 more" in r.getMessage()


class TestRateLimit(LimitsCase):
    def test_429_with_retry_after_in_the_error_shape(self) -> None:
        assert self.call("GET", "/api/v1/deployments")[0] == 200
        assert self.call("GET", "/api/v1/deployments")[0] == 200
        code, body, resp = self.call("GET", "/api/v1/deployments")
        self.assert_error(429, body, resp, "Too Many Requests", contains="rate limit")
        assert resp.headers["Retry-After"] == "1"
        self.clock.advance(1.0)
        assert self.call("GET", "/api/v1/deployments/nope")[0] == 404  # a token came back

    def test_a_refused_write_changes_nothing(self) -> None:
        before = self.node.store.state_hash()
        self.call("GET", "/metrics")
        self.call("GET", "/metrics")
        code, body, resp = self.call("POST", "/api/v1/deployments", SPEC)
        self.assert_error(429, body, resp, "Too Many Requests")
        assert self.node.proposals == [] and self.node.store.state_hash() == before
        # unknown routes and wrong methods are throttled too (they cost the node as much)
        code, body, resp = self.call("DELETE", "/nope")
        self.assert_error(429, body, resp, "Too Many Requests")

    def test_health_and_ready_are_never_throttled(self) -> None:
        for _ in range(3):
            self.call("GET", "/api/v1/cluster/status")
        for _ in range(20):
            assert self.call("GET", "/health")[0] == 200
            assert self.call("GET", "/ready")[0] == 200
        assert self.call("GET", "/api/v1/cluster/status")[0] == 429

    def test_metrics_series(self) -> None:
        m = self.app.ctx.metrics
        lim = self.app.ctx.limiter
        m.registry.register(HttpLimitsCollector(lambda: self.server.stats,
                                                lambda: lim.refused))
        for _ in range(4):
            self.call("GET", "/api/v1/deployments")
        text = m.render()[0].decode()
        assert re.search(r"^prisn_http_rate_limited_total 2\.0$", text, re.M), text
        assert re.search(r"^prisn_http_connections_open [0-9.]+$", text, re.M)
        assert re.search(r"^prisn_http_connections_refused_total 0\.0$", text, re.M)
        assert re.search(r'^prisn_http_slow_clients_closed_total\{phase="body"\} 0\.0$', text,
                         re.M)


class TestHeadersAndConnections(LimitsCase):
    rate = 0.0
    max_connections = 2

    def test_no_per_request_timer(self) -> None:
        # The invariant the sweep exists for: Tornado's per-read timeouts are off.
        assert self.server.conn_params.header_timeout is None
        assert self.server.conn_params.body_timeout is None

    @gen_test(timeout=30)
    async def test_headers_over_the_limit_close_the_connection(self) -> None:
        ok = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 15000 + b"\r\n\r\n"
        r, w = await self.open()
        w.write(ok)
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), DEADLINE)
        assert head.startswith(b"HTTP/1.1 200"), head
        w.close()
        # 17 KiB of headers: Tornado closes the connection without an answer
        r, w = await self.open()
        w.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 17000 + b"\r\n\r\n")
        assert await self.closed(r) == b""
        w.close()
        resp = await self.fetch_async("/health")
        assert resp.code == 200  # the node still serves

    @gen_test(timeout=30)
    async def test_connection_cap_refuses_at_accept_and_recovers(self) -> None:
        stats = self.server.stats
        held = [await self.open() for _ in range(2)]
        await until(lambda: stats.connections_open == 2, "two open connections")
        r, w = await self.open()
        w.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = await self.closed(r)
        w.close()
        assert reply == b"" or reply.startswith(b"HTTP/1.1 503 "), reply
        if reply:
            body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
            assert body["error"] == "Service Unavailable" and "connections" in body["message"]
        assert stats.connections_refused == 1
        held[0][1].close()
        await until(lambda: stats.connections_open == 1, "a slot freed")
        resp = await self.fetch_async("/health")
        assert resp.code == 200
        held[1][1].close()
        await until(lambda: stats.connections_open == 0, "all closed")


class TestSlowClients(LimitsCase):
    """The sweep with a manual clock: deterministic, no sleeps."""

    rate = 0.0

    async def tracked(self, *phases: str) -> None:
        await until(lambda: sorted(self.server.phases()) == sorted(phases),
                    f"connection phases {phases} (have {self.server.phases()})")

    @gen_test(timeout=30)
    async def test_half_a_header_is_closed_after_body_timeout(self) -> None:
        r, w = await self.open()
        w.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # no blank line: never complete
        await self.tracked("header")
        self.clock.advance(9.0)
        self.server.sweep()
        assert not r.at_eof() and self.server.stats.slow_clients_closed["header"] == 0
        assert (await self.fetch_async("/health")).code == 200  # others are served
        self.clock.advance(1.5)
        self.server.sweep()
        assert await self.closed(r) == b""
        assert self.server.stats.slow_clients_closed["header"] == 1
        w.close()

    @gen_test(timeout=30)
    async def test_half_a_body_is_closed_after_body_timeout(self) -> None:
        before = self.node.store.state_hash()
        r, w = await self.open()
        body = json.dumps(SPEC).encode()
        w.write(b"POST /api/v1/deployments HTTP/1.1\r\nHost: x\r\nContent-Type: "
                b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10])
        await self.tracked("body")
        self.clock.advance(10.5)
        self.server.sweep()
        assert await self.closed(r) == b""
        assert self.server.stats.slow_clients_closed["body"] == 1
        assert self.node.proposals == [] and self.node.store.state_hash() == before
        w.close()

    @gen_test(timeout=30)
    async def test_idle_keep_alive_closed_and_a_slow_next_request_too(self) -> None:
        r, w = await self.open()
        w.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), DEADLINE)
        await self.tracked("idle")
        self.clock.advance(59.0)
        self.server.sweep()
        assert self.server.phases() == ["idle"]
        self.clock.advance(2.0)
        self.server.sweep()
        await self.closed(r)
        assert self.server.stats.idle_closed == 1
        w.close()
        # a keep-alive connection whose next request trickles in is a slow header
        r, w = await self.open()
        w.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), DEADLINE)
        await self.tracked("idle")
        w.write(b"GET /heal")
        await w.drain()
        await until(lambda: self.server.sweep() or self.server.phases() == ["header"],
                    "the next request's first bytes seen")
        self.clock.advance(10.5)
        self.server.sweep()
        await self.closed(r)
        assert self.server.stats.slow_clients_closed["header"] == 1
        w.close()

    @gen_test(timeout=30)
    async def test_response_not_done_in_time_is_closed(self) -> None:
        self.node.hold_writes = True
        r, w = await self.open()
        body = json.dumps(SPEC).encode()
        w.write(b"POST /api/v1/deployments HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                b"Content-Type: application/json\r\n\r\n" % len(body) + body)
        await self.tracked("response")
        self.clock.advance(29.0)
        self.server.sweep()
        assert self.server.phases() == ["response"]
        self.clock.advance(2.0)
        self.server.sweep()
        assert await self.closed(r) == b""
        assert self.server.stats.slow_clients_closed["response"] == 1
        self.node.release_writes()
        w.close()


class TestSlowClientRealTime(LimitsCase):
    """The same with the real clock and the periodic sweep: a half-sent request is closed
    within the timeout while other clients keep being served."""

    rate = 0.0
    body_timeout = 0.5
    sweep_interval = 0.1

    def get_app(self) -> Any:
        app = super().get_app()
        import time
        self.clock = time.monotonic  # type: ignore[assignment]
        return app

    @gen_test(timeout=30)
    async def test_half_a_request_is_closed_while_others_are_served(self) -> None:
        r, w = await self.open()
        w.write(b"POST /api/v1/deployments HTTP/1.1\r\nHost: x\r\nContent-Len")
        served = 0
        gone = asyncio.ensure_future(self.closed(r))
        while not gone.done():
            try:
                resp = await self.fetch_async("/health", request_timeout=5)
            except HTTPClientError:
                continue
            assert resp.code == 200
            served += 1
        assert gone.result() == b""
        assert served > 0 and self.server.stats.slow_clients_closed["header"] == 1
        w.close()
