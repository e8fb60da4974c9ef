"""The create fast path (`actors.api.fastpath`): taken exactly when it may be, and answering
exactly as the RequestHandler path does (status, body, headers)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

import actors.api.fastpath as fastpath
from actors.api.auth import Authenticator
from actors.api.limits import RateLimiter
from tests.http.cases import SPEC, ApiCase

# Headers both paths set; Date/Server/Content-Length may legitimately differ.
COMPARED = ("Content-Type", "X-Prisn-Node", "X-Prisn-Leader", "Retry-After")


class Counting(fastpath.FastCreate):
    taken = 0

    def __init__(self, *a: Any, **kw: Any) -> None:
        type(self).taken += 1
        super().__init__(*a, **kw)


@pytest.fixture(autouse=True)
def counting(monkeypatch: pytest.MonkeyPatch) -> None:
    Counting.taken = 0
    monkeypatch.setattr(fastpath, "FastCreate", Counting)


class TestFastPath(ApiCase):
    def post(self, path: str, body: Any = None, *, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        return self.call("POST", path, body, raw=raw, headers=headers)

    def both(self, body: Any = None, *, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[tuple, tuple]:
        """The same request through the fast path and (a query string forces it) the slow."""
        before = Counting.taken
        fast = self.post("/api/v1/deployments", body, raw=raw, headers=headers)
        assert Counting.taken == before + 1, "the plain create did not take the fast path"
        slow = self.post("/api/v1/deployments?namespace=default", body, raw=raw, headers=headers)
        assert Counting.taken == before + 1, "a create with a query took the fast path"
        return fast, slow

    def assert_same(self, fast: tuple, slow: tuple) -> None:
        assert fast[0] == slow[0], (fast[:2], slow[:2])
        for h in COMPARED:
            assert fast[2].headers.get(h) == slow[2].headers.get(h), h

    def test_a_create_answers_like_the_handler(self) -> None:
        fast = self.post("/api/v1/deployments", SPEC)
        slow = self.post("/api/v1/deployments?namespace=default", {**SPEC, "name": "web2"})
        self.assert_same(fast, slow)
        assert fast[0] == 201 and fast[1]["name"] == "web" and fast[1]["namespace"] == "default"
        assert set(fast[1]) == set(slow[1])
        assert Counting.taken == 1

    def test_refusals_answer_like_the_handler(self) -> None:
        self.post("/api/v1/deployments", SPEC)
        for kw in ({"raw": b"{not json"}, {"raw": b""}, {"raw": b"[1, 2]"},
                   {"body": {"name": "Bad Name!", "source": "x"}}, {"body": SPEC},
                   {"raw": b'{"name": "x", "source": NaN}'}):
            fast, slow = self.both(**kw)
            self.assert_same(fast, slow)
            assert fast[1] == slow[1], kw
            assert 400 <= fast[0] < 500

    def test_no_quorum_is_a_503_with_retry_after(self) -> None:
        self.node.fail_writes = "no leader"
        fast, slow = self.both(SPEC)
        self.assert_same(fast, slow)
        assert fast[0] == 503 and fast[1] == slow[1] and fast[2].headers["Retry-After"] == "1"

    def test_request_id_is_echoed_or_made(self) -> None:
        _, _, resp = self.post("/api/v1/deployments", SPEC, headers={"X-Request-Id": "abc-1"})
        assert resp.headers["X-Request-Id"] == "abc-1"
        _, _, resp = self.post("/api/v1/deployments", {**SPEC, "name": "two"},
                               headers={"X-Request-Id": "x" * 200})
        assert resp.headers["X-Request-Id"].startswith("node1-")
        assert Counting.taken == 2

    def test_idempotency_key_is_honoured(self) -> None:
        first = self.post("/api/v1/deployments", SPEC, headers={"Idempotency-Key": "k1"})
        again = self.post("/api/v1/deployments", SPEC, headers={"Idempotency-Key": "k1"})
        assert first[0] == again[0] == 201 and first[1] == again[1]
        other = self.post("/api/v1/deployments", {**SPEC, "source": "other"},
                          headers={"Idempotency-Key": "k1"})
        assert other[0] == 422

    def test_requests_the_fast_path_leaves_to_the_application(self) -> None:
        self.post("/api/v1/deployments/", SPEC)  # trailing slash
        self.post("/api/v1/deployments?namespace=team", {**SPEC, "name": "q"})
        self.call("GET", "/api/v1/deployments")
        self.call("PUT", "/api/v1/deployments/web", SPEC)
        assert Counting.taken == 0
        self.app.ctx.max_body = 10  # Content-Length over the limit: the handler's 413
        code, body, _ = self.post("/api/v1/deployments", SPEC)
        assert code == 413 and Counting.taken == 0

    def test_chunked_bodies_go_to_the_application(self) -> None:
        body = b'{"name": "chunky", "source": "x"}'
        out = self.raw(b"POST /api/v1/deployments HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                       + hex(len(body))[2:].encode() + b"\r\n" + body + b"\r\n0\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 201"), out[:200]
        assert Counting.taken == 0

    def test_a_non_ascii_digit_content_length_gets_a_400(self) -> None:
        # "\xb2" decodes to "²", which str.isdigit() accepts and int() refuses
        for length in (b"\xb2", b"-1", b"1e3", b" "):
            out = self.raw(b"POST /api/v1/deployments HTTP/1.1\r\nHost: x\r\nContent-Length: "
                           + length + b"\r\nConnection: close\r\n\r\n{}")
            assert out.startswith(b"HTTP/1.1 400"), (length, out[:200])
        assert Counting.taken == 0

    def test_a_client_gone_mid_write_costs_nothing_but_its_answer(self) -> None:
        """The client hangs up while its create waits for the quorum: the write still
        commits, nothing is written to the dead connection, and the node serves on."""
        self.node.hold_writes = True
        port = self.get_http_port()
        body = b'{"name": "gone", "source": "x"}'

        async def hang_up() -> None:
            loop = self.io_loop.asyncio_loop  # type: ignore[attr-defined]
            s = socket.create_connection(("127.0.0.1", port))
            s.setblocking(False)
            await loop.sock_sendall(s, b"POST /api/v1/deployments HTTP/1.1\r\nHost: x\r\n"
                                       b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
                                       + b"\r\n\r\n" + body)
            await asyncio.wait_for(self.node.wait_held(1), 5)
            s.close()
            self.node.release_writes()

        self.io_loop.run_sync(hang_up)
        assert Counting.taken == 1
        code, dep, _ = self.call("GET", "/api/v1/deployments/gone")
        assert code == 200 and dep["name"] == "gone"
        assert self.post("/api/v1/deployments", {**SPEC, "name": "after"})[0] == 201

    def test_authentication_on_means_the_application_answers(self) -> None:
        self.app.ctx.auth = Authenticator("k" * 32)
        code, _, resp = self.post("/api/v1/deployments", SPEC)
        assert code == 401 and Counting.taken == 0
        code, _, _ = self.post("/api/v1/deployments", SPEC,
                               headers={"Authorization": "Bearer " + "k" * 32})
        assert code == 201 and Counting.taken == 0

    def test_rate_limited_requests_get_the_handlers_429(self) -> None:
        self.app.ctx.limiter = RateLimiter(rate=0.001, burst=2)
        codes = [self.post("/api/v1/deployments", {**SPEC, "name": f"r{i}"})[0] for i in range(4)]
        assert codes == [201, 201, 429, 429]
        assert Counting.taken == 2  # one token each, taken once
