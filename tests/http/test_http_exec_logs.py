"""GET /api/v1/executions/{id}/logs against a stand-in node (`LogNode`): both streams from
the node while running, from the record once terminal (no node asked), secret values
redacted (also split across follow reads), follow's NDJSON framing and its last line, and
503 when this node cannot open the secrets to redact."""

from __future__ import annotations

import itertools
import json
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.testing import AsyncHTTPTestCase

from actors.api import exec_logs
from actors.api.app import make_app, make_server
from prisn.fsm.commands import CommandFactory
from prisn.fsm.secrets import SecretFactory
from prisn.secretbox import SecretBox
from tests.execfeed import cmd, update
from tests.feeder import Feeder
from tests.lognode import LogNode

SECRET = "hunter2-very-secret"
IID = "x.e1.1"
URL = "/api/v1/executions/e1/logs"


class ExecLogsCase(AsyncHTTPTestCase):
    def get_app(self) -> Any:
        self.node = LogNode()
        self.f = Feeder(self.node.store)
        sec = SecretFactory().create({"name": "s", "data": {"TOKEN": SECRET, "PIN": "12"}})
        assert self.f.run(sec)[0] == 201
        self.f.create(name="j", type="job", source="j.py", secrets=["s"])
        assert self.f.run(cmd("execution.create", id="e1", ns="default", name="j",
                              timeout=30))[0] == 201
        assert update(self.f, "e1", "Running", node="node2")[0] == 200
        ids = (f"id-{n}" for n in itertools.count(1))
        self.app = make_app(self.node, commands=CommandFactory(
            clock=lambda: 1_700_000_000.0, new_id=lambda: next(ids)))
        return self.app

    def get_http_server(self) -> HTTPServer:
        return make_server(self.app)

    def get(self, path: str) -> tuple[int, Any]:
        resp = self.fetch(path, raise_error=False)
        return resp.code, json.loads(resp.body)

    def test_running_reads_both_streams_on_the_node_redacted(self) -> None:
        self.node.outputs[IID] = f"token={SECRET} pin=12\n".encode()
        self.node.outputs[(IID, "stderr")] = f"err {SECRET}\n".encode()
        code, body = self.get(URL)
        assert code == 200, body
        assert body == {"stdout": "token=*** pin=12\n", "stderr": "err ***\n", "node": "node2",
                        "source": "node", "truncated": False, "stdout_truncated": False,
                        "stderr_truncated": False}
        assert {c["stream"] for c in self.node.calls} == {"stdout", "stderr"}

    def test_a_long_output_cut_inside_a_secret_shows_no_part_of_it(self) -> None:
        data = b"x" * (exec_logs.LIVE_TAIL - 5) + SECRET.encode() + b"y" * 10
        self.node.outputs[IID] = data  # the tail starts inside the secret's bytes
        code, body = self.get(URL)
        assert code == 200 and body["stdout_truncated"] and body["truncated"]
        assert body["stdout"].endswith("***" + "y" * 10)
        keep = len(SECRET) - 1  # the extra bytes read before the tail (the longest value)
        # the read window (the tail + keep) starts 3 bytes into the secret
        self.node.outputs[IID] = (b"q" * 10 + SECRET.encode()
                                  + b"z" * (exec_logs.LIVE_TAIL + keep + 13 - 10 - len(SECRET)))
        body = self.get(URL)[1]
        assert body["stdout"] and set(body["stdout"]) == {"z"}, body["stdout"][:40]

    def test_terminal_answers_from_the_record_without_asking_a_node(self) -> None:
        assert update(self.f, "e1", "Failed", exit_code=3, stdout="o\n", stderr="e\n",
                      stderr_truncated=True)[0] == 200
        code, body = self.get(URL)
        assert code == 200
        assert body == {"stdout": "o\n", "stderr": "e\n", "node": "node2", "source": "record",
                        "truncated": True, "stdout_truncated": False,
                        "stderr_truncated": True}
        assert self.node.calls == []
        lines = self.follow()
        assert lines == [{"stream": "stdout", "data": "o\n"}, {"stream": "stderr", "data": "e\n"},
                         {"status": "Failed", "exit_code": 3, "error": None, "node": "node2"}]
        assert self.node.calls == []

    def follow(self) -> list[dict]:
        resp = self.fetch(URL + "?follow=true", request_timeout=30)
        assert resp.code == 200
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        return [json.loads(x) for x in resp.body.splitlines()]

    def test_follow_streams_redacted_output_then_the_status(self) -> None:
        secret = SECRET.encode()
        parts = [b"a " + secret[:6], secret[6:] + b" b\n"]  # the value split over two reads
        orig = self.node.read_logs
        reads = {"n": 0}

        async def growing(*a: Any, **kw: Any) -> Any:
            if kw.get("stream") == "stdout":
                reads["n"] += 1
                self.node.outputs[IID] = b"".join(parts[:reads["n"]])
                if reads["n"] >= 4:
                    update(self.f, "e1", "Completed", exit_code=0)
            return await orig(*a, **kw)

        self.node.read_logs = growing  # type: ignore[method-assign]
        lines = self.follow()
        text = "".join(x["data"] for x in lines if x.get("stream") == "stdout")
        assert text == "a *** b\n", lines
        assert SECRET[:6] not in json.dumps(lines)
        assert lines[-1] == {"status": "Completed", "exit_code": 0, "error": None,
                             "node": "node2"}
        assert sum("status" in x for x in lines) == 1

    def test_bad_follow_and_unknown_execution(self) -> None:
        assert self.get(URL + "?follow=maybe")[0] == 400
        assert self.get("/api/v1/executions/nope/logs")[0] == 404
        assert self.node.calls == []


class SealedSecretsCase(AsyncHTTPTestCase):
    """A node without the cluster key cannot open sealed secrets: no unredacted output."""

    def get_app(self) -> Any:
        self.node = LogNode()
        f = Feeder(self.node.store)
        box = SecretBox(b"k" * 32)
        assert f.run(SecretFactory(box).create({"name": "s", "data": {"T": SECRET}}))[0] == 201
        f.create(name="j", type="job", source="j.py", secrets=["s"])
        assert f.run(cmd("execution.create", id="e1", ns="default", name="j"))[0] == 201
        assert update(f, "e1", "Running", node="node2")[0] == 200
        self.node.outputs[IID] = SECRET.encode()
        self.app = make_app(self.node)
        return self.app

    def get_http_server(self) -> HTTPServer:
        return make_server(self.app)

    def test_503(self) -> None:
        resp = self.fetch(URL, raise_error=False)
        assert resp.code == 503 and b"redact" in resp.body
        assert SECRET.encode() not in resp.body
