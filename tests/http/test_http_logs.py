"""`GET /api/v1/deployments/{name}/logs` (issue 14 part 6) on the HTTP layer: which instance
and node it asks, its parameters and their 400s, 404s for unknown or unplaced instances, a
node's refusal passed on as `{error, message}`, and `follow=true` as a bounded long poll.
The node's `read_logs` is a stand-in here; tests/actors/test_logs_peer.py uses real ones."""

from __future__ import annotations

import itertools
import json
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.testing import AsyncHTTPTestCase

import actors.api.logs as logs_mod
from actors.api.app import make_app, make_server
from prisn.fsm.commands import CommandFactory
from prisn.fsm.placements import batch_command
from prisn.messages import LogsReply
from prisn.workloads.model import Slot
from prisn.workloads.scheduler import Place
from tests.feeder import Feeder
from tests.lognode import LogNode

BASE = "/api/v1/deployments/web/logs"


class LogsCase(AsyncHTTPTestCase):
    def get_app(self) -> Any:
        self.node = LogNode()
        f = Feeder(self.node.store)
        f.create(name="web", port=8080, replicas=3)
        f.create(name="job")
        f.run(batch_command([Place(Slot("default", "web", 2), "node3", None),
                             Place(Slot("default", "web", 1), "node2", None)], key="p",
                            ts="2025-01-01T00:00:00.000Z"))
        ids = (f"id-{n}" for n in itertools.count(1))
        self.app = make_app(self.node, commands=CommandFactory(
            clock=lambda: 1_700_000_000.0, new_id=lambda: next(ids)))
        return self.app

    def get_http_server(self) -> HTTPServer:
        return make_server(self.app)

    def get(self, path: str) -> tuple[int, Any]:
        resp = self.fetch(path, raise_error=False)
        return resp.code, json.loads(resp.body)

    def test_first_placed_instance_by_default_and_by_index_or_id(self) -> None:
        self.node.outputs["default.web.1.2"] = b"hello\n\xff"
        code, body = self.get(BASE)
        assert code == 200
        assert body == {"instance": "default.web.1.2", "node": "node2", "stream": "stdout",
                        "offset": 0, "next_offset": 7, "truncated": False,
                        "data": "hello\n\ufffd"}
        assert self.get(BASE + "?instance=2")[1]["node"] == "node3"
        assert self.get(BASE + "?instance=default/web/2&offset=0&limit=3")[0] == 200
        assert self.node.calls[-1] == {"node": "node3", "instance": "default.web.2.1",
                                       "offset": 0, "tail": None, "limit": 3,
                                       "stream": "stdout"}
        assert self.get(BASE + "?instance=default.web.2.1")[1]["node"] == "node3"
        code, body = self.get(BASE + "?tail=2")
        assert (body["offset"], body["data"]) == (5, "\n\ufffd")
        assert self.node.calls[0]["limit"] == logs_mod.MAX_LOG_REPLY
        self.node.outputs[("default.web.1.2", "stderr")] = b"Traceback\n"
        code, body = self.get(BASE + "?stream=stderr")
        assert (code, body["stream"], body["data"]) == (200, "stderr", "Traceback\n")
        assert self.node.calls[-1]["stream"] == "stderr"

    def test_bad_parameters_are_400_and_ask_no_node(self) -> None:
        for q in ("offset=-1", "offset=x", "tail=1.5", "limit=0", "limit=1048577",
                  "follow=maybe", "namespace=-bad", "stream=all"):
            code, body = self.get(f"{BASE}?{q}")
            assert code == 400, (q, body)
            assert body["error"] == "Bad Request" and body["message"], body
        assert self.node.calls == []

    def test_unknown_unplaced_or_foreign_instances_are_404(self) -> None:
        for path, words in [
                ("/api/v1/deployments/nope/logs", "deployment nope not found"),
                ("/api/v1/deployments/job/logs", "no instance placed"),
                (BASE + "?instance=0", "instance 0 of"),
                (BASE + "?instance=default/other/1", "default/other/1"),
                (BASE + "?instance=default.web.2.7", "default.web.2.7"),  # an older epoch
                (BASE + "?namespace=team", "deployment web not found")]:
            code, body = self.get(path)
            assert code == 404 and words in body["message"], (path, body)
        assert self.node.calls == []

    def test_a_node_refusal_or_silence_is_passed_on(self) -> None:
        self.node.refuse = (503, "node node2 is busy serving logs")
        assert self.get(BASE) == (503, {"error": "Service Unavailable",
                                        "message": "node node2 is busy serving logs"})
        self.node.refuse = None
        self.node.raise_unavailable = "node node2 did not answer within 5s"
        code, body = self.get(BASE)
        assert code == 503 and body["message"] == "node node2 did not answer within 5s"

    def test_follow_waits_for_new_output_then_answers(self) -> None:
        self.node.outputs["default.web.1.2"] = b"abc"
        calls = 0
        orig = self.node.read_logs

        async def growing(*a: Any, **kw: Any) -> LogsReply:
            nonlocal calls
            calls += 1
            if calls == 3:  # output appears while the request waits
                self.node.outputs["default.web.1.2"] = b"abcdef"
            return await orig(*a, **kw)

        self.node.read_logs = growing  # type: ignore[method-assign]
        code, body = self.get(BASE + "?offset=3&follow=true")
        assert (code, body["offset"], body["data"]) == (200, 3, "def")
        assert calls == 3

    def test_follow_gives_up_empty_after_its_bound(self) -> None:
        logs_mod_wait, logs_mod.FOLLOW_WAIT = logs_mod.FOLLOW_WAIT, 0.3
        try:
            code, body = self.get(BASE + "?offset=0&follow=true")
        finally:
            logs_mod.FOLLOW_WAIT = logs_mod_wait
        assert (code, body["data"], body["next_offset"]) == (200, "", 0)
        assert 1 <= len(self.node.calls) <= 4
