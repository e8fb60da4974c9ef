"""Artifact routes against FakeNodeClient: upload (201 / 200 dedup), bounds (413), digest
mismatch (400), unsafe archives, reads (bytes, 404, list shape), deployments naming them,
and the roles that may upload."""

from __future__ import annotations

import itertools
from typing import Any

from tornado.httpclient import HTTPResponse

from actors.api.quotas import Quotas
from prisn.workloads.artifacts import ArtifactFile, digest_of, pack
from tests.http.authcase import AuthCase
from tests.http.cases import ApiCase

OCTET = {"Content-Type": "application/octet-stream"}


def archive(text: str = "print('hi')\n") -> bytes:
    return pack([ArtifactFile("main.py", False, text.encode())])


class ArtifactCase(ApiCase):
    def upload(self, data: bytes, headers: dict[str, str] | None = None,
               query: str = "") -> tuple[int, Any, HTTPResponse]:
        return self.call("POST", f"/api/v1/artifacts{query}", raw=data,
                         headers={**OCTET, **(headers or {})})


class TestArtifacts(ArtifactCase):
    def test_upload_dedup_get_and_list(self) -> None:
        data = archive()
        digest = digest_of(data)
        code, body, resp = self.upload(data, {"X-Prisn-Digest": digest})
        assert code == 201, body
        assert body == {"digest": digest, "size": len(data),
                        "created_at": "2023-11-14T22:13:20.000Z"}
        self.assert_node_headers(resp)
        proposals = len(self.node.proposals)
        code, again, _ = self.upload(data, query=f"?digest=sha256:{digest}")
        assert (code, again) == (200, body)
        # the second upload proposed a put without the bytes
        assert len(self.node.proposals) == proposals + 1
        assert "data" not in self.node.proposals[-1]
        code, _, resp = self.call("GET", f"/api/v1/artifacts/{digest}")
        assert code == 200 and resp.body == data
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["X-Prisn-Digest"] == digest
        code, listing, _ = self.call("GET", "/api/v1/artifacts")
        assert code == 200
        assert listing == {"items": [{"digest": digest, "size": len(data),
                                      "created_at": body["created_at"], "refs": 0,
                                      "files": 1}],
                           "count": 1, "total": 1, "limit": 100, "offset": 0}
        code, page, _ = self.call("GET", "/api/v1/artifacts?limit=0&offset=1")
        assert code == 200 and page["items"] == [] and page["total"] == 1
        code, body, resp = self.call("GET", "/api/v1/artifacts?limit=5000")
        self.assert_error(400, body, resp, "Bad Request", contains="limit")

    def test_digest_mismatch_is_400_and_changes_nothing(self) -> None:
        data = archive()
        before = self.node.store.state_hash()
        code, body, resp = self.upload(data, {"X-Prisn-Digest": "0" * 64})
        self.assert_error(400, body, resp, "Bad Request", contains="digest mismatch")
        code, body, resp = self.upload(data, query="?digest=nothex")
        self.assert_error(400, body, resp, "Bad Request", contains="SHA-256")
        assert self.node.store.state_hash() == before and not self.node.proposals

    def test_unsafe_or_empty_archives_are_400(self) -> None:
        for raw, why in ((b"", "empty"), (b"\x02" * 2048, "not a valid tar")):
            code, body, resp = self.upload(raw)
            self.assert_error(400, body, resp, "Bad Request", contains=why)
        assert not self.node.proposals

    def test_wrong_content_type_is_415(self) -> None:
        code, body, resp = self.call("POST", "/api/v1/artifacts", raw=archive(),
                                     headers={"Content-Type": "text/plain"})
        self.assert_error(415, body, resp, "Unsupported Media Type",
                          contains="application/octet-stream")

    def test_missing_and_malformed_digest(self) -> None:
        code, body, resp = self.call("GET", f"/api/v1/artifacts/{'a' * 64}")
        self.assert_error(404, body, resp, "Not Found", contains="a" * 64)
        code, body, resp = self.call("GET", "/api/v1/artifacts/xyz")
        self.assert_error(400, body, resp, "Bad Request", contains="SHA-256")

    def test_deployment_names_an_artifact(self) -> None:
        data = archive()
        digest = digest_of(data)
        code, body, resp = self.call("POST", "/api/v1/deployments",
                                     {"name": "web", "source": "main.py", "artifact": digest})
        self.assert_error(400, body, resp, "Bad Request", contains="upload it first")
        code, body, resp = self.call("POST", "/api/v1/deployments",
                                     {"name": "web", "source": "main.py", "artifact": "zz"})
        self.assert_error(400, body, resp, "Bad Request", contains="artifact")
        assert self.upload(data)[0] == 201
        code, body, resp = self.call("POST", "/api/v1/deployments",
                                     {"name": "web", "source": "app.py", "artifact": digest})
        self.assert_error(400, body, resp, "Bad Request", contains="not a file")
        code, dep, _ = self.call("POST", "/api/v1/deployments",
                                 {"name": "web", "source": "main.py", "artifact": digest})
        assert code == 201 and dep["artifact"] == digest
        assert self.call("GET", "/api/v1/artifacts")[1]["items"][0]["refs"] == 1
        assert self.call("DELETE", "/api/v1/deployments/web")[0] == 204
        assert self.call("GET", f"/api/v1/artifacts/{digest}")[0] == 404  # collected


class TestArtifactBounds(ArtifactCase):
    def get_app(self) -> Any:
        app = super().get_app()
        app.ctx.quotas = Quotas(max_artifact_bytes=16 * 1024)
        return app

    def test_over_the_cap_is_413_before_anything_is_proposed(self) -> None:
        big = pack([ArtifactFile("main.py", False, b"x" * 20_000)])
        code, body, resp = self.upload(big)
        self.assert_error(413, body, resp, "Request Entity Too Large", contains=str(16 * 1024))
        assert not self.node.proposals
        small = archive()
        assert self.upload(small)[0] == 201

    def test_a_chunked_body_over_the_cap_is_413(self) -> None:
        big = pack([ArtifactFile("main.py", False, b"y" * 40_000)])

        raw = (b"POST /api/v1/artifacts HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(big), 8192):
            part = big[i:i + 8192]
            raw += f"{len(part):x}\r\n".encode() + part + b"\r\n"
        raw += b"0\r\n\r\n"
        out = self.raw(raw)
        assert out.startswith(b"HTTP/1.1 413"), out[:200]
        assert not self.node.proposals


class TestArtifactRoles(AuthCase):
    def test_upload_needs_developer_or_admin(self) -> None:
        ids = itertools.count()
        data = archive()
        tokens = {}
        for role, ns in (("viewer", ["*"]), ("developer", ["team"]), ("admin", None)):
            _, tokens[role] = self.make_token(f"t{next(ids)}", role, ns)

        def up(who: str) -> int:
            resp = self.fetch("/api/v1/artifacts", method="POST", body=data, raise_error=False,
                              headers={**OCTET, "Authorization": f"Bearer {tokens[who]}"})
            return resp.code

        assert self.fetch("/api/v1/artifacts", method="POST", body=data, headers=OCTET,
                          raise_error=False).code == 401
        assert up("viewer") == 403
        assert up("developer") == 201
        assert up("admin") == 200
        code, listing = self.admin("GET", "/api/v1/artifacts")
        assert code == 200 and listing["total"] == 1
        resp = self.fetch(f"/api/v1/artifacts/{digest_of(data)}",
                          headers={"Authorization": f"Bearer {tokens['viewer']}"})
        assert resp.code == 200 and resp.body == data
