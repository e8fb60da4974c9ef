"""The hot write, `POST /api/v1/deployments`, without Tornado's RequestHandler machinery.

Thread: the API IOLoop thread only (like everything in `actors.api`).

`PrisnApplication.start_request` hands every request to a `Dispatch` delegate. When the
headers are in, it chooses: a plain create (exact path, no query string, a valid
Content-Length within the body limit, no Transfer-Encoding, authentication off, no Origin
and no CORS allow list, an accepted Host and a JSON Content-Type (`RequestGuard.plain`), the
rate limiter allowing it) is served by `FastCreate`, a plain `GET /api/v1/deployments/{name}` by
`actors.api.fastread.FastRead`; everything else, including every request that would be
refused before its body is read (400/401/403/413/429), goes to the Application's own
routing delegate, exactly as if this module did not exist.

`FastCreate` is a thin adapter, as `DeploymentsHandler.post` is: it answers through the same
shared operations (`actors.api.ops`: `request_id`, `parse_json`, `build` of
`CommandFactory.create`, `propose_command`, `render`; errors as `errors.error_json`), so the
same status codes, body bytes, error shape `{"error", "message"}` and headers in the handler's order
(`fastread.write_response`: Server, Content-Type, Date, `X-Prisn-Node`, `X-Prisn-Leader`,
`Retry-After` on 503, `X-Request-Id`, Content-Length), the same request metric. The HTTP
tests run every create through it. What it saves: building a RequestHandler, Tornado's
routing and coroutine plumbing and its header objects, about 30 us of this thread per
write (measured: benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from tornado import httputil

from actors.api import ops
from actors.api.errors import ApiError, error_answer, error_json
from actors.api.fastread import fast_read, limiter_allows, write_response
from actors.api.outcomes import http_status

if TYPE_CHECKING:
    from actors.api.context import ApiContext

log = logging.getLogger("prisn.api")

ROUTE = "/api/v1/deployments"


class Routing(Protocol):
    """What `Dispatch` needs of the Application (`actors.api.handler.PrisnApplication`)."""

    ctx: ApiContext

    def slow_request(self, server_conn: object,
                     request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        """The Application's own routing delegate."""
        ...


def _fast_create_ok(ctx: ApiContext, start_line: httputil.RequestStartLine,
                    headers: httputil.HTTPHeaders, remote_ip: str) -> bool:
    """True if this request may skip the Application (see the module doc). Consumes one
    rate-limiter token when it says yes, as `BaseHandler.prepare` would have."""
    if start_line.method != "POST" or start_line.path != ROUTE or ctx.auth.enabled:
        return False
    if "Transfer-Encoding" in headers or not ctx.guard.plain(headers):
        return False
    length = headers.get("Content-Length")
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses; the
    # Application answers anything unusual with its 400
    if length is None or not (length.isascii() and length.isdigit()) or int(length) > ctx.max_body:
        return False
    # over the rate: the Application answers (and counts) the 429
    return limiter_allows(ctx, remote_ip, ROUTE)


class Dispatch(httputil.HTTPMessageDelegate):
    """One request: forwards every event to `FastCreate` or to the Application's delegate,
    chosen in `headers_received`."""

    __slots__ = ("_app", "_server_conn", "_request_conn", "_target")

    def __init__(self, app: Routing, server_conn: object,
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
        ctx = app.ctx
        target: httputil.HTTPMessageDelegate | None
        if _fast_create_ok(ctx, start_line, headers, ip):
            target = FastCreate(ctx, conn, headers)
        else:
            target = fast_read(ctx, conn, start_line, headers, ip)
            if target is None:
                target = app.slow_request(self._server_conn, conn)
        self._target = target
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
        self._rid = ops.request_id(ctx, headers.get("X-Request-Id", ""))

    def headers_received(self, start_line: Any, headers: Any) -> None:
        return None

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def finish(self) -> None:
        asyncio.ensure_future(self._run())

    def on_connection_close(self) -> None:
        self._closed = True

    async def _run(self) -> None:
        ctx = self._ctx
        try:
            body = ops.parse_json(b"".join(self._chunks))
            key = self._headers.get("Idempotency-Key")
            command = ops.build(lambda: ctx.commands.create(body, namespace=None, key=key))
            outcome, answer = await ops.propose_command(ctx, command)
            status = http_status(outcome)
            # the store's answer (2xx, or e.g. its 409/422) as `BaseHandler.send_json`
            data = ops.render(answer)
        except ApiError as exc:  # raised: as `BaseHandler.write_error` renders it
            status, data = error_answer(exc)
        except Exception:  # noqa: BLE001 - a bug answers 500, as Tornado's handler would
            log.exception("POST %s failed", ROUTE)
            status, data = 500, error_json(500, "internal server error")
        self._respond(status, data)

    def _respond(self, status: int, data: bytes) -> None:
        ctx = self._ctx
        if not self._closed:
            write_response(self._conn, ctx, status, data, self._rid)
        seconds = time.perf_counter() - self._start
        ctx.metrics.observe_request("POST", ROUTE, status, seconds)
        ops.access_log(status, "POST", ROUTE, seconds)
