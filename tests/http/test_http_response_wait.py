"""A handler that awaits its result is not a stalled reader (`limits.response_wait`): a
synchronous ``POST /api/v1/executions`` is not cut by the connection limiter's
`response_timeout` while its execution runs, still is once it waits longer than it said it
would, and a backup being encoded is not cut either. The sweep runs on a manual clock."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from tornado.testing import gen_test

from actors.api.executions import WAIT_GRACE
from prisn.fsm.commands import COMMAND_VERSION
from tests.helpers import until
from tests.http.cases import DEADLINE, LimitsCase

JOB = {"name": "j", "type": "job", "source": "print('hi')", "port": 0}


class TestResponseWait(LimitsCase):
    rate = 0.0  # response_timeout 30 s, no automatic sweep

    async def tracked(self, *phases: str) -> None:
        await until(lambda: sorted(self.server.phases()) == sorted(phases),
                    f"connection phases {phases} (have {self.server.phases()})")

    async def sync_post(self, timeout: int) -> tuple[asyncio.StreamReader,
                                                     asyncio.StreamWriter, str]:
        """A synchronous POST of job j on a raw connection, and its execution's id."""
        resp = await self.fetch_async("/api/v1/deployments", method="POST",
                                      body=json.dumps(JOB),
                                      headers={"Content-Type": "application/json"})
        assert resp.code == 201, resp.body
        r, w = await self.open()
        body = json.dumps({"name": "j", "timeout": timeout}).encode()
        w.write(b"POST /api/v1/executions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        store = self.node.store
        await until(lambda: bool(store.executions()["items"]), "the execution created")
        await self.tracked("response")
        await until(lambda: all(c.since > self.clock() for c in self.server._conns.values()),
                    "the handler waiting for the execution (its response clock ahead)")
        return r, w, store.executions()["items"][0]["id"]

    async def update(self, eid: str, n: int, status: str, **extra: Any) -> None:
        await self.node.propose({"v": COMMAND_VERSION, "op": "execution.update",
                                 "key": f"u{n}", "ts": "2026-06-01T12:00:00.000Z", "id": eid,
                                 "status": status, "attempt": 1, **extra}, 5)

    @gen_test(timeout=30)
    async def test_a_long_synchronous_run_is_answered_not_cut(self) -> None:
        r, w, eid = await self.sync_post(timeout=120)
        await self.update(eid, 0, "Running", node="node1")
        for _ in range(4):  # 100 s of a running job: far past response_timeout (30 s)
            self.clock.advance(25.0)
            self.server.sweep()
        assert self.server.phases() == ["response"]
        assert self.server.stats.slow_clients_closed["response"] == 0
        await self.update(eid, 1, "Completed", exit_code=0)
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), DEADLINE)
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        e = json.loads(await asyncio.wait_for(r.readexactly(length), DEADLINE))
        assert e["status"] == "Completed" and e["exit_code"] == 0
        w.close()

    @gen_test(timeout=30)
    async def test_a_wait_past_its_own_bound_is_still_cut(self) -> None:
        r, w, _ = await self.sync_post(timeout=10)
        bound = 10 + WAIT_GRACE  # the handler's wait; then response_timeout to answer
        self.clock.advance(bound + 29.0)
        self.server.sweep()
        assert self.server.phases() == ["response"]
        self.clock.advance(2.0)
        self.server.sweep()
        assert await self.closed(r) == b""
        assert self.server.stats.slow_clients_closed["response"] == 1
        w.close()

    @gen_test(timeout=30)
    async def test_a_backup_being_encoded_is_not_cut(self) -> None:
        entered, release = threading.Event(), threading.Event()
        real = self.node.snapshot_source

        def slow() -> Any:  # runs in the executor: a large state taking long to capture
            entered.set()
            assert release.wait(20)
            return real()

        self.node.snapshot_source = slow  # type: ignore[method-assign]
        r, w = await self.open()
        w.write(b"GET /api/v1/cluster/snapshot HTTP/1.1\r\nHost: x\r\n\r\n")
        await self.tracked("response")
        await until(entered.is_set, "the capture started")
        self.clock.advance(100.0)
        self.server.sweep()
        assert self.server.stats.slow_clients_closed["response"] == 0
        release.set()
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), DEADLINE)
        assert head.startswith(b"HTTP/1.1 200 "), head
        w.close()
