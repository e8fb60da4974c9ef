"""The API actor: Tornado's HTTP server on its own asyncio/IOLoop thread.

Runs on its own thread. It does not use the ZeroMQ poll loop of `actors.base.Actor`: its loop
is the IOLoop, and the `RaftNodeClient` it owns reads the API inbox through the loop's reader
callbacks. `stop()` is thread-safe: it enters the loop only through `add_callback`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import socket
import ssl
from collections.abc import Callable
from typing import Any

import zmq
from tornado.ioloop import IOLoop

from actors.api.app import make_app
from actors.api.auth import Authenticator
from actors.api.bridge import RaftNodeClient
from actors.api.guard import RequestGuard, own_names
from actors.api.limits import PRESSURE, HandshakeLogFilter, LimitedHTTPServer, RateLimiter
from actors.api.quotas import Quotas
from actors.base import Actor
from actors.metrics import HttpLimitsCollector, InflightCollector, NodeMetrics
from prisn.config import ConfigError, ServerConfig
from prisn.fsm.secrets import SecretFactory
from prisn.secretbox import SecretBox
from transport.curve import read_key_file

log = logging.getLogger("prisn.api")

READ_TIMEOUT = 5.0  # make_app's default: strong reads wait at most twice this


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or newer) from PEM files; `ConfigError` with one
    line saying what is wrong (unreadable file, not PEM, key does not match, encrypted key).
    Any thread; `prisn.server.run` calls it before starting anything, the API actor again."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2

    def no_password() -> bytes:
        raise ConfigError(f"--tls-key {key!r} is encrypted; give an unencrypted key")

    try:
        ctx.load_cert_chain(cert, key, password=no_password)
    except ConfigError:
        raise
    except ssl.SSLError as e:
        reason = str(e.reason or e)
        if "MISMATCH" in reason.upper():
            why = f"the key {key!r} does not belong to the certificate {cert!r}"
        elif "PEM" in reason.upper():
            why = (f"{cert!r} must hold a PEM certificate (chain) and {key!r} its PEM private "
                   f"key ({reason})")
        else:
            why = f"cannot use {cert!r} with {key!r}: {reason}"
        raise ConfigError(f"--tls-cert/--tls-key: {why}") from None
    except OSError as e:
        raise ConfigError(f"--tls-cert {cert!r} / --tls-key {key!r}: cannot read: "
                          f"{e.strerror or e}") from None
    return ctx



def new_event_loop() -> asyncio.AbstractEventLoop:
    """The API thread's event loop: uvloop's (libuv, in C), else asyncio's own.

    Tornado runs on any asyncio loop; on uvloop the loop's own work per request (epoll, reader
    registration, callbacks) is C, not Python: about 10% less leader CPU per create and 7-12%
    more creates/s at c=64 (benchmarks/README.md). Only this thread's loop changes; nothing
    else in the process uses asyncio."""
    try:
        import uvloop
    except ImportError:  # a platform without uvloop wheels: same behaviour, a bit slower
        log.info("uvloop is not installed; the API uses asyncio's default event loop")
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()

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
        self._server: LimitedHTTPServer | None = None

    def run(self) -> None:
        try:
            self._loop = new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._ioloop = IOLoop.current()
            self._loop.run_until_complete(self._start())
            self.started.set()
            if self.stopping:
                return
            self._loop.run_forever()
        except BaseException as e:  # noqa: BLE001 - any failure stops the node
            self.failure = e
            if not self.started.is_set():  # a start-up failure (a bad --bind): one line
                log.error("api actor failed to start: %s", e)
                log.debug("api actor start-up failure", exc_info=True)
            else:
                log.exception("api actor failed")
            self.started.set()
            if self._on_failure is not None:
                self._on_failure(self, e)
        finally:
            self._shutdown()

    async def _start(self) -> None:
        self.client = self.client_factory()
        self.client.open()
        if self.config is not None and self.config.data_dir:
            self.client.log_dir = self.config.data_dir  # the runner's instance output
        auth = None
        if self.config is not None:
            auth = Authenticator(self.config.api_key, metrics_auth=self.config.metrics_auth)
            if not auth.enabled:
                log.warning("no --api-key: the HTTP API is open to anyone who can reach it, "
                            "who can then run code on the nodes as this server's user (set "
                            "--api-key / PRISN_API_KEY, the same on every node)")
        cfg = self.config if self.config is not None else ServerConfig(node_id="", data_dir="")
        guard = RequestGuard.build(
            origins=cfg.cors_origins, allowed_hosts=cfg.allowed_hosts,
            own=own_names(self.bind, cfg.raft_addr, cfg.advertise_addr,
                          cfg.advertised_raft_addr if cfg.cluster else ""),
            check_hosts=auth is None or not auth.enabled)
        app = make_app(self.client, metrics=self.metrics, write_timeout=self.write_timeout,
                       max_body=self.max_body, auth=auth, guard=guard,
                       max_inflight=cfg.max_inflight,
                       execution_history=cfg.execution_history)
        client, api_ctx = self.client, app.ctx
        self.metrics.registry.register(InflightCollector(
            lambda: (api_ctx.inflight, client.inflight, api_ctx.max_inflight)))
        app.ctx.quotas = Quotas(cfg.max_spec_bytes, cfg.namespace_max_deployments,
                                cfg.namespace_max_bytes,
                                max_artifact_bytes=cfg.max_artifact_bytes)
        if cfg.cluster_key_file:  # checked by `prisn.server.run` before the actors start
            app.ctx.secrets = SecretFactory(SecretBox(read_key_file(cfg.cluster_key_file)))
        if 0 < cfg.rate_limit < math.inf:  # 0 (and inf) = unlimited: no limiter at all
            app.ctx.limiter = RateLimiter(cfg.rate_limit, cfg.rate_burst)
        tls = tls_context(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert else None
        if tls is not None and not any(isinstance(f, HandshakeLogFilter)
                                       for f in logging.getLogger("tornado.general").filters):
            logging.getLogger("tornado.general").addFilter(HandshakeLogFilter())
        # No Tornado header/body timeouts: they wrap every read in gen.with_timeout (the body
        # one measured 24% of this thread's CPU under load). LimitedHTTPServer's one periodic
        # sweep enforces the idle, header, body and response time limits instead.
        server = LimitedHTTPServer(
            app, max_body_size=self.max_body, xheaders=False, ssl_options=tls,
            max_header_size=cfg.max_header_bytes, max_connections=cfg.max_connections,
            max_conns_per_ip=cfg.max_conns_per_ip,
            idle_timeout=cfg.idle_timeout, body_timeout=cfg.body_timeout,
            response_timeout=2 * max(self.write_timeout, READ_TIMEOUT) + cfg.body_timeout)
        self._server = server
        limiter = app.ctx.limiter
        self.metrics.registry.register(HttpLimitsCollector(
            lambda: server.stats, lambda: limiter.refused if limiter is not None else 0))
        host, _, port = self.bind.rpartition(":")
        host = host.strip("[]") or None
        sock = _listen(host, int(port))
        self.port = sock.getsockname()[1]
        self._server.add_sockets([sock])
        log.info("HTTP API listening on %s://%s:%d", "https" if tls else "http",
                 host or "0.0.0.0", self.port)
        log.info("HTTP limits: %s per client address, %d connections (%d per client "
                 "address), headers %d bytes, body %d bytes, %gs to send a request, %gs idle "
                 "(%gs above %d%% of the connections)", f"{cfg.rate_limit:g} requests/s "
                 f"(burst {cfg.rate_burst})" if app.ctx.limiter is not None  # an empty one is falsy
                 else "no request rate limit",
                 cfg.max_connections, cfg.max_conns_per_ip, cfg.max_header_bytes,
                 self.max_body, cfg.body_timeout, cfg.idle_timeout,
                 server.pressure_idle_timeout, round(100 * PRESSURE))
        if guard.hosts is not None:
            log.info("API open (no --api-key): requests must name this node in Host, as an IP "
                     "address or one of %s (--allowed-hosts adds names)",
                     ", ".join(sorted(guard.hosts)))
        if guard.origins:
            log.info("CORS: browser requests allowed from %s", ", ".join(sorted(guard.origins)))

    def submit(self, command: dict, timeout: float) -> concurrent.futures.Future | None:
        """Any thread: propose `command` through this node's client, as a write of the API
        does (forwarded to the leader, answered once applied here); a future of its
        (Outcome, body), or None while the API is not serving. Used by the workload actors
        (`actors.scheduler`, `actors.workloads`)."""
        loop, client = self._loop, self.client
        if loop is None or client is None or loop.is_closed() or self.stopping:
            return None

        async def propose() -> Any:
            return await client.propose(command, timeout)

        return asyncio.run_coroutine_threadsafe(propose(), loop)

    def barrier(self, timeout: float) -> concurrent.futures.Future | None:
        """Any thread: a linearizable read barrier (as a strong read waits for: leadership
        confirmed by a quorum, then applied up to that read index here); a future that
        resolves (None) or fails, or None while the API is not serving."""
        loop, client = self._loop, self.client
        if loop is None or client is None or loop.is_closed() or self.stopping:
            return None

        async def wait() -> None:  # its own barrier: a failure here answers no API read
            await client.solo_barrier(timeout)

        return asyncio.run_coroutine_threadsafe(wait(), loop)

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
    try:
        sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on {host or ''}:{port} for the HTTP API "
                      f"(--bind): {e.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock
