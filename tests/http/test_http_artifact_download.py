"""An artifact download is streamed in chunks (`actors.api.download`): a client that keeps
reading is not cut by the connection limiter's `response_timeout` however long the whole
download takes, one that stops reading still is, and one that stalls or goes away is closed
cleanly (logged, no traceback). The sweep runs on a manual clock; small socket buffers on
both ends keep most of the artifact out of the kernel, so the server must wait for the
reader."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable
from unittest import mock

from tornado.testing import gen_test

from actors.api import artifacts
from prisn.workloads.artifacts import ArtifactFile, digest_of, pack
from tests.helpers import until
from tests.http.cases import DEADLINE, LimitsCase

SOCKET_BUFFER = 64 << 10
CHUNK = 1 << 20  # the server's chunk (actors.api.download.CHUNK)


class TestArtifactDownload(LimitsCase):
    rate = 0.0  # response_timeout 30 s, no automatic sweep

    async def put_artifact(self, size: int) -> tuple[str, bytes]:
        """Upload an archive of about `size` bytes (seeded content); its (digest, bytes)."""
        payload = random.Random(7).randbytes(size)
        data = pack([ArtifactFile("blob.bin", False, payload)])
        resp = await self.fetch_async("/api/v1/artifacts", method="POST", body=data,
                                      headers={"Content-Type": "application/octet-stream"})
        assert resp.code == 201, resp.body
        return digest_of(data), data

    async def get_raw(self, digest: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A GET of the artifact on a raw connection whose buffers (both ends) are small."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1",
                                                             self.get_http_port()))
        r, w = await asyncio.open_connection(sock=sock, limit=SOCKET_BUFFER)
        await until(lambda: len(self.server._conns) == 1, "the connection tracked")
        (conn,) = self.server._conns.values()
        conn.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        w.write(f"GET /api/v1/artifacts/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await until(lambda: self.server.phases() == ["response"], "the response started")
        return r, w

    def response_since(self) -> float | None:
        """When the response clock of the one connection started; None once it answered."""
        conns = list(self.server._conns.values())
        if not conns or self.server.phases() != ["response"]:
            return None
        return conns[0].since

    def progress_since(self, now: float) -> Callable[[], bool]:
        """A condition: the response clock restarted at `now` or later, or it answered."""
        def cond() -> bool:
            since = self.response_since()
            return since is None or since >= now
        return cond

    @gen_test(timeout=60)
    async def test_a_reading_client_is_not_cut_however_long_it_takes(self) -> None:
        digest, data = await self.put_artifact(4 * CHUNK)
        r, w = await self.get_raw(digest)
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), DEADLINE)
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert f"Content-Length: {len(data)}\r\n".encode() in head
        assert f"X-Prisn-Digest: {digest}\r\n".encode() in head
        got = b""
        steps = 0
        while len(got) < len(data):
            # 20 s per chunk taken: past response_timeout (30 s) after two chunks in total
            self.clock.advance(20.0)
            self.server.sweep()
            assert self.server.stats.slow_clients_closed["response"] == 0
            now = self.clock()
            want = min(len(data), len(got) + CHUNK)
            while len(got) < want:
                got += await asyncio.wait_for(r.read(want - len(got)), DEADLINE)
            steps += 1
            await until(self.progress_since(now),
                        "the server saw the client take a chunk (or answered)")
        assert got == data
        assert steps >= 4 and self.clock.t - 1000.0 > 2 * 30.0
        assert self.server.stats.slow_clients_closed["response"] == 0
        w.close()

    @gen_test(timeout=60)
    async def test_a_client_that_stops_reading_is_cut(self) -> None:
        digest, data = await self.put_artifact(4 * CHUNK)
        r, w = await self.get_raw(digest)
        with self.assertLogs(level=logging.INFO) as logs:
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), DEADLINE)
            assert head.startswith(b"HTTP/1.1 200 "), head
            self.clock.advance(29.0)
            self.server.sweep()
            assert self.server.phases() == ["response"]
            self.clock.advance(2.0)
            self.server.sweep()
            rest = await self.closed(r)
            assert len(rest) < len(data)
            assert self.server.stats.slow_clients_closed["response"] == 1
            await until(lambda: any("went away" in m for m in logs.output),
                        "the cut download logged")
        assert not [rec for rec in logs.records  # no traceback, nothing at ERROR
                    if rec.exc_info or rec.levelno >= logging.ERROR], logs.output
        w.close()

    @gen_test(timeout=60)
    async def test_a_stalled_client_is_closed_after_the_stall_timeout(self) -> None:
        digest, data = await self.put_artifact(4 * CHUNK)
        with mock.patch.object(artifacts, "STALL_SECONDS", 0.2):
            r, w = await self.get_raw(digest)
            with self.assertLogs(level=logging.INFO) as logs:
                await until(lambda: any("read nothing" in m for m in logs.output),
                            "the stalled download logged", timeout=DEADLINE)
                rest = await self.closed(r)
            assert rest.startswith(b"HTTP/1.1 200 ") and len(rest) < len(data)
            assert not [rec for rec in logs.records  # no traceback, nothing at ERROR
                        if rec.exc_info or rec.levelno >= logging.ERROR], logs.output
            assert [rec.levelname for rec in logs.records if "read nothing" in
                    rec.getMessage()] == ["WARNING"]
            w.close()
