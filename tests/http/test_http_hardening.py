"""Issue 17 against FakeNodeClient: text that cannot be stored (lone surrogates) is a 400
naming the field on every write route, before anything is proposed; `env` refuses NUL and
line breaks; `/ready` reports a node whose in-flight bounds are full as not ready."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tornado.testing import gen_test

from tests.http.cases import SPEC, ApiCase

LONE = "\ud800"


def dumps(body: Any) -> bytes:
    """JSON with the lone surrogate written as the escape ``\\ud800`` (valid JSON)."""
    data = json.dumps(body).encode()
    assert b"\\ud800" in data or b"\\udfff" in data or b"\\udc80" in data
    return data


class TestLoneSurrogates(ApiCase):
    def setUp(self) -> None:
        super().setUp()
        self.create()  # "web" exists, so PUT/PATCH/scale reach validation of their bodies

    def refused(self, method: str, path: str, body: Any, field: str) -> None:
        before = (self.node.store.state_hash(), len(self.node.proposals),
                  list(self.node.transfers))
        code, err, resp = self.call(method, path, raw=dumps(body))
        self.assert_error(400, err, resp, "Bad Request", contains=f"{field}:")
        assert "surrogate" in err["message"], err
        assert (self.node.store.state_hash(), len(self.node.proposals),
                list(self.node.transfers)) == before, f"{method} {path} changed state"

    def test_every_write_route_names_the_field(self) -> None:
        dep = "/api/v1/deployments"
        cases: list[tuple[str, str, Any, str]] = [
            ("POST", dep, {"name": "x", "source": LONE}, "source"),
            ("POST", dep, {"name": LONE, "source": "x"}, "name"),
            ("POST", dep, {**SPEC, "name": "x", "namespace": "a" + LONE}, "namespace"),
            ("POST", dep, {**SPEC, "name": "x", "env": {"HOME": "/h" + LONE}}, "env.HOME"),
            ("POST", dep, {**SPEC, "name": "x", "env": {"\udfff": "v"}}, "env"),
            ("POST", dep, {**SPEC, "name": "x", "args": ["-v", LONE]}, "args[1]"),
            ("POST", dep, {**SPEC, "name": "x", "runtime": LONE}, "runtime"),
            ("POST", dep, {**SPEC, "name": "x", "schedule": LONE}, "schedule"),
            ("POST", dep, {**SPEC, "name": "x", LONE: 1}, "body"),
            ("POST", dep, {**SPEC, "name": "x", "extra": {"deep": [[{"k": LONE}]]}},
             "extra.deep[0][0].k"),
            ("PUT", f"{dep}/web", {"source": LONE}, "source"),
            ("PATCH", f"{dep}/web", {"env": {"A": "\udc80"}}, "env.A"),
            ("POST", f"{dep}/web/scale", {"replicas": 1, "note": LONE}, "note"),
            ("POST", "/api/v1/tokens", {"name": LONE, "role": "admin"}, "name"),
            ("POST", "/api/v1/tokens", {"name": "t", "role": "viewer",
                                        "namespaces": ["a", LONE]}, "namespaces[1]"),
            ("POST", "/api/v1/tokens", {"name": "t", "role": "admin", "expires_in": LONE},
             "expires_in"),
            ("POST", "/api/v1/tokens/0123456789abcdef/revoke", {"x": LONE}, "x"),
            ("POST", "/api/v1/cluster/election", {"target": LONE}, "target"),
        ]
        for method, path, body, field in cases:
            self.refused(method, path, body, field)

    def test_pairs_are_text_and_stored(self) -> None:
        """A proper surrogate pair (an escaped emoji) is valid text: accepted and stored."""
        code, out, _ = self.call("POST", "/api/v1/deployments",
                                 raw=b'{"name": "emoji", "source": "print(\\"\\ud83d\\ude00\\")"}')
        assert code == 201, out
        assert out["source"] == 'print("\U0001f600")'


class TestEnvControlCharacters(ApiCase):
    def test_nul_and_line_breaks_refused(self) -> None:
        for env, field in [({"A": "x\x00y"}, "env"), ({"A": "line\nnext"}, "env"),
                           ({"A": "cr\r"}, "env"), ({"A": "ok", "B": "\x00"}, "env"),
                           ({"A\n": "v"}, "env"), ({"A\x00": "v"}, "env")]:
            before = self.node.store.state_hash()
            code, err, resp = self.call("POST", "/api/v1/deployments", {**SPEC, "env": env})
            self.assert_error(400, err, resp, "Bad Request", contains=f"{field}")
            key = next(iter(k for k, v in env.items() if v != "ok"))
            assert repr(key)[1:-1] in err["message"] or key in err["message"], err
            assert self.node.store.state_hash() == before
        self.create(env={"A": "tabs\tand spaces are fine", "B": ""})
        code, err, resp = self.call("PATCH", "/api/v1/deployments/web", {"env": {"A": "\x00"}})
        self.assert_error(400, err, resp, "Bad Request", contains="env")


class TestReadyWhenSaturated(ApiCase):
    max_inflight = 2

    @gen_test(timeout=10)
    async def test_ready_503_while_writes_are_at_the_cap(self) -> None:
        url = self.get_url
        ready = await self.http_client.fetch(url("/ready"), raise_error=False)
        assert ready.code == 200
        self.node.hold_writes = True
        held = [self.http_client.fetch(url("/api/v1/deployments"), method="POST",
                                       raise_error=False,
                                       headers={"Content-Type": "application/json"},
                                       body=json.dumps({**SPEC, "name": f"h{i}"}))
                for i in range(2)]
        await asyncio.wait_for(self.node.wait_held(2), 5)
        ready = await self.http_client.fetch(url("/ready"), raise_error=False)
        assert ready.code == 503, ready.body
        body = json.loads(ready.body)
        assert body["error"] == "Service Unavailable" and body["ready"] is False
        assert "in flight" in body["message"] and "limit of 2" in body["message"], body
        assert ready.headers["Retry-After"] == "1"
        health = await self.http_client.fetch(url("/health"), raise_error=False)
        assert health.code == 200  # alive: only readiness says "send traffic elsewhere"
        self.node.release_writes()
        assert sorted(r.code for r in await asyncio.gather(*held)) == [201, 201]
        ready = await self.http_client.fetch(url("/ready"), raise_error=False)
        assert ready.code == 200

    def test_node_side_bound_counts_too(self) -> None:
        """A NodeClient that reports its own bound (the real bridge: writes, strong reads,
        elections, removals share it) makes /ready 503 when that bound is full."""
        self.node.inflight, self.node.max_inflight = 5, 5  # type: ignore[attr-defined]
        code, body, resp = self.call("GET", "/ready")
        self.assert_error(503, body, resp, "Service Unavailable", contains="waiting for raft")
        self.node.inflight = 4  # type: ignore[attr-defined]
        assert self.call("GET", "/ready")[0] == 200
