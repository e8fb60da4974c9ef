"""Secret routes against FakeNodeClient: shapes (201 / list / values / 200 rotate / 204),
404s, 400s and 413s that propose nothing, Idempotency-Key, deployments naming secrets, and
values sealed by the API before they are proposed (roles: tests/http/test_http_auth.py)."""

from __future__ import annotations

import cbor2

from prisn.fsm.secrets import MAX_VALUE_BYTES, SecretFactory
from prisn.secretbox import SecretBox
from tests.http.cases import ApiCase

PLAIN = "s3cr3t-value-never-listed"


class TestSecrets(ApiCase):
    def test_create_list_get_rotate_delete(self) -> None:
        code, body, resp = self.call("POST", "/api/v1/secrets",
                                     {"name": "db", "data": {"PASSWORD": PLAIN, "USER": "u"}})
        assert code == 201, body
        assert body["name"] == "db" and body["namespace"] == "default"
        assert body["keys"] == ["PASSWORD", "USER"] and body["version"] == 1 and body["id"]
        assert PLAIN not in resp.body.decode()
        self.assert_node_headers(resp)
        code, body, _ = self.call("POST", "/api/v1/secrets?namespace=team",
                                  {"name": "api", "data": {"TOKEN": "t"}})
        assert code == 201 and body["namespace"] == "team"
        code, listing, resp = self.call("GET", "/api/v1/secrets")
        assert code == 200
        assert set(listing) == {"items", "count", "total", "limit", "offset"}
        assert [(i["namespace"], i["name"]) for i in listing["items"]] == [
            ("default", "db"), ("team", "api")]
        assert listing["count"] == 2 and listing["total"] == 2
        assert PLAIN not in resp.body.decode() and "data" not in listing["items"][0]
        code, listing, _ = self.call("GET", "/api/v1/secrets?namespace=team&limit=1")
        assert [i["name"] for i in listing["items"]] == ["api"] and listing["limit"] == 1
        code, one, _ = self.call("GET", "/api/v1/secrets/db")
        assert code == 200 and one["data"] == {"PASSWORD": PLAIN, "USER": "u"}
        assert one["encrypted"] is False
        code, one, _ = self.call("PUT", "/api/v1/secrets/db", {"data": {"PASSWORD": "p2"}})
        assert code == 200 and one["version"] == 2 and one["keys"] == ["PASSWORD"]
        code, one, _ = self.call("GET", "/api/v1/secrets/db")
        assert one["data"] == {"PASSWORD": "p2"}
        code, _, resp = self.call("DELETE", "/api/v1/secrets/db")
        assert code == 204 and not resp.body
        code, body, resp = self.call("GET", "/api/v1/secrets/db")
        self.assert_error(404, body, resp, "Not Found", contains="default/db")

    def test_not_found_and_conflicts(self) -> None:
        for method, body in (("GET", None), ("PUT", {"data": {"A": "1"}}), ("DELETE", None)):
            code, out, resp = self.call(method, "/api/v1/secrets/nope", body)
            self.assert_error(404, out, resp, "Not Found", contains="nope")
        assert self.call("POST", "/api/v1/secrets", {"name": "a", "data": {"A": "1"}})[0] == 201
        code, out, resp = self.call("POST", "/api/v1/secrets", {"name": "a", "data": {"A": "2"}})
        self.assert_error(409, out, resp, "Conflict", contains="already exists")

    def test_bad_requests_propose_nothing(self) -> None:
        before = len(self.node.proposals)
        cases = [
            ({"name": "bad name", "data": {"A": "1"}}, 400, "name"),
            ({"data": {"A": "1"}}, 400, "name"),
            ({"name": "a"}, 400, "data"),
            ({"name": "a", "data": {}}, 400, "data"),
            ({"name": "a", "data": {"1A": "1"}}, 400, "key"),
            ({"name": "a", "data": {"A": 1}}, 400, "string"),
            ({"name": "a", "data": {"A": "x"}, "other": 1}, 400, "unknown field"),
            ({"name": "a", "data": {"A": "x" * (MAX_VALUE_BYTES + 1)}}, 413, "over the limit"),
        ]
        for body, status, text in cases:
            code, out, resp = self.call("POST", "/api/v1/secrets", body)
            reason = "Bad Request" if status == 400 else "Request Entity Too Large"
            self.assert_error(status, out, resp, reason, contains=text)
            assert "x" * 100 not in resp.body.decode()
        code, out, resp = self.call("POST", "/api/v1/secrets?namespace=bad!", {"name": "a"})
        self.assert_error(400, out, resp, "Bad Request", contains="namespace")
        code, out, resp = self.call("PUT", "/api/v1/secrets/a", {"name": "b", "data": {"A": "1"}})
        self.assert_error(400, out, resp, "Bad Request", contains="renamed")
        code, out, resp = self.call("GET", "/api/v1/secrets?limit=-1")
        self.assert_error(400, out, resp, "Bad Request", contains="limit")
        assert len(self.node.proposals) == before

    def test_idempotency_key(self) -> None:
        h = {"Idempotency-Key": "req-1"}
        first = self.call("POST", "/api/v1/secrets", {"name": "a", "data": {"A": "1"}},
                          headers=h)
        again = self.call("POST", "/api/v1/secrets", {"name": "a", "data": {"A": "1"}},
                          headers=h)
        assert first[0] == again[0] == 201 and first[1] == again[1]
        code, out, resp = self.call("POST", "/api/v1/secrets", {"name": "a", "data": {"A": "2"}},
                                    headers=h)
        self.assert_error(422, out, resp, "Unprocessable Entity")

    def test_deployment_naming_a_missing_secret_is_400(self) -> None:
        code, out, resp = self.call("POST", "/api/v1/deployments",
                                    {"name": "web", "source": "x", "secrets": ["db"]})
        self.assert_error(400, out, resp, "Bad Request", contains="secret default/db does not")
        assert self.call("POST", "/api/v1/secrets", {"name": "db", "data": {"A": "1"}})[0] == 201
        code, dep, _ = self.call("POST", "/api/v1/deployments",
                                 {"name": "web", "source": "x", "secrets": ["db"]})
        assert code == 201 and dep["secrets"] == ["db"]
        code, out, resp = self.call("DELETE", "/api/v1/secrets/db")
        self.assert_error(409, out, resp, "Conflict", contains="used by 1 deployment")


class TestSealedSecrets(ApiCase):
    def get_app(self):  # type: ignore[no-untyped-def]
        app = super().get_app()
        app.ctx.secrets = SecretFactory(SecretBox(bytes(range(7, 39))))
        return app

    def test_values_are_sealed_before_they_are_proposed(self) -> None:
        code, _, _ = self.call("POST", "/api/v1/secrets", {"name": "db", "data": {"P": PLAIN}})
        assert code == 201
        cmd = self.node.proposals[-1]
        assert type(cmd["data"]["P"]) is bytes
        assert PLAIN.encode() not in cbor2.dumps(cmd)
        assert PLAIN.encode() not in self.node.store.snapshot()
        code, one, _ = self.call("GET", "/api/v1/secrets/db")
        assert code == 200 and one["data"] == {"P": PLAIN} and one["encrypted"] is True
        # a node with another key cannot open it: a 500 that names no value
        self.app.ctx.secrets = SecretFactory(SecretBox(bytes(range(8, 40))))
        code, out, resp = self.call("GET", "/api/v1/secrets/db")
        self.assert_error(500, out, resp, "Internal Server Error", contains="does not decrypt")
        assert PLAIN not in resp.body.decode()
