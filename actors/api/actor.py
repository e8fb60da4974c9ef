"""The API actor: Tornado's HTTP server on its own asyncio/IOLoop thread.

Runs on its own thread. It does not use the ZeroMQ poll loop of `actors.base.Actor`: its loop
is the IOLoop, and the `RaftNodeClient` it owns reads the API inbox through the loop's reader
callbacks. `stop()` is thread-safe: it enters the loop only through `add_callback`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

import zmq
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

from actors.api.app import make_app
from actors.api.bridge import RaftNodeClient
from actors.base import Actor
from actors.metrics import NodeMetrics
from prisn.config import ServerConfig

log = logging.getLogger("prisn.api")


class ApiActor(Actor):
    def __init__(self, ctx: zmq.Context, node_id: str, *, bind: str,
                 client_factory: Callable[[], RaftNodeClient], metrics: NodeMetrics,
                 write_timeout: float, max_body: int, config: ServerConfig | None = None,
                 **kw) -> None:
        super().__init__("api", ctx, node_id, **kw)
        # The node's configuration (security and limit settings); None in unit tests.
        self.config = config
        self.bind = bind
        self.client_factory = client_factory
        self.metrics = metrics
        self.write_timeout = write_timeout
        self.max_body = max_body
        self.client: RaftNodeClient | None = None
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ioloop: IOLoop | None = None
        self._server: HTTPServer | None = None

    def run(self) -> None:
        try:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._ioloop = IOLoop.current()
            self._loop.run_until_complete(self._start())
            self.started.set()
            if self.stopping:
                return
            self._loop.run_forever()
        except BaseException as e:  # noqa: BLE001 - any failure stops the node
            self.failure = e
            log.exception("api actor failed")
            self.started.set()
            if self._on_failure is not None:
                self._on_failure(self, e)
        finally:
            self._shutdown()

    async def _start(self) -> None:
        self.client = self.client_factory()
        self.client.open()
        app = make_app(self.client, metrics=self.metrics, write_timeout=self.write_timeout,
                       max_body=self.max_body)
        # No body_timeout: Tornado wraps every body read in gen.with_timeout for it, which
        # measured 24% of this thread's CPU under load. Idle connections still time out.
        self._server = HTTPServer(app, max_body_size=self.max_body, xheaders=False,
                                  idle_connection_timeout=300)
        host, _, port = self.bind.rpartition(":")
        host = host.strip("[]") or None
        sock = _listen(host, int(port))
        self.port = sock.getsockname()[1]
        self._server.add_sockets([sock])
        log.info("HTTP API listening on %s:%d", host or "0.0.0.0", self.port)

    def stop(self) -> None:
        super().stop()
        loop = self._loop
        if loop is not None and self._ioloop is not None:
            try:
                self._ioloop.add_callback(loop.stop)
            except RuntimeError:
                pass

    def _shutdown(self) -> None:
        loop = self._loop
        if loop is None:
            return
        server, self._server = self._server, None
        if server is not None and self.port is not None:
            try:
                server.stop()
                loop.run_until_complete(asyncio.wait_for(server.close_all_connections(), 2.0))
            except Exception:  # noqa: BLE001 - best effort on the way out
                log.debug("closing HTTP connections", exc_info=True)
        if self.client is not None:
            self.client.close()
        loop.close()


def _listen(host: str | None, port: int) -> socket.socket:
    """One listening socket (IPv4, or IPv6 for a v6 literal), SO_REUSEADDR, non-blocking."""
    family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock
