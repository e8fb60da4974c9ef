"""The hot write, `POST /api/v1/deployments`, without Tornado's RequestHandler machinery.

Thread: the API IOLoop thread only (like everything in `actors.api`).

`PrisnApplication.start_request` hands every request to a `Dispatch` delegate. When the
headers are in, it chooses: a plain create (exact path, no query string, a valid
Content-Length within the body limit, no Transfer-Encoding, authentication off, the rate
limiter allowing it) is served by `FastCreate`; everything else, including every request
that would be refused before its body is read (400/401/403/413/429), goes to the
Application's own routing delegate, exactly as if this module did not exist.

`FastCreate` answers with the same contract as `DeploymentsHandler.post`: the same command
(`CommandFactory.create`), the same proposal path (`app.propose_command`), the same status
codes, error shape `{"error", "message"}` and headers (`X-Prisn-Node`, `X-Prisn-Leader`,
`X-Request-Id`, `Content-Type`, `Retry-After` on 503), the same request metric. The HTTP
tests run every create through it. What it saves: building a RequestHandler, Tornado's
routing and coroutine plumbing and its header objects, about 30 us of this thread per
write (measured: benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from tornado import httputil, iostream

from actors.api.errors import ApiError
from prisn.fsm.deployments import error_body
from prisn.fsm.validation import ValidationError

if TYPE_CHECKING:
    from actors.api.app import ApiContext, PrisnApplication

log = logging.getLogger("prisn.api")

ROUTE = "/api/v1/deployments"
_JSON_TYPE = "application/json; charset=UTF-8"
_SERVER = "prisn"


class _DateCache:
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


_DATE = _DateCache()


def _fast_create_ok(ctx: ApiContext, start_line: httputil.RequestStartLine,
                    headers: httputil.HTTPHeaders, remote_ip: str) -> bool:
    """True if this request may skip the Application (see the module doc). Consumes one
    rate-limiter token when it says yes, as `BaseHandler.prepare` would have."""
    if start_line.method != "POST" or start_line.path != ROUTE or ctx.auth.enabled:
        return False
    if "Transfer-Encoding" in headers:
        return False
    length = headers.get("Content-Length")
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses; the
    # Application answers anything unusual with its 400
    if length is None or not (length.isascii() and length.isdigit()) or int(length) > ctx.max_body:
        return False
    limiter = ctx.limiter
    # over the rate: the Application answers the 429 (a refused check takes no token)
    return limiter is None or not limiter.retry_after(remote_ip, ROUTE)


class Dispatch(httputil.HTTPMessageDelegate):
    """One request: forwards every event to `FastCreate` or to the Application's delegate,
    chosen in `headers_received`."""

    __slots__ = ("_app", "_server_conn", "_request_conn", "_target")

    def __init__(self, app: PrisnApplication, server_conn: object,
                 request_conn: httputil.HTTPConnection) -> None:
        self._app = app
        self._server_conn = server_conn
        self._request_conn = request_conn
        self._target: httputil.HTTPMessageDelegate | None = None

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Any:
        app, conn = self._app, self._request_conn
        assert isinstance(start_line, httputil.RequestStartLine)
        ip = getattr(getattr(conn, "context", None), "remote_ip", "") or ""
        if _fast_create_ok(app.ctx, start_line, headers, ip):
            self._target = FastCreate(app.ctx, conn, headers)
        else:
            self._target = app.slow_request(self._server_conn, conn)
        return self._target.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        assert self._target is not None
        return self._target.data_received(chunk)

    def finish(self) -> None:
        if self._target is not None:
            self._target.finish()

    def on_connection_close(self) -> None:
        if self._target is not None:
            self._target.on_connection_close()


class FastCreate(httputil.HTTPMessageDelegate):
    """Reads the body, then creates the deployment and answers (module doc)."""

    __slots__ = ("_ctx", "_conn", "_headers", "_chunks", "_start", "_closed", "_rid")

    def __init__(self, ctx: ApiContext, conn: httputil.HTTPConnection,
                 headers: httputil.HTTPHeaders) -> None:
        self._ctx = ctx
        self._conn = conn
        self._headers = headers
        self._chunks: list[bytes] = []
        self._start = time.perf_counter()
        self._closed = False
        rid = headers.get("X-Request-Id", "")
        if not (0 < len(rid) <= 128 and rid.isascii() and rid.isprintable()):
            rid = f"{ctx.node.node_id}-{next(ctx.request_ids)}"
        self._rid = rid

    def headers_received(self, start_line: Any, headers: Any) -> None:
        return None

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def finish(self) -> None:
        asyncio.ensure_future(self._run())

    def on_connection_close(self) -> None:
        self._closed = True

    async def _run(self) -> None:
        from actors.api.app import parse_json, propose_command  # app imports this module

        ctx = self._ctx
        try:
            body = parse_json(b"".join(self._chunks))
            try:
                command = ctx.commands.create(
                    body, namespace=None, key=self._headers.get("Idempotency-Key"))
            except ValidationError as exc:
                raise ApiError(exc.message, status=400) from None
            status, answer = await propose_command(ctx, command)
        except ApiError as exc:
            status = exc.status
            answer = error_body(status, exc.message or HTTPStatus(status).phrase)
        except Exception:  # noqa: BLE001 - a bug answers 500, as Tornado's handler would
            log.exception("POST %s failed", ROUTE)
            status, answer = 500, error_body(500, "internal server error")
        self._respond(status, answer)

    def _respond(self, status: int, answer: Any) -> None:
        ctx = self._ctx
        data = json.dumps(answer, separators=(",", ":"), allow_nan=False).encode()
        headers = httputil.HTTPHeaders()
        headers["Content-Type"] = _JSON_TYPE
        headers["Content-Length"] = str(len(data))
        headers["Date"] = _DATE.get()
        headers["Server"] = _SERVER
        headers["X-Prisn-Node"] = ctx.node.node_id
        headers["X-Prisn-Leader"] = ctx.node.current_leader() or ""
        headers["X-Request-Id"] = self._rid
        if status == 503:
            headers["Retry-After"] = "1"
        if not self._closed:
            try:
                self._conn.write_headers(
                    httputil.ResponseStartLine("HTTP/1.1", status, HTTPStatus(status).phrase),
                    headers, data)
                self._conn.finish()
            except iostream.StreamClosedError:
                pass
        ctx.metrics.observe_request("POST", ROUTE, status, time.perf_counter() - self._start)
        if status >= 500 and status != 503:
            log.warning("%d POST %s", status, ROUTE)
