"""The hot read, `GET /api/v1/deployments/{name}`, without Tornado's RequestHandler machinery,
and the raw response writer both fast paths (`actors.api.fastpath`) share.

Thread: the API IOLoop thread only (like everything in `actors.api`).

`fastpath.Dispatch` asks `fast_read` once the headers are in. A plain read (method GET, the
path ``/api/v1/deployments/<name or id>`` of letters, digits, ``-`` and ``_`` only, no query
string or exactly ``?namespace=<valid name>``, no body, authentication off, no Origin and
no CORS allow list and an accepted Host (`RequestGuard.plain`), the rate limiter allowing it) is served by `FastRead`; everything else (HEAD, a trailing slash, an
escaped or odd name, any other query, a body, auth on, over the rate) goes to the
Application, exactly as if this module did not exist.

`FastRead` answers with the same contract as `DeploymentHandler.get`, byte for byte but for
the Date second and a generated X-Request-Id: ``X-Prisn-Consistency`` (stripped, lowercased)
``strong`` waits for the same read barrier (`ctx.node.read_barrier(ctx.read_timeout)`, which
a follower forwards to its leader), 503 + ``Retry-After: 1`` when it is unavailable or times
out; a weak level (`app._WEAK_READS`) reads locally; anything else is 400. The strong reads
that arrive in one IOLoop iteration share one barrier call, started after the last of them
arrived (`_join_barrier`): the same guarantee, one ReadIndex round trip per batch. Then the local
store's `get(namespace, name)`: 200 with the deployment (compact JSON) or 404. Errors are
``{"error", "message"}`` as `BaseHandler.write_error` renders them (json.dumps defaults).
Headers as Tornado's RequestHandler sends them, in its order: Server, Content-Type, Date,
X-Prisn-Node, X-Prisn-Leader, Retry-After (503), X-Request-Id, Content-Length; no ETag. The
same request metric (``GET``, ``/api/v1/deployments/{name}``) and access log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import string
import time
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

import tornado
from tornado import httputil, iostream

from actors.api.errors import ApiError, Unavailable, error_body
from actors.api.outcomes import error_string
from prisn.fsm.validation import ValidationError, validate_name

if TYPE_CHECKING:
    from actors.api.app import ApiContext

log = logging.getLogger("prisn.api")

ROUTE = "/api/v1/deployments/{name}"  # DeploymentHandler.ROUTE: metric and rate-limit label
_PREFIX = "/api/v1/deployments/"
_NS_QUERY = "namespace="
# A name or id made of these needs no unquoting and matches the handler's `([^/]+)` as is.
_PLAIN = frozenset(string.ascii_letters + string.digits + "-_")
JSON_TYPE = "application/json; charset=UTF-8"
SERVER = f"TornadoServer/{tornado.version}"  # what RequestHandler.clear() sends
BAD_LEVEL = "X-Prisn-Consistency must be 'strong' or 'default'"


class DateCache:
    """The HTTP Date header, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def get(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True)
        return self._value


DATE = DateCache()


def limiter_allows(ctx: ApiContext, remote_ip: str, route: str) -> bool:
    """True (one token taken, as `BaseHandler.prepare` would) unless the rate limiter refuses;
    a refusal is left to the Application, whose `check` answers and counts the 429."""
    limiter = ctx.limiter
    return limiter is None or not limiter.retry_after(remote_ip, route, count=False)


def request_id(ctx: ApiContext, headers: httputil.HTTPHeaders) -> str:
    """The client's X-Request-Id if sane (as `BaseHandler.prepare`), else a new one."""
    rid = headers.get("X-Request-Id", "")
    if not (0 < len(rid) <= 128 and rid.isascii() and rid.isprintable()):
        rid = f"{ctx.node.node_id}-{next(ctx.request_ids)}"
    return rid


def error_bytes(status: int, message: str) -> bytes:
    """An error body exactly as `BaseHandler.write_error` writes it."""
    return json.dumps(error_body(status, message)).encode()


def write_response(conn: httputil.HTTPConnection, ctx: ApiContext, status: int, data: bytes,
                   rid: str, leader: str | None = None) -> None:
    """Write a complete JSON response with the handler's headers; a closed stream is
    ignored. `leader`: the X-Prisn-Leader value (default: the current one)."""
    headers = httputil.HTTPHeaders()
    headers["Server"] = SERVER
    headers["Content-Type"] = JSON_TYPE
    headers["Date"] = DATE.get()
    headers["X-Prisn-Node"] = ctx.node.node_id
    headers["X-Prisn-Leader"] = (ctx.node.current_leader() or "") if leader is None else leader
    if status == 503:
        headers["Retry-After"] = "1"
    headers["X-Request-Id"] = rid
    headers["Content-Length"] = str(len(data))
    try:
        conn.write_headers(httputil.ResponseStartLine(
            "HTTP/1.1", status, httputil.responses.get(status, "Unknown")), headers, data)
        conn.finish()
    except iostream.StreamClosedError:
        pass


def _plain_namespace(query: str) -> str | None:
    """The namespace of a ``namespace=<valid name>`` query, else None."""
    if not query.startswith(_NS_QUERY):
        return None
    ns = query[len(_NS_QUERY):]
    if not ns or not _PLAIN.issuperset(ns):
        return None
    try:
        return validate_name(ns, "namespace")
    except ValidationError:
        return None  # the handler's 400


def fast_read(ctx: ApiContext, conn: httputil.HTTPConnection,
              start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders,
              remote_ip: str) -> FastRead | None:
    """A `FastRead` for a plain read (module doc), else None (the Application answers).
    Takes one rate-limiter token when it says yes."""
    if start_line.method != "GET" or ctx.auth.enabled:
        return None
    uri = start_line.path
    if not uri.startswith(_PREFIX):
        return None
    path, sep, query = uri.partition("?")
    name = path[len(_PREFIX):]
    if not name or not _PLAIN.issuperset(name):
        return None
    namespace = None
    if sep:
        namespace = _plain_namespace(query)
        if namespace is None:
            return None
    if "Transfer-Encoding" in headers or headers.get("Content-Length", "0") != "0":
        return None
    if not ctx.guard.plain(headers):  # Origin, CORS or a foreign Host: the handler answers
        return None
    if not limiter_allows(ctx, remote_ip, ROUTE):
        return None
    return FastRead(ctx, conn, headers, uri, namespace, name)


class ReadBarriers:
    """One node's shared read barriers (`ApiContext.barriers`; IOLoop thread only): the
    strong reads waiting for a call that has not started, and whether a call is under way
    (at most one at a time)."""

    __slots__ = ("pending", "in_flight")

    def __init__(self) -> None:
        self.pending: list[FastRead] | None = None
        self.in_flight = False


def _join_barrier(read: FastRead) -> None:
    """Make `read` wait for the next read barrier call of its node. The strong reads that
    arrive before that call starts share it: those of one IOLoop iteration when no call is
    under way, else all those that arrive until the call under way ends (one call at a
    time per node, as etcd's read loop: under load the batches grow instead of the calls).

    Invariant: a read joins only a batch whose call has not started, so the call, and with it
    the ReadIndex (commit index captured, leadership confirmed), comes after the read
    arrived: exactly the guarantee of one call per read, for one ReadIndex per batch."""
    ctx = read.ctx
    barriers = ctx.barriers
    if barriers.pending is None:
        barriers.pending = []
        if not barriers.in_flight:
            asyncio.get_running_loop().call_soon(_start_barrier, ctx)
    barriers.pending.append(read)


def _start_barrier(ctx: ApiContext) -> None:
    """Close the batch (a later read waits for the next call) and call the barrier once."""
    barriers = ctx.barriers
    batch, barriers.pending = barriers.pending, None
    if not batch:
        return
    barriers.in_flight = True
    task = asyncio.ensure_future(ctx.node.read_barrier(ctx.read_timeout))
    task.add_done_callback(lambda t: _barrier_done(ctx, batch, t))


def _barrier_done(ctx: ApiContext, batch: list[FastRead], task: asyncio.Future[None]) -> None:
    """Answer the batch; the reads that queued meanwhile get the next call, or, when this
    one failed (no leader, no quorum, timed out), the same answer at once: a later call
    would most likely fail the same way, and each read must be answered within about
    `read_timeout` of its arrival, not after two of them."""
    barriers = ctx.barriers
    barriers.in_flight = False
    if barriers.pending:
        if task.cancelled() or task.exception() is not None:
            batch = batch + barriers.pending
            barriers.pending = None
        else:
            _start_barrier(ctx)
    for read in batch:
        try:
            read.barrier_done(task)
        except Exception:  # noqa: BLE001 - one bad answer must not strand the rest
            log.exception("GET %s failed", read.uri)


class FastRead(httputil.HTTPMessageDelegate):
    """One plain read: barrier if strong, then the local store, then the answer (module doc).
    Invariant: answers exactly once and observes the request metric exactly once."""

    __slots__ = ("ctx", "_conn", "uri", "_ns", "_name", "_level", "_rid", "_leader",
                 "_start", "_closed")

    def __init__(self, ctx: ApiContext, conn: httputil.HTTPConnection,
                 headers: httputil.HTTPHeaders, uri: str, namespace: str | None,
                 name: str) -> None:
        self.ctx = ctx
        self._conn = conn
        self.uri = uri
        self._ns = namespace
        self._name = name
        self._level = headers.get("X-Prisn-Consistency", "").strip().lower()
        self._rid = request_id(ctx, headers)
        # a 200 carries the leader known when the request came in, as the handler's does
        self._leader = ctx.node.current_leader() or ""
        self._start = time.perf_counter()
        self._closed = False

    def headers_received(self, start_line: Any, headers: Any) -> None:
        return None

    def data_received(self, chunk: bytes) -> None:
        return None  # `fast_read` takes no request with a body

    def finish(self) -> None:
        from actors.api.app import _WEAK_READS  # app imports this module

        level = self._level
        if level == "strong":
            _join_barrier(self)
        elif level in _WEAK_READS:
            self._read()
        else:
            self._respond(400, error_bytes(400, BAD_LEVEL))

    def on_connection_close(self) -> None:
        self._closed = True

    def barrier_done(self, barrier: asyncio.Future[None]) -> None:
        """The shared barrier ended: read, or answer its failure as
        `BaseHandler.consistency` does."""
        exc = (Unavailable("the read barrier was cancelled") if barrier.cancelled()
               else barrier.exception())
        if exc is None:
            self._read()
        elif isinstance(exc, Unavailable):
            self._respond(503, error_bytes(503, (
                f"strong read unavailable: {exc.message}; retry, or read without "
                "X-Prisn-Consistency: strong (possibly stale)")))
        elif isinstance(exc, TimeoutError):
            self._respond(503, error_bytes(
                503, "strong read unavailable: read barrier timed out"))
        elif isinstance(exc, ApiError):
            self._respond(exc.status, error_bytes(
                exc.status, exc.message or error_string(exc.status)))
        else:  # a bug answers 500, as Tornado's handler would
            log.error("GET %s failed", self.uri, exc_info=exc)
            self._respond(500, error_bytes(500, "internal server error"))

    def _read(self) -> None:
        """Answer from the local store: 200 with the deployment, or 404."""
        try:
            dep = self.ctx.node.store.get(self._ns, self._name)
            if dep is None:
                status, data = 404, error_bytes(404, f"deployment {self._name} not found")
            else:
                status = 200
                data = json.dumps(dep, separators=(",", ":"), allow_nan=False).encode()
        except Exception:  # noqa: BLE001 - a bug answers 500, as Tornado's handler would
            log.exception("GET %s failed", self.uri)
            status, data = 500, error_bytes(500, "internal server error")
        self._respond(status, data)

    def _respond(self, status: int, data: bytes) -> None:
        if not self._closed:
            write_response(self._conn, self.ctx, status, data, self._rid,
                           self._leader if status == 200 else None)
        seconds = time.perf_counter() - self._start
        self.ctx.metrics.observe_request("GET", ROUTE, status, seconds)
        level = logging.WARNING if status >= 500 and status != 503 else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "%d GET %s %.1fms", status, self.uri, 1000.0 * seconds)
