"""Execution routes against FakeNodeClient: async create (202 Pending), a synchronous create
answered once the execution is terminal, list filters and shape, get, cancel, 404/409/400s
that propose nothing, and Idempotency-Key (a retry answers the same execution)."""

from __future__ import annotations

import asyncio
from typing import Any

from prisn.fsm.commands import COMMAND_VERSION
from tests.http.cases import ApiCase

JOB = {"name": "j", "type": "job", "source": "print('hi')"}


class TestExecutions(ApiCase):
    def job(self) -> dict[str, Any]:
        return self.create(**{**JOB, "port": 0})

    def test_async_create_list_get_cancel(self) -> None:
        dep = self.job()
        code, e, resp = self.call("POST", "/api/v1/executions",
                                  {"name": "j", "async": True, "env": {"A": "1"},
                                   "args": ["x"], "timeout": 30})
        assert code == 202, e
        assert e["status"] == "Pending" and e["deployment_id"] == dep["id"]
        assert e["namespace"] == "default" and e["name"] == "j" and e["attempt"] == 1
        assert "env" not in e and "args" not in e
        self.assert_node_headers(resp)
        code, e2, _ = self.call("POST", "/api/v1/executions",
                                {"deployment_id": dep["id"], "async": True})
        assert code == 202 and e2["id"] != e["id"]
        code, page, _ = self.call("GET", "/api/v1/executions")
        assert code == 200 and set(page) == {"items", "count", "total", "limit", "offset"}
        assert [i["id"] for i in page["items"]] == [e2["id"], e["id"]]  # newest first
        code, page, _ = self.call("GET", f"/api/v1/executions?deployment_id={dep['id']}"
                                  "&status=Pending&limit=1&offset=1")
        assert [i["id"] for i in page["items"]] == [e["id"]] and page["total"] == 2
        code, page, _ = self.call("GET", "/api/v1/executions?namespace=other")
        assert page["total"] == 0
        code, one, _ = self.call("GET", f"/api/v1/executions/{e['id']}")
        assert code == 200 and one == e
        code, done, _ = self.call("POST", f"/api/v1/executions/{e['id']}/cancel")
        assert code == 200 and done["status"] == "Cancelled"
        code, out, resp = self.call("POST", f"/api/v1/executions/{e['id']}/cancel")
        self.assert_error(409, out, resp, "Conflict", contains="already Cancelled")
        code, page, _ = self.call("GET", "/api/v1/executions?status=Cancelled")
        assert [i["id"] for i in page["items"]] == [e["id"]]

    def test_sync_create_answers_the_finished_execution(self) -> None:
        self.job()
        node = self.node

        async def run_it() -> None:  # the node's part: report Running, then Completed
            while not node.store.executions()["items"]:
                await asyncio.sleep(0.01)
            eid = node.store.executions()["items"][0]["id"]
            for n, (status, extra) in enumerate((("Running", {"node": "node1"}),
                                                 ("Completed", {"exit_code": 0}))):
                await node.propose({"v": COMMAND_VERSION, "op": "execution.update",
                                    "key": f"u{n}", "ts": "2026-06-01T12:00:00.000Z",
                                    "id": eid, "status": status, "attempt": 1, **extra}, 5)

        self.io_loop.add_callback(run_it)
        code, e, _ = self.call("POST", "/api/v1/executions", {"name": "j"})
        assert code == 200, e
        assert e["status"] == "Completed" and e["exit_code"] == 0 and e["node"] == "node1"

    def test_idempotency_key_answers_the_same_execution(self) -> None:
        self.job()
        key = {"Idempotency-Key": "run-1"}
        code, e, _ = self.call("POST", "/api/v1/executions", {"name": "j", "async": True},
                               headers=key)
        assert code == 202
        code, again, _ = self.call("POST", "/api/v1/executions",
                                   {"name": "j", "async": True}, headers=key)
        assert code == 202 and again["id"] == e["id"]
        assert self.call("GET", "/api/v1/executions")[1]["total"] == 1

    def test_refusals_change_nothing(self) -> None:
        self.job()
        self.create(name="web")
        before = len(self.node.proposals)
        for body, text in (({}, "exactly one"), ({"name": "j", "deployment_id": "x"},
                                                 "exactly one"),
                           ({"name": "j", "other": 1}, "unknown field"),
                           ({"name": "j", "timeout": 0}, "timeout"),
                           ({"name": "j", "async": "yes"}, "async"),
                           ({"name": "j", "env": {"1A": "x"}}, "env"),
                           ({"name": "j", "args": [1]}, "args"),
                           ([1], "object")):
            code, out, resp = self.call("POST", "/api/v1/executions", body)
            self.assert_error(400, out, resp, "Bad Request", contains=text)
        assert len(self.node.proposals) == before
        code, out, resp = self.call("POST", "/api/v1/executions", {"name": "nope"})
        self.assert_error(404, out, resp, "Not Found", contains="nope")
        code, out, resp = self.call("POST", "/api/v1/executions", {"name": "web"})
        self.assert_error(409, out, resp, "Conflict", contains="not a job")
        for method, path in (("GET", "/api/v1/executions/nope"),
                             ("POST", "/api/v1/executions/nope/cancel")):
            code, out, resp = self.call(method, path)
            self.assert_error(404, out, resp, "Not Found", contains="nope")
        code, out, resp = self.call("GET", "/api/v1/executions?status=Done")
        self.assert_error(400, out, resp, "Bad Request", contains="status")
        assert self.call("GET", "/api/v1/executions")[1]["total"] == 0


    def test_cancel_on_a_node_that_trails_looks_again_after_a_read_barrier(self) -> None:
        """A cancel looks the execution up before proposing; a node that has not applied
        the create yet (it trails the node that acknowledged it) must not answer 404: it
        takes a read barrier and looks again. A barrier that fails is a 503, nothing
        proposed; an id unknown after the barrier is still a 404."""
        self.job()
        code, e, _ = self.call("POST", "/api/v1/executions", {"name": "j", "async": True})
        assert code == 202, e
        node, store = self.node, self.node.store
        real = store.execution
        # this node "has not applied" the create until a barrier has been taken
        store.execution = lambda eid: real(eid) if node.read_barriers else None  # type: ignore[method-assign]
        try:
            before = len(node.proposals)
            node.fail_reads = "no leader"
            code, out, resp = self.call("POST", f"/api/v1/executions/{e['id']}/cancel")
            self.assert_error(503, out, resp, "Service Unavailable", contains="no leader")
            assert len(node.proposals) == before
            node.fail_reads = None
            code, done, _ = self.call("POST", f"/api/v1/executions/{e['id']}/cancel")
            assert code == 200 and done["status"] == "Cancelled", done
            assert node.read_barriers == 1
        finally:
            store.execution = real  # type: ignore[method-assign]
        code, out, resp = self.call("POST", "/api/v1/executions/nope/cancel")
        self.assert_error(404, out, resp, "Not Found", contains="nope")
        assert node.read_barriers == 2


class TestAdhocExecutions(ApiCase):
    """Ad-hoc runs (no deployment): an inline source is put as an artifact, then the
    execution names it; refusals propose nothing; sizes are bounded."""

    def test_inline_source_puts_an_artifact_then_creates_the_execution(self) -> None:
        code, e, _ = self.call("POST", "/api/v1/executions",
                               {"source": "print('hi')\n", "runtime": "python3",
                                "async": True, "namespace": "team"})
        assert code == 202, e
        assert e["deployment_id"] is None and e["name"] == "main"
        assert (e["entry"], e["runtime"], e["namespace"]) == ("main.py", "python3", "team")
        ops = [p.get("op") for p in self.node.proposals[-2:]]
        assert ops == ["artifact.put", "execution.create"]
        assert self.node.store.artifact(e["artifact"]) is not None
        # the same text again: a touch (no bytes through the log), a new execution
        code, e2, _ = self.call("POST", "/api/v1/executions",
                                {"source": "print('hi')\n", "entry": "main.py",
                                 "async": True, "namespace": "team", "name": "again"})
        assert code == 202 and e2["artifact"] == e["artifact"] and e2["name"] == "again"
        assert "data" not in self.node.proposals[-2]
        code, page, _ = self.call("GET", "/api/v1/executions?namespace=team")
        assert [i["id"] for i in page["items"]] == [e2["id"], e["id"]]
        # an uploaded artifact named directly
        code, e3, _ = self.call("POST", "/api/v1/executions",
                                {"artifact": e["artifact"], "entry": "main.py",
                                 "async": True})
        assert code == 202 and e3["name"] == "main" and e3["namespace"] == "default"
        code, out, resp = self.call("POST", "/api/v1/executions",
                                    {"artifact": "ab" * 32, "entry": "main.py"})
        self.assert_error(400, out, resp, "Bad Request", contains="not stored")

    def test_bad_and_oversized_bodies_propose_nothing(self) -> None:
        before = len(self.node.proposals)
        for body, text in (({}, "either deployment_id/name or source"),
                           ({"source": "print(1)"}, "runtime"),
                           ({"source": "x", "runtime": "bash", "deployment_id": "d"},
                            "no deployment"),
                           ({"artifact": "ab" * 32}, "entry")):
            code, out, resp = self.call("POST", "/api/v1/executions", body)
            self.assert_error(400, out, resp, "Bad Request", contains=text)
        big = {"source": "x" * (1 << 20) + "y", "runtime": "bash"}
        code, out, resp = self.call("POST", "/api/v1/executions", big)
        self.assert_error(413, out, resp, "Request Entity Too Large",
                          contains="--max-spec-bytes")
        assert len(self.node.proposals) == before

    def test_idempotency_key_answers_the_same_adhoc_execution(self) -> None:
        key = {"Idempotency-Key": "adhoc-1"}
        body = {"source": "echo hi", "runtime": "bash", "async": True}
        code, e, _ = self.call("POST", "/api/v1/executions", body, headers=key)
        assert code == 202, e
        code, again, _ = self.call("POST", "/api/v1/executions", body, headers=key)
        assert code == 202 and again["id"] == e["id"]
        assert self.call("GET", "/api/v1/executions")[1]["total"] == 1
        code, out, resp = self.call("POST", "/api/v1/executions",
                                    {**body, "source": "echo other"}, headers=key)
        assert code == 422, out
