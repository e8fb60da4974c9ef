"""The hot read, `GET /api/v1/deployments/{name}`, without Tornado's RequestHandler machinery,
and the raw response writer both fast paths (`actors.api.fastpath`) share.

Thread: the API IOLoop thread only (like everything in `actors.api`).

`fastpath.Dispatch` asks `fast_read` once the headers are in. A plain read (method GET, the
path ``/api/v1/deployments/<name or id>`` of letters, digits, ``-`` and ``_`` only, no query
string or exactly ``?namespace=<valid name>``, no body, authentication off, no Origin and
no CORS allow list and an accepted Host (`RequestGuard.plain`), the rate limiter allowing it) is served by `FastRead`; everything else (HEAD, a trailing slash, an
escaped or odd name, any other query, a body, auth on, over the rate) goes to the
Application, exactly as if this module did not exist.

`FastRead` is a thin adapter, as `DeploymentHandler.get` is, over the same shared operations
(`actors.api.ops`), so it answers byte for byte as the handler does but for the Date second
and a generated X-Request-Id: the consistency level (`ops.read_level`: ``strong``, a weak
level, else 400); a strong read waits for the node client's shared read barrier
(`ops.barrier`; the client batches concurrent strong reads onto one ReadIndex,
`actors.api.node.BarrierBatch`, whichever adapter asks) and answers its failure as
`ops.strong_read_error` (503 + ``Retry-After: 1``). Then the local store's
`get(namespace, name)`: 200 with the deployment (`ops.render`) or 404
(`ops.deployment_not_found`). Errors are `errors.error_json`, as `BaseHandler.write_error`
writes them. Unlike the handler it waits for the barrier with a callback, not a coroutine.
Headers as Tornado's RequestHandler sends them, in its order: Server, Content-Type, Date,
X-Prisn-Node, X-Prisn-Leader, Retry-After (503), X-Request-Id, Content-Length; no ETag. The
same request metric (``GET``, ``/api/v1/deployments/{name}``) and access log.
"""

from __future__ import annotations

import asyncio
import logging
import string
import time
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

import tornado
from tornado import httputil, iostream

from actors.api import ops
from actors.api.errors import ApiError, Unavailable, error_answer, error_json
from prisn.fsm.validation import ValidationError, validate_name

if TYPE_CHECKING:
    from actors.api.context import ApiContext

log = logging.getLogger("prisn.api")

ROUTE = "/api/v1/deployments/{name}"  # DeploymentHandler.ROUTE: metric and rate-limit label
_PREFIX = "/api/v1/deployments/"
_NS_QUERY = "namespace="
# A name or id made of these needs no unquoting and matches the handler's `([^/]+)` as is.
_PLAIN = frozenset(string.ascii_letters + string.digits + "-_")
JSON_TYPE = "application/json; charset=UTF-8"
SERVER = f"TornadoServer/{tornado.version}"  # what RequestHandler.clear() sends


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
        self._level = headers.get("X-Prisn-Consistency")
        self._rid = ops.request_id(ctx, headers.get("X-Request-Id", ""))
        # a 200 carries the leader known when the request came in, as the handler's does
        self._leader = ctx.node.current_leader() or ""
        self._start = time.perf_counter()
        self._closed = False

    def headers_received(self, start_line: Any, headers: Any) -> None:
        return None

    def data_received(self, chunk: bytes) -> None:
        return None  # `fast_read` takes no request with a body

    def finish(self) -> None:
        try:
            strong = ops.read_level(self._level)
        except ApiError as exc:  # a bad level: 400
            self._respond(*error_answer(exc))
            return
        if not strong:
            self._read()
            return
        barrier: asyncio.Future[None]
        try:
            barrier = asyncio.ensure_future(ops.barrier(self.ctx))
        except Exception as exc:  # noqa: BLE001 - answered as a failed barrier
            barrier = asyncio.get_running_loop().create_future()
            barrier.set_exception(exc)
        barrier.add_done_callback(self.barrier_done)

    def on_connection_close(self) -> None:
        self._closed = True

    def barrier_done(self, barrier: asyncio.Future[None]) -> None:
        """The shared barrier ended: read, or answer its failure (`ops.strong_read_error`)
        as `BaseHandler.consistency` does."""
        exc = (Unavailable("the read barrier was cancelled") if barrier.cancelled()
               else barrier.exception())
        if exc is None:
            self._read()
            return
        err = ops.strong_read_error(exc)
        if isinstance(err, ApiError):
            self._respond(*error_answer(err))
        else:  # a bug answers 500, as Tornado's handler would
            log.error("GET %s failed", self.uri, exc_info=err)
            self._respond(500, error_json(500, "internal server error"))

    def _read(self) -> None:
        """Answer from the local store: 200 with the deployment, or 404."""
        try:
            dep = self.ctx.node.store.get(self._ns, self._name)
            if dep is None:
                status, data = error_answer(ops.deployment_not_found(self._name))
            else:
                status, data = 200, ops.render(ops.deployment_view(self.ctx, dep))
        except Exception:  # noqa: BLE001 - a bug answers 500, as Tornado's handler would
            log.exception("GET %s failed", self.uri)
            status, data = 500, error_json(500, "internal server error")
        self._respond(status, data)

    def _respond(self, status: int, data: bytes) -> None:
        if not self._closed:
            write_response(self._conn, self.ctx, status, data, self._rid,
                           self._leader if status == 200 else None)
        seconds = time.perf_counter() - self._start
        self.ctx.metrics.observe_request("GET", ROUTE, status, seconds)
        ops.access_log(status, "GET", self.uri, seconds)
