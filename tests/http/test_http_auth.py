"""API authentication and roles against FakeNodeClient: every route tried with every kind of
credential (none, garbage, wrong secret, unknown, revoked, expired, viewer, developer in and out
of its namespace, admin, the bootstrap key), token management, and refused requests changing
nothing."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

from tornado.testing import AsyncHTTPTestCase

from actors.api.app import make_app
from actors.api.node import FakeNodeClient
from prisn.fsm.commands import format_ts
from tests.http.authcase import KEY, T0, AuthCase, three_nodes

JSON = {"Content-Type": "application/json"}







# ---------------------------------------------------------------------- every role, every route
@dataclass(frozen=True)
class Route:
    method: str
    path: str
    body: Any
    perm: str  # open, metrics, auth (any valid), read, write, admin
    ns: str | None  # namespace the request targets (read/write), None: not namespaced
    ok: int  # the status an allowed caller gets


@dataclass(frozen=True)
class Cred:
    label: str
    role: str | None  # None: not a valid credential (401)
    namespaces: tuple[str, ...] | None  # None: all


NEW = {"name": "new", "source": "x"}
ROUTES: list[Route] = [
    Route("GET", "/health", None, "open", None, 200),
    Route("GET", "/ready", None, "open", None, 200),
    Route("GET", "/metrics", None, "metrics", None, 200),
    Route("GET", "/api/v1/cluster/status", None, "auth", None, 200),
    Route("GET", "/api/v1/cluster/health", None, "auth", None, 200),
    Route("GET", "/api/v1/openapi.json", None, "auth", None, 200),
    Route("DELETE", "/api/v1/cluster/nodes/node4", None, "admin", None, 204),
    Route("POST", "/api/v1/cluster/election", {"target": "node2"}, "admin", None, 202),
    Route("GET", "/api/v1/cluster/snapshot", None, "admin", None, 200),
    Route("GET", "/api/v1/deployments", None, "read", None, 200),
    Route("GET", "/api/v1/deployments?namespace=team", None, "read", "team", 200),
    Route("GET", "/api/v1/deployments?namespace=default", None, "read", "default", 200),
    Route("POST", "/api/v1/deployments", {**NEW, "namespace": "team"}, "write", "team", 201),
    Route("POST", "/api/v1/deployments?namespace=team", NEW, "write", "team", 201),
    Route("POST", "/api/v1/deployments", NEW, "write", "default", 201),
    Route("GET", "/api/v1/deployments/web?namespace=team", None, "read", "team", 200),
    Route("GET", "/api/v1/deployments/other", None, "read", "default", 200),
    Route("PUT", "/api/v1/deployments/web?namespace=team", {"source": "v2"}, "write", "team",
          200),
    Route("PUT", "/api/v1/deployments/other", {"source": "v2", "namespace": "default"},
          "write", "default", 200),
    Route("PATCH", "/api/v1/deployments/web?namespace=team", {"replicas": 3}, "write", "team",
          200),
    Route("PATCH", "/api/v1/deployments/other", {"replicas": 3}, "write", "default", 200),
    Route("DELETE", "/api/v1/deployments/web?namespace=team", None, "write", "team", 204),
    Route("DELETE", "/api/v1/deployments/other", None, "write", "default", 204),
    Route("POST", "/api/v1/deployments/web/scale?namespace=team", {"replicas": 2}, "write",
          "team", 200),
    Route("POST", "/api/v1/deployments/other/scale", {"replicas": 2}, "write", "default", 200),
    # jobs are never placed: an allowed caller gets past auth to the 404
    Route("GET", "/api/v1/deployments/web/logs?namespace=team", None, "read", "team", 404),
    Route("GET", "/api/v1/deployments/other/logs", None, "read", "default", 404),
    Route("GET", "/api/v1/tokens", None, "admin", None, 200),
    Route("POST", "/api/v1/tokens", {"name": "fresh", "role": "viewer", "namespaces": ["team"]},
          "admin", None, 201),
    Route("GET", "/api/v1/tokens/{dev}", None, "admin", None, 200),
    Route("POST", "/api/v1/tokens/{dev}/revoke", None, "admin", None, 200),
    Route("DELETE", "/api/v1/tokens/{dev}", None, "admin", None, 204),
    Route("GET", "/api/v1/tokens/0000000000000000", None, "admin", None, 404),
    Route("GET", "/api/v1/secrets", None, "read", None, 200),
    Route("GET", "/api/v1/secrets?namespace=team", None, "read", "team", 200),
    Route("POST", "/api/v1/secrets?namespace=team", {"name": "new", "data": {"K": "v"}},
          "write", "team", 201),
    Route("POST", "/api/v1/secrets", {"name": "new", "data": {"K": "v"}}, "write", "default",
          201),
    # values: developer and admin only (WRITE), in their namespaces
    Route("GET", "/api/v1/secrets/db?namespace=team", None, "write", "team", 200),
    Route("GET", "/api/v1/secrets/cfg", None, "write", "default", 200),
    Route("PUT", "/api/v1/secrets/db?namespace=team", {"data": {"K": "v2"}}, "write", "team",
          200),
    Route("DELETE", "/api/v1/secrets/cfg", None, "write", "default", 204),
    Route("GET", "/api/v2/nowhere", None, "auth", None, 404),
    Route("DELETE", "/health", None, "auth", None, 405),
    Route("PUT", "/api/v1/tokens", {}, "auth", None, 405),
]
CREDS: list[Cred] = [
    Cred("none", None, None), Cred("empty", None, None), Cred("basic", None, None),
    Cred("garbage", None, None), Cred("key-prefix", None, None), Cred("unknown-id", None, None),
    Cred("wrong-secret", None, None), Cred("revoked", None, None), Cred("expired", None, None),
    Cred("too-long", None, None),
    Cred("viewer", "viewer", ("team",)), Cred("developer", "developer", ("team",)),
    Cred("viewer-all", "viewer", None), Cred("developer-all", "developer", None),
    Cred("admin", "admin", None), Cred("bootstrap", "admin", None),
]


def expected(route: Route, cred: Cred, metrics_auth: bool) -> int:
    if route.perm == "open" or (route.perm == "metrics" and not metrics_auth):
        return route.ok
    if cred.role is None:
        return 401
    if route.perm == "admin" and cred.role != "admin":
        return 403
    if route.perm == "write" and cred.role == "viewer":
        return 403
    if route.perm in ("read", "write") and route.ns is not None and cred.namespaces is not None \
            and route.ns not in cred.namespaces:
        return 403
    return route.ok


class TestEveryRoleOnEveryRoute(AuthCase):
    def setup_fixture(self) -> dict[str, str]:
        """Deployments team/web and default/other, and one token per credential kind.
        Returns label -> Authorization header value."""
        assert self.admin("POST", "/api/v1/deployments?namespace=team",
                          {"name": "web", "source": "x"})[0] == 201
        assert self.admin("POST", "/api/v1/deployments", {"name": "other", "source": "x"})[0] \
            == 201
        assert self.admin("POST", "/api/v1/secrets", {"name": "db", "namespace": "team",
                                                      "data": {"K": "v"}})[0] == 201
        assert self.admin("POST", "/api/v1/secrets", {"name": "cfg", "data": {"K": "v"}})[0] \
            == 201
        headers: dict[str, str] = {}
        self.ids: dict[str, str] = {}
        for label, role, ns in [("viewer", "viewer", ["team"]),
                                ("developer", "developer", ["team"]),
                                ("viewer-all", "viewer", ["*"]),
                                ("developer-all", "developer", ["*"]),
                                ("admin", "admin", None), ("revoked", "developer", ["*"])]:
            self.ids[label], secret = self.make_token(label, role, ns)
            headers[label] = f"Bearer {secret}"
        _, secret = self.make_token("expired", "admin", None, expires_in="1h")
        headers["expired"] = f"Bearer {secret}"
        assert self.admin("POST", f"/api/v1/tokens/{self.ids['revoked']}/revoke")[0] == 200
        self.now = T0 + 3600  # the "expired" token's last instant has passed
        dev = headers["developer"].split()[1]
        headers.update({
            "none": "", "empty": "Bearer ", "basic": f"Basic {KEY}", "garbage": "Bearer garbage",
            "key-prefix": f"Bearer {KEY[:-1]}",
            "unknown-id": "Bearer prisn_00000000000000ff_" + "A" * 43,
            "wrong-secret": f"Bearer {dev[:-4]}AAAA" if not dev.endswith("AAAA")
            else f"Bearer {dev[:-4]}BBBB",
            "too-long": "Bearer " + "a" * 2000,
            "bootstrap": f"Bearer {KEY}",
        })
        return headers

    def snapshot_state(self) -> tuple[Any, ...]:
        n = self.node
        return (n.store.state_hash(), n.store.applied_index, len(n.proposals),
                list(n.transfers), list(n.removed), n.leader_id)

    def reset(self, base: bytes) -> None:
        n = self.node
        n.store.restore(base)
        n.nodes, n.leader_id, n.state = three_nodes(), "node1", "leader"

    def run_table(self, metrics_auth: bool) -> None:
        headers = self.setup_fixture()
        base = self.node.store.snapshot()
        seen: dict[str, set[int]] = {}
        for route, cred in itertools.product(ROUTES, CREDS):
            self.reset(base)
            before = self.snapshot_state()
            path = route.path.replace("{dev}", self.ids["developer"])
            hv = headers[cred.label]
            code, body, resp = self.call(route.method, path, route.body,
                                         auth=hv if cred.label != "none" else None)
            want = expected(route, cred, metrics_auth)
            where = f"{route.method} {path} as {cred.label}: {code} {body}"
            assert code == want, where
            seen.setdefault(cred.label, set()).add(code)
            if want in (401, 403):
                self.assert_refused(code, body, resp, want)
                assert self.snapshot_state() == before, f"refused but changed: {where}"
            elif route.method == "GET" and want == 200 and ("deployments" in path
                                                            or "secrets" in path):
                items = body["items"] if "items" in body else [body]
                for dep in items:
                    assert cred.namespaces is None or dep["namespace"] in cred.namespaces, where
            if route.method == "POST" and path == "/api/v1/tokens" and code == 201:
                assert body["secret"].startswith("prisn_"), where
        # every invalid credential was refused somewhere, every valid one allowed somewhere
        for cred in CREDS:
            assert (401 in seen[cred.label]) == (cred.role is None), cred.label

    def test_table(self) -> None:
        before = self.failures()
        self.run_table(metrics_auth=False)
        after = self.failures()
        for reason in ("missing", "malformed", "invalid", "revoked", "expired", "forbidden"):
            assert after.get(reason, 0) > before.get(reason, 0), (reason, after)
        assert "unknown" not in after, after  # an unknown id is "invalid" too (issue 17)


class TestNoTokenIdOracle(AuthCase):
    """Issue 17 item 8: /metrics must not tell a made-up token id from a real id with a wrong
    secret; only the node's log (rate-limited) keeps the difference."""

    def test_unknown_id_and_wrong_secret_look_alike(self) -> None:
        tid, secret = self.make_token("ci", "developer", ["team"])
        wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
        made_up = "prisn_00000000000000ff_" + "A" * 43
        before = self.failures()
        answers = []
        with self.assertLogs("prisn.api", "WARNING") as logs:
            for cred in (made_up, wrong, made_up, wrong):
                code, body, resp = self.call("GET", "/api/v1/deployments",
                                             auth=f"Bearer {cred}")
                answers.append((code, body, resp.headers["WWW-Authenticate"]))
        assert answers[0] == answers[1] == answers[2] == answers[3], answers
        assert answers[0][0] == 401
        after = self.failures()
        assert after.get("invalid", 0) - before.get("invalid", 0) == 4, after
        assert "unknown" not in after, after
        text = "\n".join(logs.output)
        # one line per kind within the interval; the log names what the metric hides
        assert text.count("unknown token id 00000000000000ff") == 1, text
        assert text.count(f"wrong secret for token {tid} (ci)") == 1, text
        assert secret not in text and wrong not in text


class TestEveryRoleOnEveryRouteMetricsAuth(TestEveryRoleOnEveryRoute):
    metrics_auth = True

    def test_table(self) -> None:
        self.run_table(metrics_auth=True)


# ---------------------------------------------------------------------- token management
class TestTokens(AuthCase):
    def test_create_shape_and_secret_shown_once(self) -> None:
        code, out = self.admin("POST", "/api/v1/tokens", {"name": "ci", "role": "developer",
                                                           "namespaces": ["b", "a"],
                                                           "expires_in": "24h"})
        assert code == 201
        assert list(out)[:7] == ["id", "name", "role", "namespaces", "secret", "created_at",
                                 "expires_at"]
        assert out["namespaces"] == ["a", "b"] and out["role"] == "developer"
        assert out["created_at"] == format_ts(T0) and out["expires_at"] == format_ts(T0 + 86400)
        assert out["secret"].startswith(f"prisn_{out['id']}_")
        assert (out["revoked"], out["revoked_at"], out["expired"]) == (False, None, False)
        secret = out["secret"]
        # never again: not in the list, not in a get, not in the stored state
        for path in ("/api/v1/tokens", f"/api/v1/tokens/{out['id']}"):
            _, _, resp = self.call("GET", path, auth=f"Bearer {KEY}")
            assert resp.code == 200 and secret.encode() not in resp.body
            assert b'"hash"' not in resp.body and b'"secret"' not in resp.body
        assert secret.encode() not in self.node.store.snapshot()
        assert all(secret not in json.dumps(p) for p in self.node.proposals)
        code, listing = self.admin("GET", "/api/v1/tokens")
        assert listing["count"] == 1
        assert listing["items"][0] == {k: v for k, v in out.items() if k != "secret"}
        # and the secret works
        code, _, _ = self.call("GET", "/api/v1/deployments", auth=f"Bearer {secret}")
        assert code == 200

    def test_admin_token_defaults_to_all_namespaces_and_never_expires(self) -> None:
        code, out = self.admin("POST", "/api/v1/tokens", {"name": "root", "role": "admin"})
        assert code == 201 and out["namespaces"] == ["*"] and out["expires_at"] is None
        self.now = T0 + 10 * 365 * 86400
        code, _, _ = self.call("GET", "/api/v1/tokens", auth=f"Bearer {out['secret']}")
        assert code == 200

    def test_validation_400_names_the_field_and_proposes_nothing(self) -> None:
        cases: list[tuple[Any, str]] = [
            ({"role": "viewer", "namespaces": ["a"]}, "name"),
            ({"name": "bad name", "role": "viewer", "namespaces": ["a"]}, "name"),
            ({"name": "x", "role": "owner"}, "role"),
            ({"name": "x"}, "role"),
            ({"name": "x", "role": "viewer"}, "namespaces"),
            ({"name": "x", "role": "viewer", "namespaces": []}, "namespaces"),
            ({"name": "x", "role": "viewer", "namespaces": ["*", "a"]}, "namespaces"),
            ({"name": "x", "role": "admin", "namespaces": ["a"]}, "namespaces"),
            ({"name": "x", "role": "admin", "expires_in": "1w"}, "expires_in"),
            ({"name": "x", "role": "admin", "expires_in": "400d"}, "expires_in"),
            ({"name": "x", "role": "admin", "expires_in": 3600}, "expires_in"),
            ({"name": "x", "role": "admin", "secret": "mine"}, "secret"),
            ([1], "body"),
        ]
        for body, field in cases:
            code, err = self.admin("POST", "/api/v1/tokens", body)
            assert code == 400 and err["error"] == "Bad Request", (body, err)
            assert field in err["message"], (body, err)
        code, _, _ = self.call("POST", "/api/v1/tokens", auth=f"Bearer {KEY}")
        assert code == 400
        assert self.node.proposals == [] and self.node.store.token_count() == 0

    def test_duplicate_name_409_and_unknown_id_404(self) -> None:
        self.make_token("ci", "viewer", ["a"])
        code, err = self.admin("POST", "/api/v1/tokens", {"name": "ci", "role": "admin"})
        assert code == 409 and err["error"] == "Conflict" and "ci" in err["message"]
        for method, path in [("GET", "/api/v1/tokens/00000000000000aa"),
                             ("GET", "/api/v1/tokens/not-an-id"),
                             ("POST", "/api/v1/tokens/00000000000000aa/revoke"),
                             ("POST", "/api/v1/tokens/x/revoke"),
                             ("DELETE", "/api/v1/tokens/00000000000000aa"),
                             ("DELETE", "/api/v1/tokens/" + "z" * 300)]:
            code, err = self.admin(method, path)
            assert code == 404 and err["error"] == "Not Found", (method, path, err)
            assert len(err["message"]) < 200

    def test_revoke_then_delete(self) -> None:
        tid, secret = self.make_token("ci", "developer", ["*"])
        bearer = f"Bearer {secret}"
        assert self.call("GET", "/api/v1/deployments", auth=bearer)[0] == 200
        self.now = T0 + 5
        code, out = self.admin("POST", f"/api/v1/tokens/{tid}/revoke")
        assert code == 200 and out["revoked"] and out["revoked_at"] == format_ts(T0 + 5)
        code, err, resp = self.call("GET", "/api/v1/deployments", auth=bearer)
        self.assert_refused(code, err, resp, 401)
        assert "revoked" in err["message"]
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
        code, again = self.admin("POST", f"/api/v1/tokens/{tid}/revoke", {})
        assert code == 200 and again["revoked_at"] == out["revoked_at"]
        code, err = self.admin("POST", f"/api/v1/tokens/{tid}/revoke", {"why": "x"})
        assert code == 400
        code, listed = self.admin("GET", f"/api/v1/tokens/{tid}")
        assert listed["revoked"] is True
        code, _, resp = self.call("DELETE", f"/api/v1/tokens/{tid}", auth=f"Bearer {KEY}")
        assert code == 204 and resp.body == b""
        assert self.admin("GET", f"/api/v1/tokens/{tid}")[0] == 404
        code, err, resp = self.call("GET", "/api/v1/deployments", auth=bearer)
        self.assert_refused(code, err, resp, 401)

    def test_expiry_is_judged_by_the_node_clock(self) -> None:
        tid, secret = self.make_token("short", "viewer", ["*"], expires_in="30m")
        bearer = f"Bearer {secret}"
        self.now = T0 + 1799.9
        assert self.call("GET", "/api/v1/cluster/status", auth=bearer)[0] == 200
        assert self.admin("GET", f"/api/v1/tokens/{tid}")[1]["expired"] is False
        self.now = T0 + 1800
        code, err, resp = self.call("GET", "/api/v1/cluster/status", auth=bearer)
        self.assert_refused(code, err, resp, 401)
        assert "expired" in err["message"]
        assert self.admin("GET", f"/api/v1/tokens/{tid}")[1]["expired"] is True

    def test_idempotent_create_retry_does_not_reveal_a_new_secret(self) -> None:
        h = {"Idempotency-Key": "tok-1"}
        body = {"name": "ci", "role": "viewer", "namespaces": ["a"]}
        code, first = self.admin("POST", "/api/v1/tokens", body, headers=h)
        assert code == 201
        code, err = self.admin("POST", "/api/v1/tokens", body, headers=h)
        assert code == 409 and first["id"] in err["message"] and "secret" in err["message"]
        assert self.node.store.token_count() == 1
        code, err = self.admin("POST", "/api/v1/tokens", {**body, "name": "other"}, headers=h)
        assert code == 422
        # the first secret still works, the refused retries created nothing
        assert self.call("GET", "/api/v1/deployments?namespace=a",
                         auth=f"Bearer {first['secret']}")[0] == 200
        # revoke and delete dedup like deployment writes
        r = {"Idempotency-Key": "rev-1"}
        c1, b1 = self.admin("POST", f"/api/v1/tokens/{first['id']}/revoke", headers=r)
        self.now += 3
        c2, b2 = self.admin("POST", f"/api/v1/tokens/{first['id']}/revoke", headers=r)
        assert (c1, c2) == (200, 200) and b1["revoked_at"] == b2["revoked_at"]

    def test_tokens_list_is_sorted_by_name(self) -> None:
        for name in ("zeta", "alpha", "mid"):
            self.make_token(name, "viewer", ["*"])
        code, out = self.admin("GET", "/api/v1/tokens")
        assert [t["name"] for t in out["items"]] == ["alpha", "mid", "zeta"]


# ---------------------------------------------------------------------- namespaces
class TestNamespaces(AuthCase):
    def setup_deployments(self) -> None:
        for i in range(9):
            ns = ("a", "b", "c")[i % 3]
            code, out = self.admin("POST", f"/api/v1/deployments?namespace={ns}",
                                   {"name": f"d{i}", "source": "x"})
            assert code == 201, out

    def test_namespace_less_list_returns_only_own_namespaces(self) -> None:
        self.setup_deployments()
        _, secret = self.make_token("ac", "viewer", ["a", "c"])
        bearer = f"Bearer {secret}"
        code, page, _ = self.call("GET", "/api/v1/deployments", auth=bearer)
        assert code == 200 and page["total"] == 6
        assert [d["name"] for d in page["items"]] == ["d0", "d2", "d3", "d5", "d6", "d8"]
        code, page, _ = self.call("GET", "/api/v1/deployments?limit=2&offset=3", auth=bearer)
        assert [d["name"] for d in page["items"]] == ["d5", "d6"] and page["total"] == 6
        code, page, _ = self.call("GET", "/api/v1/deployments?namespace=c", auth=bearer)
        assert [d["name"] for d in page["items"]] == ["d2", "d5", "d8"]
        code, err, resp = self.call("GET", "/api/v1/deployments?namespace=b", auth=bearer)
        self.assert_refused(code, err, resp, 403)
        assert "namespace b" in err["message"]
        _, secret_all = self.make_token("all", "viewer", ["*"])
        code, page, _ = self.call("GET", "/api/v1/deployments", auth=f"Bearer {secret_all}")
        assert page["total"] == 9

    def test_get_by_id_in_another_namespace_is_not_found(self) -> None:
        self.setup_deployments()
        dep = self.admin("GET", "/api/v1/deployments/d1?namespace=b")[1]
        _, secret = self.make_token("a-only", "developer", ["a"])
        bearer = f"Bearer {secret}"
        code, err, _ = self.call("GET", f"/api/v1/deployments/{dep['id']}", auth=bearer)
        assert code == 404 and err["error"] == "Not Found"
        assert self.call("GET", f"/api/v1/deployments/{dep['id']}",
                         auth=f"Bearer {KEY}")[0] == 200

    def test_namespace_from_the_body_is_checked_before_proposing(self) -> None:
        _, secret = self.make_token("a-dev", "developer", ["a"])
        bearer = f"Bearer {secret}"
        before = len(self.node.proposals)
        code, err, resp = self.call("POST", "/api/v1/deployments",
                                    {"name": "x", "source": "y", "namespace": "b"}, auth=bearer)
        self.assert_refused(code, err, resp, 403)
        assert "namespace b" in err["message"]
        code, err, resp = self.call("POST", "/api/v1/deployments", {"name": "x", "source": "y"},
                                    auth=bearer)
        self.assert_refused(code, err, resp, 403)  # no namespace: "default", not allowed
        assert len(self.node.proposals) == before
        code, out, _ = self.call("POST", "/api/v1/deployments",
                                 {"name": "x", "source": "y", "namespace": "a"}, auth=bearer)
        assert code == 201 and out["namespace"] == "a"

    def test_a_refused_body_is_not_parsed(self) -> None:
        # malformed JSON from a caller without a valid token: 401, not 400
        code, err, _ = self.call("POST", "/api/v1/deployments", None,
                                 headers={"Content-Length": "1"}, auth="Bearer nope")
        assert code == 401
        resp = self.fetch("/api/v1/deployments", method="POST", body=b"{not json",
                          headers={"Authorization": "Bearer nope"}, raise_error=False)
        assert resp.code == 401
        _, secret = self.make_token("v", "viewer", ["*"])
        resp = self.fetch("/api/v1/deployments", method="POST", body=b"{not json",
                          headers={"Authorization": f"Bearer {secret}"}, raise_error=False)
        assert resp.code == 403


class TestBearerParsing(AuthCase):
    def test_scheme_is_case_insensitive_and_key_exact(self) -> None:
        for hv in (f"bearer {KEY}", f"BEARER {KEY}", f"Bearer   {KEY}  "):
            assert self.call("GET", "/api/v1/cluster/status", auth=hv)[0] == 200, hv
        for hv in (f"Bearer {KEY}x", f"Bearer x{KEY}", f"Bearer {KEY.upper()}",
                   f"Bearer {KEY} {KEY}", f"Token {KEY}", KEY, "Bearer \u00e9t\u00e9"):
            code, err, resp = self.call("GET", "/api/v1/cluster/status", auth=hv)
            self.assert_refused(code, err, resp, 401)

    def test_missing_has_a_plain_challenge(self) -> None:
        code, err, resp = self.call("GET", "/api/v1/deployments")
        self.assert_refused(code, err, resp, 401)
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="prisn"'
        assert "Authorization: Bearer" in err["message"]


class TestOpenApi(AsyncHTTPTestCase):
    """Without an API key the API is open: headers are ignored and tokens still work."""

    def get_app(self) -> Any:
        self.node = FakeNodeClient("node1")
        self.app = make_app(self.node)
        return self.app

    def test_open(self) -> None:
        for hv in (None, "Bearer garbage", "Basic x"):
            headers = {"Authorization": hv} if hv else {}
            for method, path, body in [
                ("GET", "/api/v1/deployments", None), ("GET", "/api/v1/cluster/status", None),
                ("GET", "/api/v1/tokens", None),
            ]:
                resp = self.fetch(path, method=method, body=body, headers=headers,
                                  raise_error=False)
                assert resp.code == 200, (hv, path, resp.body)
        resp = self.fetch("/api/v1/tokens", method="POST", raise_error=False, headers=JSON,
                          body=json.dumps({"name": "t", "role": "viewer", "namespaces": ["a"]}))
        assert resp.code == 201 and json.loads(resp.body)["secret"].startswith("prisn_")
        assert self.node.store.token_count() == 1


def test_auth_failure_log_is_rate_limited_per_kind() -> None:
    import logging

    from actors.api.auth import AuthFailureLog, Unauthorized

    now = [0.0]
    records: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Grab()
    logging.getLogger("prisn.api").addHandler(handler)
    try:
        flog = AuthFailureLog(interval=10.0, clock=lambda: now[0])
        unknown = Unauthorized("x", reason="invalid", kind="unknown_id", detail="unknown id 1")
        for _ in range(5):
            flog.note(unknown, "10.0.0.9")
        flog.note(Unauthorized("x", reason="missing"), "10.0.0.9")  # no kind: not logged
        now[0] = 10.5
        flog.note(unknown, "10.0.0.9")
    finally:
        logging.getLogger("prisn.api").removeHandler(handler)
    assert len(records) == 2, records
    assert "10.0.0.9" in records[0] and "unknown id 1" in records[0]
    assert "4 more such refusals" in records[1], records


class TestStrongReadsShareBarriersWithAuth(AuthCase):
    """With an API key the fast paths are off, so every strong read goes through the Tornado
    handlers: they must share read barriers too (the node client batches them)."""

    N = 16

    def test_concurrent_strong_reads_share_one_or_two_barriers(self) -> None:
        import asyncio

        assert self.admin("POST", "/api/v1/deployments", {"name": "web", "source": "x"})[0] == 201
        _, secret = self.make_token("viewer", "viewer", ["*"])
        port = self.get_http_port()
        req = (f"GET /api/v1/deployments/web HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Authorization: Bearer {secret}\r\nX-Prisn-Consistency: strong\r\n"
               f"Connection: close\r\n\r\n").encode()
        node = self.node
        before_calls, before_joins = node.read_barriers, node.barriers.joins

        async def one() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(req)
            out = await reader.read()
            writer.close()
            return out

        async def many() -> list[bytes]:
            node.read_gate = asyncio.Event()  # barrier calls wait until every read joined
            tasks = [asyncio.ensure_future(one()) for _ in range(self.N)]
            deadline = asyncio.get_running_loop().time() + 30
            while node.barriers.joins - before_joins < self.N:
                assert asyncio.get_running_loop().time() < deadline, "reads did not all join"
                await asyncio.sleep(0.005)
            node.read_gate.set()
            return list(await asyncio.gather(*tasks))

        outs = self.io_loop.run_sync(many, timeout=60)
        assert all(o.startswith(b"HTTP/1.1 200 ") and o.endswith(b"}") for o in outs), outs
        # the first read's call, then at most one more for every read queued behind it
        assert 1 <= node.read_barriers - before_calls <= 2, node.read_barriers - before_calls
