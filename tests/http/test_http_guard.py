"""Cross-site requests and DNS rebinding (issue 17, item 5) against the HTTP API and a
FakeNodeClient: 415 for non-JSON bodies, 403 for foreign Origins, 421 for foreign Hosts,
CORS answers for allowed origins; each refusal proposes nothing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from actors.api.auth import Authenticator
from actors.api.guard import RequestGuard
from tests.http.cases import SPEC, ApiCase, parse

# (method, path, body) of every route that reads a body
BODY_ROUTES = [
    ("POST", "/api/v1/deployments", SPEC),  # the fast path's request
    ("POST", "/api/v1/deployments?namespace=default", SPEC),
    ("PUT", "/api/v1/deployments/web", SPEC),
    ("PATCH", "/api/v1/deployments/web", {"replicas": 2}),
    ("POST", "/api/v1/deployments/web/scale", {"replicas": 3}),
    ("POST", "/api/v1/tokens", {"name": "t", "role": "admin"}),
    ("POST", "/api/v1/cluster/election", {"target": "node2"}),
]
BAD_TYPES = [None, "text/plain", "application/x-www-form-urlencoded",
             "multipart/form-data; boundary=x", "application/jsonp", ""]


class GuardCase(ApiCase):
    def raw(self, method: str, path: str, headers: dict[str, str | None],
            body: bytes = b"") -> tuple[int, dict[str, str], Any]:
        """One request on a fresh socket; a header given as None is left out."""
        lines = [f"{method} {path} HTTP/1.1"]
        headers = {"Host": f"127.0.0.1:{self.get_http_port()}", **headers}
        lines += [f"{k}: {v}" for k, v in headers.items() if v is not None]
        lines += [f"Content-Length: {len(body)}", "Connection: close"]
        data = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body

        async def exchange() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.get_http_port())
            try:
                writer.write(data)
                return await reader.read()  # until the server closes (Connection: close)
            finally:
                writer.close()

        out = self.io_loop.run_sync(exchange, timeout=10)
        reply = parse(out)
        assert reply is not None
        status, hdrs, payload = reply
        return status, hdrs, json.loads(payload) if payload else None

    def snapshot(self) -> tuple[Any, int, int]:
        return self.node.store.state_hash(), len(self.node.proposals), len(self.node.transfers)


class TestContentType(GuardCase):
    def test_a_body_that_is_not_json_is_415_and_changes_nothing(self) -> None:
        self.call("POST", "/api/v1/deployments", SPEC)
        before = self.snapshot()
        for method, path, body in BODY_ROUTES:
            for ctype in BAD_TYPES:
                status, hdrs, err = self.raw(method, path, {"Content-Type": ctype},
                                             json.dumps(body).encode())
                assert status == 415, (method, path, ctype, status, err)
                assert err["error"] == "Unsupported Media Type", err
                assert "application/json" in err["message"], err
                assert hdrs["x-prisn-node"] == "node1"
        assert self.snapshot() == before

    def test_json_with_parameters_is_accepted(self) -> None:
        for ctype in ("application/json", "application/json; charset=utf-8",
                      "Application/JSON;charset=UTF-8"):
            name = f"w{len(self.node.proposals)}"
            status, _, dep = self.raw("POST", "/api/v1/deployments", {"Content-Type": ctype},
                                      json.dumps({**SPEC, "name": name}).encode())
            assert status == 201 and dep["name"] == name, (ctype, status, dep)

    def test_a_request_without_a_body_needs_no_content_type(self) -> None:
        self.call("POST", "/api/v1/deployments", SPEC)
        assert self.raw("POST", "/api/v1/cluster/election", {})[0] == 202
        assert self.raw("DELETE", "/api/v1/deployments/web", {"Content-Type": "text/plain"}
                        )[0] == 204
        assert self.raw("GET", "/health", {})[0] == 200

    def test_415_comes_after_authentication(self) -> None:
        self.app.ctx.auth = Authenticator("k" * 32)
        assert self.raw("POST", "/api/v1/deployments", {"Content-Type": "text/plain"},
                        b"{}")[0] == 401
        status, _, _ = self.raw("POST", "/api/v1/deployments", {
            "Content-Type": "text/plain", "Authorization": "Bearer " + "k" * 32}, b"{}")
        assert status == 415 and self.node.proposals == []


class TestOriginRefused(GuardCase):
    """No --cors-origins (the default): any request carrying an Origin is refused."""

    def test_any_origin_is_403_on_every_route_and_changes_nothing(self) -> None:
        self.call("POST", "/api/v1/deployments", SPEC)
        before = self.snapshot()
        routes = [*BODY_ROUTES, ("GET", "/api/v1/deployments/web", None),
                  ("GET", "/health", None), ("GET", "/metrics", None),
                  ("DELETE", "/api/v1/deployments/web", None),
                  ("OPTIONS", "/api/v1/deployments", None)]
        for origin in ("https://evil.example", "null", "http://127.0.0.1"):
            for method, path, body in routes:
                data = b"" if body is None else json.dumps(body).encode()
                status, hdrs, err = self.raw(method, path, {
                    "Origin": origin, "Content-Type": "application/json",
                    "Access-Control-Request-Method": "POST"}, data)
                assert status == 403, (origin, method, path, status, err)
                assert "--cors-origins" in err["message"], err
                assert "access-control-allow-origin" not in hdrs
                assert "vary" not in hdrs  # no CORS configured: nothing varies
        assert self.snapshot() == before

    def test_a_request_without_origin_is_served(self) -> None:
        assert self.raw("GET", "/api/v1/deployments", {})[0] == 200


class TestCors(GuardCase):
    ORIGIN = "https://app.example"

    def get_app(self) -> Any:
        app = super().get_app()
        app.ctx.guard = RequestGuard.build(origins=[self.ORIGIN])
        return app

    def test_an_allowed_origin_gets_its_answer_with_cors_headers(self) -> None:
        status, hdrs, dep = self.raw("POST", "/api/v1/deployments", {
            "Origin": self.ORIGIN, "Content-Type": "application/json"},
            json.dumps(SPEC).encode())
        assert status == 201 and dep["name"] == "web"
        assert hdrs["access-control-allow-origin"] == self.ORIGIN
        assert hdrs["vary"] == "Origin"
        assert "X-Prisn-Leader" in hdrs["access-control-expose-headers"]
        status, hdrs, _ = self.raw("GET", "/api/v1/deployments/web", {"Origin": self.ORIGIN})
        assert status == 200 and hdrs["access-control-allow-origin"] == self.ORIGIN
        # errors carry them too, so the page can read the message
        status, hdrs, err = self.raw("GET", "/api/v1/deployments/nope", {"Origin": self.ORIGIN})
        assert status == 404 and hdrs["access-control-allow-origin"] == self.ORIGIN

    def test_every_answer_varies_on_origin(self) -> None:
        for path in ("/api/v1/deployments/web", "/health", "/api/v1/deployments"):
            assert self.raw("GET", path, {})[1].get("vary") == "Origin", path

    def test_a_preflight_from_an_allowed_origin_is_204_without_credentials(self) -> None:
        self.app.ctx.auth = Authenticator("k" * 32)  # a preflight carries no credentials
        status, hdrs, body = self.raw("OPTIONS", "/api/v1/deployments/web", {
            "Origin": self.ORIGIN, "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type, authorization"})
        assert status == 204 and body is None
        assert hdrs["access-control-allow-origin"] == self.ORIGIN
        methods = {m.strip() for m in hdrs["access-control-allow-methods"].split(",")}
        assert methods == {"GET", "PUT", "PATCH", "DELETE"}
        allowed = {h.strip().lower() for h in hdrs["access-control-allow-headers"].split(",")}
        assert {"content-type", "authorization", "idempotency-key"} <= allowed
        assert int(hdrs["access-control-max-age"]) > 0
        # the actual request still needs its token
        assert self.raw("PUT", "/api/v1/deployments/web", {
            "Origin": self.ORIGIN, "Content-Type": "application/json"}, b"{}")[0] == 401

    def test_options_that_is_no_preflight_is_still_405(self) -> None:
        assert self.raw("OPTIONS", "/api/v1/deployments", {"Origin": self.ORIGIN})[0] == 405
        assert self.raw("OPTIONS", "/no/such", {
            "Origin": self.ORIGIN, "Access-Control-Request-Method": "GET"})[0] == 404

    def test_another_origin_is_still_refused(self) -> None:
        for origin in ("https://evil.example", "http://app.example", "https://app.example.evil"):
            status, hdrs, _ = self.raw("POST", "/api/v1/deployments", {
                "Origin": origin, "Content-Type": "application/json"}, json.dumps(SPEC).encode())
            assert status == 403 and "access-control-allow-origin" not in hdrs
        assert self.node.proposals == []


class TestHost(GuardCase):
    """Auth off: the Host must name the node (own names, IP literals, --allowed-hosts)."""

    def get_app(self) -> Any:
        app = super().get_app()
        app.ctx.guard = RequestGuard.build(own=["node1.local"], allowed_hosts=["api.example"])
        return app

    def test_a_foreign_host_is_421_and_changes_nothing(self) -> None:
        self.call("POST", "/api/v1/deployments", SPEC)
        before = self.snapshot()
        for host in ("evil.example", "evil.example:7331", "node1.local.evil.example"):
            for method, path, body in [*BODY_ROUTES, ("GET", "/api/v1/deployments/web", None),
                                       ("DELETE", "/api/v1/deployments/web", None),
                                       ("GET", "/health", None)]:
                data = b"" if body is None else json.dumps(body).encode()
                status, hdrs, err = self.raw(method, path, {
                    "Host": host, "Content-Type": "application/json"}, data)
                assert status == 421, (host, method, path, status, err)
                assert err["error"] == "Misdirected Request"
                assert "--allowed-hosts" in err["message"] and host in err["message"], err
                assert hdrs["x-prisn-node"] == "node1"
        assert self.snapshot() == before

    def test_own_names_ip_addresses_and_allowed_hosts_are_served(self) -> None:
        for host in ("localhost:7331", "127.0.0.1", "[::1]:1", "10.1.2.3:7331", "NODE1.local.",
                     "api.example:80"):
            assert self.raw("GET", "/api/v1/deployments", {"Host": host})[0] == 200, host
        status, _, dep = self.raw("POST", "/api/v1/deployments", {
            "Host": "api.example", "Content-Type": "application/json"}, json.dumps(SPEC).encode())
        assert status == 201 and dep["name"] == "web"
