"""The read fast path (`actors.api.fastread`): taken exactly when it may be, and answering
byte for byte as the RequestHandler path does (status line, headers in order, body)."""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Any

import pytest

import actors.api.fastpath as fastpath
import actors.api.fastread as fastread
from actors.api.auth import Authenticator
from actors.api.errors import NotFound
from actors.api.limits import RateLimiter
from tests.helpers import until
from tests.http.cases import SPEC, ApiCase, value

_DATE = re.compile(rb"\r\nDate: [^\r]*")
STRONG = {"X-Prisn-Consistency": "strong"}


class Counting(fastread.FastRead):
    taken = 0

    def __init__(self, *a: Any, **kw: Any) -> None:
        type(self).taken += 1
        super().__init__(*a, **kw)


@pytest.fixture(autouse=True)
def counting(monkeypatch: pytest.MonkeyPatch) -> None:
    Counting.taken = 0
    monkeypatch.setattr(fastread, "FastRead", Counting)


class TestFastRead(ApiCase):
    def setUp(self) -> None:
        super().setUp()
        for spec in (SPEC, {**SPEC, "name": "api", "namespace": "team-a"}):
            assert self.call("POST", "/api/v1/deployments", spec)[0] == 201

    def get(self, path: str, headers: dict[str, str] | None = None, *,
            version: str = "HTTP/1.1") -> bytes:
        lines = [f"GET {path} {version}", "Host: x", "X-Request-Id: rid-1"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        lines.append("Connection: close")
        return self.raw(("\r\n".join(lines) + "\r\n\r\n").encode())

    def both(self, path: str, headers: dict[str, str] | None = None, *,
             fast: bool = True) -> bytes:
        """The same read through the fast path and forced through the Application; asserts
        that the answers are identical but for the Date value, and returns the fast one."""
        before = Counting.taken
        quick = self.get(path, headers)
        assert Counting.taken == before + int(fast), (path, headers)
        orig = fastpath.fast_read
        fastpath.fast_read = lambda *a: None  # type: ignore[assignment]
        try:
            slow = self.get(path, headers)
        finally:
            fastpath.fast_read = orig
        assert Counting.taken == before + int(fast)
        assert _DATE.sub(b"", quick) == _DATE.sub(b"", slow), (quick, slow)
        return quick

    def test_a_read_answers_like_the_handler(self) -> None:
        for headers in (None, STRONG, {"X-Prisn-Consistency": " Strong "},
                        {"X-Prisn-Consistency": "default"}, {"X-Prisn-Consistency": ""},
                        {"X-Prisn-Consistency": "stale"}):
            out = self.both("/api/v1/deployments/web", headers)
            assert out.startswith(b"HTTP/1.1 200 OK\r\nServer: TornadoServer/"), out
            assert b'"name":"web"' in out and b"\r\nX-Request-Id: rid-1\r\n" in out

    def test_strong_reads_take_the_barrier(self) -> None:
        before = self.node.read_barriers
        self.both("/api/v1/deployments/web", STRONG)
        self.both("/api/v1/deployments/web")
        assert self.node.read_barriers == before + 2  # one each route, strong only

    def test_by_id_and_by_namespace(self) -> None:
        dep_id = self.call("GET", "/api/v1/deployments/api?namespace=team-a")[1]["id"]
        for path in (f"/api/v1/deployments/{dep_id}", "/api/v1/deployments/api?namespace=team-a",
                     f"/api/v1/deployments/{dep_id}?namespace=team-a",
                     "/api/v1/deployments/web?namespace=default"):
            assert self.both(path, STRONG).startswith(b"HTTP/1.1 200 "), path
        for path in ("/api/v1/deployments/api", "/api/v1/deployments/web?namespace=team-a",
                     f"/api/v1/deployments/{dep_id}?namespace=default"):
            assert self.both(path).startswith(b"HTTP/1.1 404 "), path

    def test_not_found_and_a_bad_consistency_level(self) -> None:
        out = self.both("/api/v1/deployments/nope", STRONG)
        assert out.startswith(b"HTTP/1.1 404 Not Found\r\n")
        assert out.endswith(b'{"error": "Not Found", "message": "deployment nope not found"}')
        out = self.both("/api/v1/deployments/web", {"X-Prisn-Consistency": "strnog"})
        assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"X-Prisn-Consistency" in out

    def test_barrier_unavailable_or_timed_out_is_a_503(self) -> None:
        self.node.fail_reads = "no leader"
        out = self.both("/api/v1/deployments/web", STRONG)
        assert out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"\r\nRetry-After: 1\r\n" in out and b"no leader" in out
        assert self.both("/api/v1/deployments/web").startswith(b"HTTP/1.1 200 ")  # weak: local

        async def timed_out(timeout: float) -> None:
            raise TimeoutError

        self.node.fail_reads = None
        self.node.read_barrier = timed_out  # type: ignore[method-assign]
        out = self.both("/api/v1/deployments/web", STRONG)
        assert out.startswith(b"HTTP/1.1 503 ") and b"read barrier timed out" in out

        async def other(timeout: float) -> None:
            raise NotFound("gone")

        self.node.read_barrier = other  # type: ignore[method-assign]
        assert self.both("/api/v1/deployments/web", STRONG).startswith(b"HTTP/1.1 404 ")

    def test_a_follower_answers_with_its_leader(self) -> None:
        self.node.state, self.node.leader_id = "follower", "node2"
        out = self.both("/api/v1/deployments/web", STRONG)
        assert b"\r\nX-Prisn-Node: node1\r\nX-Prisn-Leader: node2\r\n" in out
        self.node.leader_id = None
        self.node.fail_reads = "no known leader"
        out = self.both("/api/v1/deployments/web", STRONG)
        assert out.startswith(b"HTTP/1.1 503 ") and b"\r\nX-Prisn-Leader: \r\n" in out

    def test_generated_request_ids_and_metrics(self) -> None:
        out = self.raw(b"GET /api/v1/deployments/web HTTP/1.1\r\nHost: x\r\nConnection: close"
                       b"\r\n\r\n")
        assert re.search(rb"\r\nX-Request-Id: node1-\d+\r\n", out), out
        assert Counting.taken == 1
        self.both("/api/v1/deployments/nope")
        text = self.app.ctx.metrics.render(None)[0].decode()
        route = fastread.ROUTE
        assert value(text, "prisn_api_requests_total", method="GET", route=route,
                     code="200") == 1  # the raw read above; setUp's creates are POSTs
        assert value(text, "prisn_api_requests_total", method="GET", route=route,
                     code="404") == 2  # one each route

    def test_http_10_and_keep_alive(self) -> None:
        out = self.raw(b"GET /api/v1/deployments/web HTTP/1.0\r\nHost: x\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200 ") and b'"name":"web"' in out
        two = (b"GET /api/v1/deployments/web HTTP/1.1\r\nHost: x\r\n\r\n"
               b"GET /api/v1/deployments/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = self.raw(two)
        assert out.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 404 " in out
        assert Counting.taken == 3

    def test_requests_left_to_the_application(self) -> None:
        dep = "/api/v1/deployments/web"
        for path in (dep + "/", dep + "?namespace=", dep + "?namespace=default&x=1",
                     dep + "?", dep + "?namespace=Bad!", "/api/v1/deployments/w%65b",
                     "/api/v1/deployments/web.x", "/api/v1/deployments/",
                     "/api/v1/deployments", "/api/v1/deployments/web/scale",
                     dep + "?namespace=" + "a" * 64):
            self.both(path, STRONG, fast=False)
        head = self.raw(b"HEAD /api/v1/deployments/web HTTP/1.1\r\nHost: x\r\n"
                        b"Connection: close\r\n\r\n")
        body = self.raw(b"GET /api/v1/deployments/web HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Type: application/json\r\nContent-Length: 2\r\n"
                        b"Connection: close\r\n\r\n{}")
        chunked = self.raw(b"GET /api/v1/deployments/web HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                           b"Connection: close\r\n\r\n0\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 405 ")  # the handler has no head()
        assert body.startswith(b"HTTP/1.1 200 ") and chunked.startswith(b"HTTP/1.1 200 ")
        assert Counting.taken == 0
        assert self.get(dep, {"Content-Length": "0"}).startswith(b"HTTP/1.1 200 ")
        assert Counting.taken == 1

    def test_authentication_on_means_the_application_answers(self) -> None:
        self.app.ctx.auth = Authenticator("k" * 32)
        assert self.get("/api/v1/deployments/web").startswith(b"HTTP/1.1 401 ")
        out = self.get("/api/v1/deployments/web", {"Authorization": "Bearer " + "k" * 32,
                                                   **STRONG})
        assert out.startswith(b"HTTP/1.1 200 ")
        assert Counting.taken == 0

    def test_rate_limited_reads_get_the_handlers_429_counted_once(self) -> None:
        limiter = self.app.ctx.limiter = RateLimiter(rate=0.001, burst=2)
        codes = [self.get("/api/v1/deployments/web")[9:12] for _ in range(4)]
        assert codes == [b"200", b"200", b"429", b"429"]
        assert Counting.taken == 2 and limiter.refused == 2

    def test_a_client_gone_while_waiting_for_the_barrier(self) -> None:
        """The client hangs up while its strong read waits for the barrier: the answer to the
        dead connection is dropped (closed flag, or the stream's error caught), the request is
        counted, and the node serves on."""
        release = asyncio.Event()
        waiting = asyncio.Event()

        async def held(timeout: float) -> None:
            waiting.set()
            await release.wait()

        self.node.read_barrier = held  # type: ignore[method-assign]
        port = self.get_http_port()

        async def hang_up() -> None:
            loop = self.io_loop.asyncio_loop  # type: ignore[attr-defined]
            s = socket.create_connection(("127.0.0.1", port))
            s.setblocking(False)
            await loop.sock_sendall(s, b"GET /api/v1/deployments/web HTTP/1.1\r\nHost: x\r\n"
                                       b"X-Prisn-Consistency: strong\r\n\r\n")
            await asyncio.wait_for(waiting.wait(), 5)
            s.close()
            release.set()  # Tornado may or may not have noticed the hang-up: either way
            await until(lambda: value(self.app.ctx.metrics.render(None)[0].decode(),
                                      "prisn_api_requests_total", method="GET",
                                      route=fastread.ROUTE, code="200") == 1,
                        "the abandoned read to be counted")

        self.io_loop.run_sync(hang_up)
        assert Counting.taken == 1
        assert self.get("/api/v1/deployments/web", STRONG).startswith(b"HTTP/1.1 200 ")
        assert Counting.taken == 2

    def test_a_create_answers_like_the_handler_byte_for_byte(self) -> None:
        """`FastCreate` shares the writer: same headers in order, same error bytes."""
        def post(path: str, body: bytes) -> bytes:
            return _DATE.sub(b"", self.raw(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: r\r\n"
                f"Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body))

        for body in (b"{}", b"{bad", b'{"name": "web", "source": "x"}'):
            fast = post("/api/v1/deployments", body)
            slow = post("/api/v1/deployments?namespace=default", body)
            assert fast == slow, (fast, slow)
        self.node.fail_writes = "no leader"
        fast = post("/api/v1/deployments", b'{"name": "n", "source": "x"}')
        slow = post("/api/v1/deployments?namespace=default", b'{"name": "n", "source": "x"}')
        assert fast == slow and b"Retry-After: 1" in fast


    def test_concurrent_strong_reads_share_barriers_and_all_answer(self) -> None:
        port = self.get_http_port()
        req = (b"GET /api/v1/deployments/web HTTP/1.1\r\nHost: x\r\n"
               b"X-Prisn-Consistency: strong\r\nConnection: close\r\n\r\n")

        async def one() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(req)
            out = await reader.read()
            writer.close()
            return out

        async def many() -> list[bytes]:
            return list(await asyncio.gather(*(one() for _ in range(32))))

        before = self.node.read_barriers
        outs = self.io_loop.run_sync(many)
        assert all(o.startswith(b"HTTP/1.1 200 ") and o.endswith(b"}") for o in outs)
        assert Counting.taken == 32 and 1 <= self.node.read_barriers - before <= 32
