"""Hard limits on what comes from outside the node over HTTP (issue 7, item 4).

- `RateLimiter`: one token bucket per client address (``request.remote_ip``; no
  X-Forwarded-For trust), `rate` tokens/s up to `burst`, in a bounded LRU table (at most
  `max_clients` addresses; the least recently seen is forgotten first). A request without a
  token is refused 429 with ``Retry-After`` (`TooManyRequests`); a refused request takes no
  token. `/health` and `/ready` are exempt (`EXEMPT_ROUTES`): liveness and readiness probes
  must never be throttled.
- `LimitedHTTPServer`: Tornado's HTTPServer plus a cap on open connections (one more is
  answered 503 and closed at accept, or just closed for TLS), a lower cap per client address
  (`max_conns_per_ip`; one more from that address is answered 429 and closed at accept, so
  one address can never take the slots other clients and the probes need; IPv6 addresses
  count per /64, an IPv4-mapped one as its IPv4 address), and slow-client protection
  without a per-request timer: every request moves its connection through phases
  (``header``, ``body``, ``busy``, ``idle``) with the time the phase began, and ONE periodic
  sweep (every `sweep_interval`) closes a connection whose request has not fully arrived
  within `body_timeout` (headers and body together, TLS handshake included for a new
  connection), whose response is not done within `response_timeout`, or that sat idle between
  requests for `idle_timeout` -- or only `pressure_idle_timeout` while the node holds at
  least `PRESSURE` (75%) of `max_connections`, so idle keep-alive connections give their
  slots back quickly when slots run short. Tornado's own header/body timeouts are switched
  off: they wrap every read in `gen.with_timeout`, a timer per request on the hot path.

Threads: everything here runs on the API IOLoop thread (no locks). The counters are plain
ints read by the metrics collector at scrape time, which also runs on that thread.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.ioloop import PeriodicCallback
from tornado.iostream import IOStream, SSLIOStream

from actors.api.errors import ApiError, error_body
from actors.api.framing import strict_chunk_lines
from prisn.outcomes import Outcome

EXEMPT_ROUTES = frozenset({"/health", "/ready"})
DEFAULT_MAX_CLIENTS = 65536
DEFAULT_MAX_CONNS_PER_IP = 128
PRESSURE = 0.75  # share of max_connections from which idle connections get the short timeout
DEFAULT_PRESSURE_IDLE_TIMEOUT = 5.0

# Connection phases (ints: compared on every request).
HEADER, BODY, BUSY, IDLE = 0, 1, 2, 3
PHASE_NAMES = {HEADER: "header", BODY: "body", BUSY: "response", IDLE: "idle"}


class TooManyRequests(ApiError):
    """429: the client address is over its request rate; `retry_after` whole seconds (>= 1)."""

    outcome = Outcome.RATE_LIMITED

    def __init__(self, retry_after: int, rate: float) -> None:
        super().__init__(f"rate limit of {rate:g} requests/s per client address exceeded; "
                         f"retry after {retry_after}s")
        self.retry_after = retry_after


class RateLimiter:
    """Token buckets per client address; see the module doc. IOLoop thread only.

    Invariants: at most `max_clients` buckets; a bucket never holds more than `burst` tokens;
    `retry_after` takes exactly one token when it answers 0 and none otherwise.
    """

    __slots__ = ("rate", "burst", "max_clients", "refused", "_clock", "_buckets")

    def __init__(self, rate: float, burst: int, *, max_clients: int = DEFAULT_MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError("rate must be a positive number (use no limiter for unlimited)")
        if burst < 1 or max_clients < 1:
            raise ValueError("burst and max_clients must be at least 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_clients = max_clients
        self.refused = 0  # requests answered 429 (prisn_http_rate_limited_total)
        self._clock = clock
        # address -> [tokens, time of the last update]; order = least recently seen first
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def retry_after(self, address: str, route: str = "", *, count: bool = True) -> int:
        """0 when a request from `address` may go ahead now (it takes a token), else the whole
        seconds (>= 1) until the bucket holds a token again, and the refusal is counted unless
        `count` is False (a caller that leaves the 429 to `check` elsewhere). Exempt routes
        always get 0."""
        if route in EXEMPT_ROUTES:
            return 0
        now = self._clock()
        buckets = self._buckets
        b = buckets.get(address)
        if b is None:
            if len(buckets) >= self.max_clients:
                buckets.popitem(last=False)
            buckets[address] = [self.burst - 1.0, now]
            return 0
        buckets.move_to_end(address)
        tokens = b[0] + (now - b[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        b[1] = now
        if tokens >= 1.0:
            b[0] = tokens - 1.0
            return 0
        b[0] = tokens
        if count:
            self.refused += 1
        return max(1, math.ceil((1.0 - tokens) / self.rate))

    def check(self, address: str, route: str = "") -> None:
        """Raise `TooManyRequests` when `address` is over its rate (see `retry_after`)."""
        wait = self.retry_after(address, route)
        if wait:
            raise TooManyRequests(wait, self.rate)


# ---------------------------------------------------------------------- connections
class _Conn:
    """What the sweep knows of one open connection: its stream, phase and phase start."""

    __slots__ = ("stream", "phase", "since")

    def __init__(self, stream: IOStream, phase: int, since: float) -> None:
        self.stream = stream
        self.phase = phase
        self.since = since


# stream -> (its connection's phase record, the server's clock): for `response_progress`
_TRACKED: weakref.WeakKeyDictionary[IOStream, tuple[_Conn, Callable[[], float]]] = (
    weakref.WeakKeyDictionary())


def response_progress(stream: IOStream | None) -> None:
    """A streamed response (chunked, e.g. a log follow) made progress: the client took what
    was written so far (call it after a completed ``flush``). Its `response_timeout` then
    counts from now, so a long stream to a reading client is not cut, while one whose client
    stops reading still is (its flush never completes). A stream this server does not track
    is ignored. API IOLoop thread."""
    if stream is None:
        return
    held = _TRACKED.get(stream)
    if held is not None and held[0].phase == BUSY:
        held[0].since = held[1]()


class _Tracked(httputil.HTTPMessageDelegate):
    """Wraps the application's delegate for one request to move its connection's phase:
    headers in -> body; body complete -> busy (the handler runs and answers)."""

    __slots__ = ("_delegate", "_conn", "_clock")

    def __init__(self, delegate: httputil.HTTPMessageDelegate, conn: _Conn,
                 clock: Callable[[], float]) -> None:
        self._delegate = delegate
        self._conn = conn
        self._clock = clock

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        c = self._conn
        if c.phase == IDLE:  # the whole header arrived between two sweeps
            c.since = self._clock()
        c.phase = BODY
        return self._delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self._delegate.data_received(chunk)

    def finish(self) -> None:
        c = self._conn
        c.phase = BUSY
        c.since = self._clock()
        self._delegate.finish()

    def on_connection_close(self) -> None:
        c = self._conn
        c.phase = BUSY
        c.since = self._clock()
        self._delegate.on_connection_close()


def client_key(address: Any) -> str:
    """The per-address connection cap's key for a peer `address` (any thread, pure): the IPv4
    address; an IPv6 address's /64 (one host usually has a whole /64); an IPv4-mapped IPv6
    address as its IPv4 address; "" for a non-IP peer (a Unix socket)."""
    host = address[0] if isinstance(address, tuple) and address else ""
    if not isinstance(host, str) or ":" not in host:
        return host if isinstance(host, str) else ""
    try:
        ip = ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


@dataclass
class LimitStats:
    """Counters of one LimitedHTTPServer (IOLoop thread; read at scrape time)."""

    connections_open: int = 0
    connections_refused: int = 0  # at accept, node cap and per-address cap together
    connections_refused_per_ip: int = 0  # of which: the address held max_conns_per_ip
    slow_clients_closed: dict[str, int] = field(
        default_factory=lambda: {"header": 0, "body": 0, "response": 0})
    idle_closed: int = 0


class LimitedHTTPServer(HTTPServer):
    """HTTPServer with a connection cap and the slow-client sweep (see the module doc).

    Extra keyword arguments: `max_connections`, `max_conns_per_ip`, `idle_timeout`,
    `pressure_idle_timeout` (the idle limit at or above `PRESSURE` of `max_connections`),
    `body_timeout`, `response_timeout` (None: unbounded), `sweep_interval` (seconds; 0 = no
    automatic sweep, call `sweep()` yourself), `clock`. Construct, listen and stop it on the
    IOLoop thread.

    Invariants: `stats.connections_open` == the sum of `_per_ip` values; an address is in
    `_per_ip` only while it has an open connection (so the table holds at most
    `max_connections` entries); no address holds more than `max_conns_per_ip`.
    """

    def initialize(self, request_callback: Any, *, max_connections: int = 1024,
                   max_conns_per_ip: int = DEFAULT_MAX_CONNS_PER_IP,
                   idle_timeout: float = 60.0,
                   pressure_idle_timeout: float = DEFAULT_PRESSURE_IDLE_TIMEOUT,
                   body_timeout: float = 10.0,
                   response_timeout: float | None = None, sweep_interval: float = 1.0,
                   clock: Callable[[], float] = time.monotonic, **kwargs: Any) -> None:
        kwargs.pop("idle_connection_timeout", None)
        kwargs.pop("body_timeout", None)
        super().initialize(request_callback, **kwargs)
        # The sweep enforces the idle and header timeouts: no gen.with_timeout per request.
        self.conn_params.header_timeout = None
        self.conn_params.body_timeout = None
        self.max_connections = max_connections
        self.max_conns_per_ip = max_conns_per_ip
        self.idle_timeout = idle_timeout
        self.pressure_idle_timeout = min(pressure_idle_timeout, idle_timeout)
        self._per_ip: dict[str, int] = {}  # client key -> open connections
        self._key_of: dict[IOStream, str] = {}  # open stream -> its client key
        self.body_timeout = body_timeout
        self.response_timeout = response_timeout
        self.stats = LimitStats()
        self._clock = clock
        self._conns: dict[object, _Conn] = {}
        self._sweeper: PeriodicCallback | None = None
        if sweep_interval > 0:
            self._sweeper = PeriodicCallback(self.sweep, sweep_interval * 1000.0)
            self._sweeper.start()

    # ------------------------------------------------------------------ Tornado hooks
    def handle_stream(self, stream: IOStream, address: tuple) -> None:
        stats = self.stats
        if stats.connections_open >= self.max_connections:
            stats.connections_refused += 1
            _refuse(stream, self.max_connections)
            return
        key = client_key(address)
        held = self._per_ip.get(key, 0)
        if held >= self.max_conns_per_ip:
            stats.connections_refused += 1
            stats.connections_refused_per_ip += 1
            _refuse(stream, self.max_conns_per_ip, per_ip=True)
            return
        self._per_ip[key] = held + 1
        self._key_of[stream] = key
        stats.connections_open += 1
        strict_chunk_lines(stream)  # bare-LF chunk framing: a prompt 400, not a 10 s hang
        super().handle_stream(stream, address)

    def start_request(self, server_conn: object,
                      request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        delegate = super().start_request(server_conn, request_conn)
        c = self._conns.get(server_conn)
        if c is None:  # first request: its clock runs from the accept (TLS handshake included)
            c = self._conns[server_conn] = _Conn(server_conn.stream,  # type: ignore[attr-defined]
                                                 HEADER, self._clock())
            _TRACKED[c.stream] = (c, self._clock)
        else:
            c.phase = IDLE
            c.since = self._clock()
        return _Tracked(delegate, c, self._clock)

    def on_close(self, server_conn: object) -> None:
        self._conns.pop(server_conn, None)
        self.stats.connections_open -= 1
        key = self._key_of.pop(server_conn.stream, None)  # type: ignore[attr-defined]
        if key is not None:
            left = self._per_ip[key] - 1
            if left:
                self._per_ip[key] = left
            else:
                del self._per_ip[key]
        super().on_close(server_conn)

    def connections_of(self, address: Any) -> int:
        """Open connections counted against `address`'s cap (tests, debugging)."""
        return self._per_ip.get(client_key(address), 0)

    def idle_limit(self) -> float:
        """The idle timeout now: the short one under pressure (see the module doc)."""
        if self.stats.connections_open >= PRESSURE * self.max_connections:
            return self.pressure_idle_timeout
        return self.idle_timeout

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None
        super().stop()

    def phases(self) -> list[str]:
        """The phase of every tracked connection (tests, debugging)."""
        return [PHASE_NAMES[c.phase] for c in self._conns.values()]

    # ------------------------------------------------------------------ the sweep
    def sweep(self) -> None:
        """Close every connection over its phase's time limit (see the module doc)."""
        now = self._clock()
        stats = self.stats
        idle_limit = self.idle_limit()
        for c in list(self._conns.values()):
            stream = c.stream
            if stream.closed():
                continue
            phase, age = c.phase, now - c.since
            if phase == IDLE:
                if getattr(stream, "_read_buffer_size", 0):  # part of the next request is in
                    c.phase, c.since = HEADER, now
                elif age > idle_limit:
                    stats.idle_closed += 1
                    stream.close()
            elif phase == BUSY:
                if self.response_timeout is not None and age > self.response_timeout:
                    stats.slow_clients_closed["response"] += 1
                    stream.close()
            elif age > self.body_timeout:
                stats.slow_clients_closed[PHASE_NAMES[phase]] += 1
                stream.close()


def _refuse(stream: IOStream, limit: int, *, per_ip: bool = False) -> None:
    """Answer 503 (node cap) or 429 (`per_ip`: the address's cap) on a plain connection (best
    effort, one non-blocking write) and close it. A TLS connection is closed at once:
    answering would need a handshake first."""
    if not isinstance(stream, SSLIOStream):
        if per_ip:
            status, line = 429, b"429 Too Many Requests"
            message = (f"too many open connections from your address (limit {limit}); close "
                       "idle ones or retry shortly")
        else:
            status, line = 503, b"503 Service Unavailable"
            message = f"too many open connections (limit {limit}); retry shortly"
        body = json.dumps(error_body(status, message)).encode()
        head = (b"HTTP/1.1 " + line + b"\r\n"
                b"Content-Type: application/json; charset=UTF-8\r\nRetry-After: 1\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
        try:
            stream.socket.send(head + body)
        except OSError:
            pass
    stream.close()


class HandshakeLogFilter(logging.Filter):
    """Rate-limits Tornado's per-connection "SSL Error on ..." warnings (a failed TLS
    handshake is outside input: a scanner must not be able to fill the log). At most one such
    record per `interval` seconds passes, carrying the number suppressed since the last one.
    Attach to the ``tornado.general`` logger; logging may call it from any thread (a lock)."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        super().__init__()
        self.interval = interval
        self.suppressed = 0
        self._clock = clock
        self._last = -math.inf
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("SSL Error"):
            return True
        with self._lock:
            now = self._clock()
            if now - self._last < self.interval:
                self.suppressed += 1
                return False
            self._last = now
            if self.suppressed:
                record.msg = f"{record.msg} (and {self.suppressed} more TLS handshake failures " \
                             f"in the last {self.interval:g}s, not logged)"
                self.suppressed = 0
        return True
