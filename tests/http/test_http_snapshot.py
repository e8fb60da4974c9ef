"""`GET /api/v1/cluster/snapshot` against FakeNodeClient (issue 16, item 1): the body is a
backup file whose headers agree with it, a second backup while one is in flight gets 503
with Retry-After, a node without a snapshot source answers 503, and a strong backup waits
for a read barrier. Roles are covered by the route table of test_http_auth."""

from __future__ import annotations

import hashlib
import tempfile
import threading
from pathlib import Path
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.testing import AsyncHTTPTestCase, gen_test

from actors.api.app import make_app, make_server
from actors.api.node import FakeNodeClient
from prisn.backup import verify


class SnapshotCase(AsyncHTTPTestCase):
    def get_app(self) -> Any:
        self.node = FakeNodeClient("node1")
        self.app = make_app(self.node)
        return self.app

    def get_http_server(self) -> HTTPServer:
        return make_server(self.app)

    def deploy(self, n: int) -> None:
        for i in range(n):
            r = self.fetch("/api/v1/deployments", method="POST",
                           headers={"Content-Type": "application/json"},
                           body=f'{{"name": "d{i}", "source": "x"}}', raise_error=False)
            assert r.code == 201, r.body

    def test_body_is_a_verified_backup_matching_its_headers(self) -> None:
        self.deploy(30)
        r = self.fetch("/api/v1/cluster/snapshot", raise_error=False)
        assert r.code == 200, r.body
        body = r.body
        assert int(r.headers["Content-Length"]) == len(body)
        assert r.headers["Content-Type"] == "application/octet-stream"
        digest = hashlib.sha256(body[:-32]).hexdigest()
        assert r.headers["X-Prisn-Snapshot-Sha256"] == digest == body[-32:].hex()
        assert r.headers["X-Prisn-Snapshot-Index"] == str(self.node.store.applied_index)
        assert r.headers["X-Prisn-Snapshot-Term"] == str(self.node.term)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "b.snap"
            path.write_bytes(body)
            found, _ = verify(path)
        assert found.deployments == 30
        assert found.state_hash == self.node.store.state_hash()

    def test_strong_waits_for_a_read_barrier(self) -> None:
        r = self.fetch("/api/v1/cluster/snapshot", headers={"X-Prisn-Consistency": "strong"},
                       raise_error=False)
        assert r.code == 200 and self.node.read_barriers == 1
        self.node.fail_reads = "no leader"
        r = self.fetch("/api/v1/cluster/snapshot", headers={"X-Prisn-Consistency": "strong"},
                       raise_error=False)
        assert r.code == 503 and b"no leader" in r.body

    def test_no_source_is_503(self) -> None:
        self.node.snapshot_source = None  # type: ignore[assignment,method-assign]
        r = self.fetch("/api/v1/cluster/snapshot", raise_error=False)
        assert r.code == 503 and r.headers["Retry-After"] == "1"

    @gen_test(timeout=30)
    async def test_one_backup_in_flight_at_a_time(self) -> None:
        entered = threading.Event()
        release = threading.Event()
        real = self.node.snapshot_source

        def slow() -> Any:  # runs in the executor: blocks only that thread
            entered.set()
            assert release.wait(20)
            return real()

        self.node.snapshot_source = slow  # type: ignore[method-assign]
        first = self.http_client.fetch(self.get_url("/api/v1/cluster/snapshot"),
                                       raise_error=False)
        while not entered.is_set():  # the first request holds the slot
            await self.io_loop.run_in_executor(None, entered.wait, 0.05)
        second = await self.http_client.fetch(self.get_url("/api/v1/cluster/snapshot"),
                                              raise_error=False)
        assert second.code == 503 and second.headers["Retry-After"] == "1"
        assert b"already being taken" in second.body
        release.set()
        assert (await first).code == 200
        third = await self.http_client.fetch(self.get_url("/api/v1/cluster/snapshot"),
                                             raise_error=False)
        assert third.code == 200  # the slot is free again
