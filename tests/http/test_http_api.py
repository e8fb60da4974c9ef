"""The HTTP API against FakeNodeClient: every route, status code, header and error shape."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tornado.testing import gen_test

from actors.api.errors import Unavailable
from tests.http.cases import JSON, SPEC, ApiCase


class TestDeployments(ApiCase):
    def test_create_get_by_name_and_id(self) -> None:
        code, dep, resp = self.call("POST", "/api/v1/deployments", SPEC)
        assert code == 201
        self.assert_node_headers(resp)
        assert dep["name"] == "web" and dep["type"] == "service" and dep["generation"] == 1
        assert dep["id"] == "id-2"  # id-1 went to the generated idempotency key
        assert dep["created_at"] == "2023-11-14T22:13:20.000Z"
        for path in ("/api/v1/deployments/web", f"/api/v1/deployments/{dep['id']}",
                     "/api/v1/deployments/web?namespace=default"):
            code, got, resp = self.call("GET", path)
            status = got.pop("status")  # reads of a service add its status (issue 14)
            assert (code, got) == (200, dep), path
            assert status["phase"] == "Pending" and status["instances"] == []
            assert "1 of 1 replicas not placed" in status["message"]
            self.assert_node_headers(resp)

    def test_get_missing_404(self) -> None:
        code, body, resp = self.call("GET", "/api/v1/deployments/nope")
        self.assert_error(404, body, resp, "Not Found", contains="nope")
        self.create()
        code, body, resp = self.call("GET", "/api/v1/deployments/web?namespace=other")
        self.assert_error(404, body, resp, "Not Found")

    def test_list_paging_and_filters(self) -> None:
        for i in range(5):
            self.create(name=f"d{i}", namespace="a" if i % 2 else "b",
                        port=0 if i < 3 else 2000)
        code, page, resp = self.call("GET", "/api/v1/deployments")
        assert code == 200
        self.assert_node_headers(resp)
        assert (page["count"], page["total"], page["limit"], page["offset"]) == (5, 5, 100, 0)
        assert [d["name"] for d in page["items"]] == ["d0", "d1", "d2", "d3", "d4"]
        _, page, _ = self.call("GET", "/api/v1/deployments?limit=2&offset=1")
        assert [d["name"] for d in page["items"]] == ["d1", "d2"]
        assert (page["count"], page["total"], page["limit"], page["offset"]) == (2, 5, 2, 1)
        _, page, _ = self.call("GET", "/api/v1/deployments?namespace=a")
        assert [d["name"] for d in page["items"]] == ["d1", "d3"] and page["total"] == 2
        _, page, _ = self.call("GET", "/api/v1/deployments?type=service")
        assert [d["name"] for d in page["items"]] == ["d3", "d4"]
        _, page, _ = self.call("GET", "/api/v1/deployments?type=job&namespace=b")
        assert [d["name"] for d in page["items"]] == ["d0", "d2"]
        _, page, _ = self.call("GET", "/api/v1/deployments?limit=1000&offset=99")
        assert page["items"] == [] and page["total"] == 5

    def test_list_bad_parameters_400(self) -> None:
        for query, field in [("limit=abc", "limit"), ("limit=-1", "limit"),
                             ("limit=1001", "limit"), ("offset=-3", "offset"),
                             ("offset=x", "offset"), ("type=daemon", "type"),
                             ("namespace=bad%20ns", "namespace")]:
            code, body, resp = self.call("GET", f"/api/v1/deployments?{query}")
            self.assert_error(400, body, resp, "Bad Request", contains=field)

    def test_patch_put_scale_delete(self) -> None:
        self.create(env={"A": "1"})
        code, dep, _ = self.call("PATCH", "/api/v1/deployments/web", {"replicas": 3})
        assert code == 200 and dep["replicas"] == 3 and dep["generation"] == 2
        assert dep["env"] == {"A": "1"}
        code, dep, _ = self.call("PUT", "/api/v1/deployments/web",
                                 {"source": "v2", "schedule": "@daily"})
        assert code == 200 and dep["generation"] == 3
        assert dep["type"] == "cronjob" and dep["env"] == {} and dep["port"] == 0
        code, dep, resp = self.call("POST", "/api/v1/deployments/web/scale", {"replicas": 9})
        assert code == 200 and dep["replicas"] == 9 and dep["generation"] == 4
        self.assert_node_headers(resp)
        code, body, resp = self.call("DELETE", "/api/v1/deployments/web")
        assert code == 204 and resp.body == b""
        self.assert_node_headers(resp)
        assert self.call("GET", "/api/v1/deployments/web")[0] == 404
        assert self.node.store.count() == 0

    def test_writes_on_missing_404(self) -> None:
        for method, path, body in [
            ("PATCH", "/api/v1/deployments/ghost", {"replicas": 1}),
            ("PUT", "/api/v1/deployments/ghost", {"source": "x"}),
            ("POST", "/api/v1/deployments/ghost/scale", {"replicas": 1}),
            ("DELETE", "/api/v1/deployments/ghost", None),
        ]:
            code, err, resp = self.call(method, path, body)
            self.assert_error(404, err, resp, "Not Found", contains="ghost")

    def test_namespaced_writes(self) -> None:
        self.create(namespace="team")
        code, dep, _ = self.call("PATCH", "/api/v1/deployments/web?namespace=team",
                                 {"replicas": 2})
        assert code == 200 and dep["namespace"] == "team"
        assert self.call("PATCH", "/api/v1/deployments/web", {"replicas": 2})[0] == 404
        code, body, resp = self.call("POST", "/api/v1/deployments?namespace=x",
                                     {**SPEC, "namespace": "y"})
        self.assert_error(400, body, resp, "Bad Request", contains="namespace")
        assert self.call("DELETE", "/api/v1/deployments/web?namespace=team")[0] == 204

    def test_duplicate_409(self) -> None:
        self.create()
        code, body, resp = self.call("POST", "/api/v1/deployments", SPEC)
        self.assert_error(409, body, resp, "Conflict", contains="default/web")

    def test_validation_400_names_field(self) -> None:
        cases = [
            ({**SPEC, "name": "bad name"}, "name"),
            ({"name": "x"}, "source"),
            ({**SPEC, "port": 80}, "port"),
            ({**SPEC, "replicas": True}, "replicas"),
            ({**SPEC, "env": {"1x": "y"}}, "env"),
            ({**SPEC, "args": [1]}, "args"),
            ({**SPEC, "schedule": "61 * * * *"}, "schedule"),
            ({**SPEC, "type": "daemon"}, "type"),
            ({**SPEC, "runtime": "x" * 40}, "runtime"),
            ({**SPEC, "colour": "red"}, "colour"),
        ]
        for body, field in cases:
            code, err, resp = self.call("POST", "/api/v1/deployments", body)
            self.assert_error(400, err, resp, "Bad Request", contains=field)
        self.create()
        writes: list[tuple[str, str, dict[str, Any], str]] = [
            ("PATCH", "/api/v1/deployments/web", {"replicas": -1}, "replicas"),
            ("PATCH", "/api/v1/deployments/web", {"name": "other"}, "name"),
            ("PUT", "/api/v1/deployments/web", {"port": 2000}, "source"),
            ("POST", "/api/v1/deployments/web/scale", {"replicas": 1001}, "replicas"),
            ("POST", "/api/v1/deployments/web/scale", {}, "replicas"),
            ("POST", "/api/v1/deployments/web/scale", {"replicas": 1, "x": 2}, "x"),
        ]
        for method, path, wbody, field in writes:
            code, err, resp = self.call(method, path, wbody)
            self.assert_error(400, err, resp, "Bad Request", contains=field)

    def test_malformed_json_400(self) -> None:
        for raw in [b"{", b"not json", b"", b"   ", b"[1,2]", b'"str"', b"\xff\xfe",
                    b'{"name": NaN}', b'{"replicas": Infinity}']:
            code, err, resp = self.call("POST", "/api/v1/deployments", raw=raw)
            self.assert_error(400, err, resp, "Bad Request")
        self.create()
        for method, path in [("PATCH", "/api/v1/deployments/web"),
                             ("PUT", "/api/v1/deployments/web"),
                             ("POST", "/api/v1/deployments/web/scale")]:
            code, err, resp = self.call(method, path, raw=b"{oops")
            self.assert_error(400, err, resp, "Bad Request", contains="JSON")

    def test_idempotency_key(self) -> None:
        h = {"Idempotency-Key": "req-42"}
        c1, d1, _ = self.call("POST", "/api/v1/deployments", SPEC, headers=h)
        c2, d2, _ = self.call("POST", "/api/v1/deployments", SPEC, headers=h)
        assert c1 == c2 == 201 and d1 == d2
        assert self.node.store.count() == 1
        assert [p["key"] for p in self.node.proposals] == ["req-42", "req-42"]
        code, err, resp = self.call("POST", "/api/v1/deployments", {**SPEC, "name": "b"},
                                    headers=h)
        self.assert_error(422, err, resp, "Unprocessable Entity", contains="Idempotency-Key")
        code, err, resp = self.call("DELETE", "/api/v1/deployments/web",
                                    headers={"Idempotency-Key": "x" * 300})
        self.assert_error(400, err, resp, "Bad Request", contains="Idempotency-Key")
        # without the header every request gets its own key
        self.call("PATCH", "/api/v1/deployments/web", {"replicas": 2})
        self.call("PATCH", "/api/v1/deployments/web", {"replicas": 2})
        keys = [p["key"] for p in self.node.proposals[-2:]]
        assert keys[0] != keys[1]

    def test_strong_read_uses_barrier(self) -> None:
        self.create()
        strong = {"X-Prisn-Consistency": "strong"}
        assert self.call("GET", "/api/v1/deployments", headers=strong)[0] == 200
        assert self.call("GET", "/api/v1/deployments/web", headers=strong)[0] == 200
        assert self.node.read_barriers == 2
        assert self.call("GET", "/api/v1/deployments")[0] == 200
        assert self.node.read_barriers == 2
        self.node.fail_reads = "leader unknown"
        for path in ("/api/v1/deployments", "/api/v1/deployments/web"):
            code, err, resp = self.call("GET", path, headers=strong)
            self.assert_error(503, err, resp, "Service Unavailable", contains="leader unknown")
        # a default read still works from the local store
        assert self.call("GET", "/api/v1/deployments/web")[0] == 200
        code, err, resp = self.call("GET", "/api/v1/deployments",
                                    headers={"X-Prisn-Consistency": "strnog"})
        self.assert_error(400, err, resp, "Bad Request", contains="X-Prisn-Consistency")

    def test_unavailable_write_503_changes_nothing(self) -> None:
        self.create()
        before = self.node.store.state_hash()
        self.node.fail_writes = "no leader"
        for method, path, body in [
            ("POST", "/api/v1/deployments", {**SPEC, "name": "b"}),
            ("PATCH", "/api/v1/deployments/web", {"replicas": 4}),
            ("PUT", "/api/v1/deployments/web", {"source": "z"}),
            ("POST", "/api/v1/deployments/web/scale", {"replicas": 4}),
            ("DELETE", "/api/v1/deployments/web", None),
        ]:
            code, err, resp = self.call(method, path, body)
            self.assert_error(503, err, resp, "Service Unavailable", contains="no quorum")
            assert "may still commit" in err["message"]
            assert resp.headers["Retry-After"] == "1"
        assert self.node.store.state_hash() == before

    def test_other_unavailable_status_passes_through(self) -> None:
        async def full_disk(command: dict[str, Any], timeout: float) -> Any:
            raise Unavailable("disk full", status=507)

        self.node.propose = full_disk  # type: ignore[method-assign]
        code, err, resp = self.call("POST", "/api/v1/deployments", SPEC)
        self.assert_error(507, err, resp, "Insufficient Storage", contains="disk full")

    def test_refused_requests_change_nothing(self) -> None:
        self.create()
        before = (self.node.store.state_hash(), self.node.store.applied_index,
                  len(self.node.proposals))
        refused: list[tuple[str, str, Any, int]] = [
            ("POST", "/api/v1/deployments", {**SPEC, "port": 1}, 400),
            ("POST", "/api/v1/deployments", b"{", 400),
            ("PATCH", "/api/v1/deployments/web", {"unknown": 1}, 400),
            ("PUT", "/api/v1/deployments/web", {"name": "web"}, 400),
            ("DELETE", "/api/v1/deployments", None, 405),
            ("PUT", "/api/v1/nope", {}, 404),
        ]
        for method, path, body, status in refused:
            raw = body if isinstance(body, bytes) else None
            code = self.call(method, path, None if raw else body, raw=raw)[0]
            assert code == status, (method, path, code)
        assert (self.node.store.state_hash(), self.node.store.applied_index,
                len(self.node.proposals)) == before


class TestRoutingErrors(ApiCase):
    def test_unknown_route_404(self) -> None:
        for method in ("GET", "POST", "DELETE"):
            code, err, resp = self.call(method, "/api/v2/whatever", {} if method == "POST"
                                        else None)
            self.assert_error(404, err, resp, "Not Found", contains="/api/v2/whatever")
        code, err, resp = self.call("GET", "/api/v1/deployments/a/b/c")
        self.assert_error(404, err, resp, "Not Found")

    def test_wrong_method_405_with_allow(self) -> None:
        for method, path, allow in [
            ("DELETE", "/api/v1/deployments", "GET, POST"),
            ("POST", "/api/v1/deployments/web", "GET, PUT, PATCH, DELETE"),
            ("GET", "/api/v1/deployments/web/scale", "POST"),
            ("POST", "/health", "GET"),
            ("PUT", "/metrics", "GET"),
            ("GET", "/api/v1/cluster/election", "POST"),
            ("GET", "/api/v1/cluster/nodes/node2", "DELETE"),
            ("POST", "/api/v1/cluster/status", "GET"),
        ]:
            code, err, resp = self.call(method, path, {} if method in ("POST", "PUT") else None)
            self.assert_error(405, err, resp, "Method Not Allowed", contains=method)
            assert resp.headers["Allow"] == allow, (path, resp.headers.get("Allow"))

    def test_request_id(self) -> None:
        _, _, resp = self.call("GET", "/health", headers={"X-Request-Id": "abc-1"})
        assert resp.headers["X-Request-Id"] == "abc-1"
        _, _, resp = self.call("GET", "/health")
        assert resp.headers["X-Request-Id"].startswith("node1-")
        _, _, resp = self.call("GET", "/nowhere", headers={"X-Request-Id": "abc-2"})
        assert resp.code == 404 and resp.headers["X-Request-Id"] == "abc-2"


class TestBodyLimit(ApiCase):
    max_body = 1024

    @gen_test(timeout=10)
    async def test_413_before_body_is_read(self) -> None:
        # Headers announce 50 MB; not one body byte is sent. The answer must still come, and
        # the server must close the connection instead of waiting for the body.
        head = (b"POST /api/v1/deployments HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n")
        reply = await asyncio.get_running_loop().run_in_executor(None, self.raw_request, head)
        status_line, _, rest = reply.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 413 Request Entity Too Large", reply[:200]
        headers, _, body = rest.partition(b"\r\n\r\n")
        assert b"X-Prisn-Node: node1" in headers
        err = json.loads(body)
        assert err["error"] == "Request Entity Too Large" and "1024" in err["message"]
        assert self.node.proposals == []

    @gen_test(timeout=10)
    async def test_413_expect_continue(self) -> None:
        head = (b"PUT /api/v1/deployments/x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Content-Length: 1025\r\n\r\n")
        reply = await asyncio.get_running_loop().run_in_executor(None, self.raw_request, head)
        assert reply.startswith(b"HTTP/1.1 413 "), reply[:100]  # no "100 Continue" first

    @gen_test(timeout=10)
    async def test_413_chunked(self) -> None:
        chunk = b"x" * 600
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4)) + b"0\r\n\r\n"
        head = (b"POST /api/v1/deployments HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        reply = await asyncio.get_running_loop().run_in_executor(
            None, self.raw_request, head, body)
        assert reply.startswith(b"HTTP/1.1 413 "), reply[:100]
        err = json.loads(reply.partition(b"\r\n\r\n")[2])
        assert err["error"] == "Request Entity Too Large"
        assert self.node.proposals == []

    def test_body_at_limit_is_accepted(self) -> None:
        spec = {**SPEC, "source": ""}
        pad = 1024 - len(json.dumps(spec).encode())
        spec["source"] = "y" * pad
        raw = json.dumps(spec).encode()
        assert len(raw) == 1024
        assert self.call("POST", "/api/v1/deployments", raw=raw)[0] == 201
        code, err, resp = self.call("POST", "/api/v1/deployments", raw=raw + b" ")
        self.assert_error(413, err, resp, "Request Entity Too Large")


class TestDefaultBodyLimit(ApiCase):
    @gen_test(timeout=10)
    async def test_10_mib_limit(self) -> None:
        assert self.app.ctx.max_body == 10 * 1024 * 1024
        head = (b"POST /api/v1/deployments HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 10485761\r\n\r\n")
        reply = await asyncio.get_running_loop().run_in_executor(None, self.raw_request, head)
        assert reply.startswith(b"HTTP/1.1 413 "), reply[:100]


class TestWriteTimeout(ApiCase):
    write_timeout = 0.05

    def test_timed_out_write_is_503_and_not_applied(self) -> None:
        self.node.hold_writes = True
        code, err, resp = self.call("POST", "/api/v1/deployments", SPEC)
        self.assert_error(503, err, resp, "Service Unavailable", contains="no quorum")
        assert "timed out may still commit" in err["message"]
        assert self.node.store.count() == 0 and self.node.proposals == []


class TestInflightBound(ApiCase):
    max_inflight = 2

    @gen_test(timeout=10)
    async def test_excess_writes_refused_at_once(self) -> None:
        self.node.hold_writes = True
        url = self.get_url("/api/v1/deployments")
        held = [self.http_client.fetch(url, method="POST", raise_error=False, headers=JSON,
                                       body=json.dumps({**SPEC, "name": f"h{i}"}))
                for i in range(2)]
        await asyncio.wait_for(self.node.wait_held(2), 5)
        extra = await self.http_client.fetch(url, method="POST", raise_error=False, headers=JSON,
                                             body=json.dumps({**SPEC, "name": "extra"}))
        assert extra.code == 503
        err = json.loads(extra.body)
        assert err["error"] == "Service Unavailable" and "in flight" in err["message"]
        # reads are not bounded by the write limit
        read = await self.http_client.fetch(url, raise_error=False)
        assert read.code == 200
        self.node.release_writes()
        done = await asyncio.gather(*held)
        assert sorted(r.code for r in done) == [201, 201]
        assert self.app.ctx.inflight == 0
        assert self.node.store.get(None, "extra") is None
        again = await self.http_client.fetch(url, method="POST", raise_error=False, headers=JSON,
                                             body=json.dumps({**SPEC, "name": "extra"}))
        assert again.code == 201


class TestNodeEndpoints(ApiCase):
    def test_health(self) -> None:
        code, body, resp = self.call("GET", "/health")
        assert code == 200
        assert body == {"status": "healthy", "node_id": "node1", "state": "leader",
                        "uptime_seconds": 1.0}
        self.assert_node_headers(resp)

    def test_ready(self) -> None:
        code, body, _ = self.call("GET", "/ready")
        assert code == 200 and body["ready"] is True
        self.node.ready = False
        code, body, resp = self.call("GET", "/ready")
        self.assert_error(503, body, resp, "Service Unavailable", contains="not ready")
        assert body["ready"] is False

    def test_cluster_status(self) -> None:
        self.create()
        code, body, resp = self.call("GET", "/api/v1/cluster/status")
        assert code == 200
        self.assert_node_headers(resp)
        assert body == {
            "leader": "node1",
            "nodes": [{"id": "node1", "address": "10.0.0.1:7332", "state": "leader"},
                      {"id": "node2", "address": "10.0.0.2:7332", "state": "follower"},
                      {"id": "node3", "address": "10.0.0.3:7332", "state": "follower"},
                      {"id": "node4", "address": "10.0.0.4:7332", "state": "learner"}],
            "healthy": True, "term": 1, "commit_index": 1, "applied_index": 1,
            "node_id": "node1", "cluster_id": "test-cluster",
        }

    def test_cluster_health(self) -> None:
        code, body, _ = self.call("GET", "/api/v1/cluster/health")
        assert code == 200
        assert body["healthy"] is True and body["leader"] == "node1" and body["quorum"] == 2
        assert body["nodes"][2] == {"id": "node3", "address": "10.0.0.3:7332",
                                    "state": "follower", "last_contact_seconds": 0.07,
                                    "lag_entries": 3, "lag_seconds": 0.2}
        assert body["nodes"][0]["lag_entries"] is None
        self.node.healthy = False
        self.node.leader_id = None
        code, body, resp = self.call("GET", "/api/v1/cluster/health")
        self.assert_error(503, body, resp, "Service Unavailable", contains="unhealthy")
        assert body["healthy"] is False and body["leader"] is None
        assert resp.headers["X-Prisn-Leader"] == ""

    def test_remove_node(self) -> None:
        code, body, resp = self.call("DELETE", "/api/v1/cluster/nodes/node3")
        assert code == 204 and resp.body == b""
        assert self.node.removed == ["node3"]
        code, body, resp = self.call("DELETE", "/api/v1/cluster/nodes/node9")
        self.assert_error(404, body, resp, "Not Found", contains="node9")
        self.node.nodes = [self.node.nodes[0]]
        code, body, resp = self.call("DELETE", "/api/v1/cluster/nodes/node1")
        self.assert_error(409, body, resp, "Conflict", contains="last voter")
        self.node.fail_writes = "no quorum"
        code, body, resp = self.call("DELETE", "/api/v1/cluster/nodes/node1")
        self.assert_error(503, body, resp, "Service Unavailable", contains="no quorum")

    def test_election(self) -> None:
        code, body, resp = self.call("POST", "/api/v1/cluster/election")
        assert code == 202 and "node1" in body["message"]
        code, body, _ = self.call("POST", "/api/v1/cluster/election", {"target": "node2"})
        assert code == 202 and self.node.leader_id == "node2"
        assert self.node.transfers == ["node1", "node2"]
        _, _, resp = self.call("GET", "/health")
        assert resp.headers["X-Prisn-Leader"] == "node2"
        code, body, resp = self.call("POST", "/api/v1/cluster/election", {"target": "node4"})
        self.assert_error(409, body, resp, "Conflict", contains="learner")
        code, body, resp = self.call("POST", "/api/v1/cluster/election", {"target": "zz"})
        self.assert_error(404, body, resp, "Not Found", contains="zz")
        code, body, resp = self.call("POST", "/api/v1/cluster/election", {"node": "zz"})
        self.assert_error(400, body, resp, "Bad Request")
        self.node.fail_writes = "no leader"
        code, body, resp = self.call("POST", "/api/v1/cluster/election")
        self.assert_error(503, body, resp, "Service Unavailable")

    def test_election_on_learner_409(self) -> None:
        self.node.state = "learner"
        code, body, resp = self.call("POST", "/api/v1/cluster/election")
        self.assert_error(409, body, resp, "Conflict", contains="learner")
        assert self.node.transfers == []
