"""`AuthCase`: the HTTP app behind a FakeNodeClient with an API key, tokens and a
controllable clock, shared by the auth and artifact tests (test modules never import each
other)."""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.testing import AsyncHTTPTestCase

from actors.api.app import make_app, make_server
from actors.api.auth import Authenticator
from actors.api.node import FakeNodeClient, NodeInfo
from prisn.fsm.commands import CommandFactory
from prisn.fsm.tokens import TokenFactory

KEY = "bootstrap-key-0123456789"


T0 = 1_700_000_000.0


SEED = 20240607


def three_nodes() -> list[NodeInfo]:
    return [NodeInfo("node1", "10.0.0.1:7332", "leader"),
            NodeInfo("node2", "10.0.0.2:7332", "follower"),
            NodeInfo("node3", "10.0.0.3:7332", "follower"),
            NodeInfo("node4", "10.0.0.4:7332", "learner")]


class AuthCase(AsyncHTTPTestCase):
    """A FakeNodeClient behind `make_app` with an API key and a controllable clock."""

    metrics_auth = False

    def get_app(self) -> Any:
        self.now = T0
        self.node = FakeNodeClient("node1", nodes=three_nodes())
        ids = (f"id-{n}" for n in itertools.count(1))
        rng = random.Random(SEED)
        self.app = make_app(
            self.node,
            commands=CommandFactory(clock=lambda: self.now, new_id=lambda: next(ids)),
            auth=Authenticator(KEY, metrics_auth=self.metrics_auth, clock=lambda: self.now),
            tokens=TokenFactory(clock=lambda: self.now, random_bytes=rng.randbytes),
        )
        return self.app

    def get_http_server(self) -> HTTPServer:
        return make_server(self.app)

    def call(self, method: str, path: str, body: Any = None, *, auth: str | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any, HTTPResponse]:
        data = None if body is None else json.dumps(body).encode()
        if data is None and method in ("POST", "PUT", "PATCH"):
            data = b""
        h = {"Content-Type": "application/json", **(headers or {})}
        if auth is not None:
            h["Authorization"] = auth
        resp = self.fetch(path, method=method, body=data, headers=h, raise_error=False,
                          allow_nonstandard_methods=True)
        parsed = json.loads(resp.body) if resp.body and resp.headers.get(
            "Content-Type", "").startswith("application/json") else None
        return resp.code, parsed, resp

    def admin(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        code, out, _ = self.call(method, path, body, auth=f"Bearer {KEY}", **kw)
        return code, out

    def make_token(self, name: str, role: str, namespaces: list[str] | None = None,
                   **extra: Any) -> tuple[str, str]:
        """(id, secret) of a new token, created with the bootstrap key."""
        body: dict[str, Any] = {"name": name, "role": role, **extra}
        if namespaces is not None:
            body["namespaces"] = namespaces
        code, out = self.admin("POST", "/api/v1/tokens", body)
        assert code == 201, out
        return out["id"], out["secret"]

    def failures(self) -> dict[str, float]:
        _, _, resp = self.call("GET", "/metrics", auth=f"Bearer {KEY}")
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(resp.body.decode()):
            for s in family.samples:
                if s.name == "prisn_http_auth_failures_total":
                    out[s.labels["reason"]] = s.value
        return out

    def assert_refused(self, code: int, body: Any, resp: HTTPResponse, status: int) -> None:
        assert code == status, (code, body)
        assert body["error"] == {401: "Unauthorized", 403: "Forbidden"}[status], body
        assert isinstance(body["message"], str) and body["message"], body
        assert resp.headers["X-Prisn-Node"] == "node1"
        if status == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Bearer"), resp.headers
        else:
            assert "WWW-Authenticate" not in resp.headers
