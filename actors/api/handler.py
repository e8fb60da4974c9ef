"""`BaseHandler`: the Tornado adapter every route's handler derives from, and the Application.

Threads: everything here runs on the API IOLoop thread (Tornado is single-threaded); the
node is reached only through the `NodeClient` protocol. The operations a route performs
(request ids, parsing, building and proposing a command, consistency, rendering) are the
shared ones of `actors.api.ops`, which the raw fast paths use too: this module only adapts
them to `RequestHandler`.

Invariants:
- Every response carries ``X-Prisn-Node`` and ``X-Prisn-Leader`` (empty if unknown); every
  error body is ``{"error": <HTTP reason phrase>, "message": ...}`` (unknown route 404, wrong
  method 405 with ``Allow``, malformed JSON 400, ...).
- Request bodies are streamed (`@stream_request_body`): `prepare` refuses a Content-Length
  above `max_body` with 413 before one body byte is read, and `data_received` refuses a
  chunked body as soon as it passes `max_body`; in both cases Tornado then closes the
  connection instead of reading the rest. `make_server` also sets the server's
  `max_body_size` to `max_body` as a backstop.
- A refused request (400/404/405/409/413/503 before proposing) proposes nothing.
- At most `max_inflight` proposals wait at once; one more gets 503 immediately.
- No per-request logging at INFO (`log_request`, `ops.access_log`); metric label children are cached.
- Authentication (`actors.api.auth`) happens in `prepare`, before the body is read: each
  handler's `AUTH` maps a method to the permission it needs (a method it lacks needs
  `AUTHENTICATED`, then gets 405; unknown paths likewise, then 404). 401/403 are counted by
  reason; a write is also checked against the namespace of the built command before it is
  proposed. A refused request proposes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, cast

from tornado.httputil import HTTPConnection, HTTPMessageDelegate
from tornado.web import Application, HTTPError, RequestHandler, stream_request_body

from actors.api import ops
from actors.api.auth import (
    ANONYMOUS,
    AUTHENTICATED,
    OPEN_PRINCIPAL,
    READ,
    WRITE,
    Forbidden,
    Principal,
    Unauthorized,
    check_namespace,
    check_permission,
)
from actors.api.context import ApiContext
from actors.api.errors import (
    ApiError,
    BadRequest,
    PayloadTooLarge,
    error_json,
    error_message,
)
from actors.api.fastpath import Dispatch
from actors.api.ops import parse_json, render, request_id
from actors.api.outcomes import error_string, http_status
from prisn.fsm.commands import OPS
from prisn.fsm.results import Result
from prisn.fsm.secrets import SECRET_OPS
from prisn.fsm.validation import ValidationError, validate_name
from prisn.outcomes import Outcome

# Tornado's own per-connection limit while a handler streams: our handlers enforce `max_body`
# themselves (with a proper 413), so Tornado must not cut in first with its bare 400.
_STREAM_LIMIT = 1 << 62
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
WRITE_OPS = frozenset(OPS) | frozenset(SECRET_OPS)  # namespaced writes (`commit` checks)


class PrisnApplication(Application):
    """A Tornado Application that carries the `ApiContext`; a plain create or read takes a
    fast path (`actors.api.fastpath`), every other request Tornado's routing."""

    ctx: ApiContext

    def start_request(self, server_conn: object,
                      request_conn: HTTPConnection) -> HTTPMessageDelegate:
        return Dispatch(self, server_conn, request_conn)

    def slow_request(self, server_conn: object,
                     request_conn: HTTPConnection) -> HTTPMessageDelegate:
        """The Application's own delegate (routing to a RequestHandler)."""
        return super().start_request(server_conn, request_conn)


def log_request(handler: RequestHandler) -> None:
    """The Application's log_function: `ops.access_log`."""
    req = handler.request
    ops.access_log(handler.get_status(), req.method or "", req.uri or "", req.request_time())


def _valid_name(value: str) -> bool:
    try:
        validate_name(value, "namespace")
    except ValidationError:
        return False
    return True


@stream_request_body
class BaseHandler(RequestHandler):
    """Shared plumbing: headers, body streaming and limits, JSON in/out, errors, metrics."""

    ROUTE = "unmatched"
    PREFLIGHT = True  # answer CORS preflights (OPTIONS) on this route
    # method -> permission (`actors.api.auth`); a method not listed needs AUTHENTICATED.
    AUTH: ClassVar[dict[str, str]] = {}
    ctx: ApiContext
    principal: Principal

    def initialize(self) -> None:
        self.ctx = cast(PrisnApplication, self.application).ctx
        self._chunks: list[bytes] = []
        self._size = 0
        self._refused = False
        self._request_id = ""
        self.principal = OPEN_PRINCIPAL if not self.ctx.auth.enabled else ANONYMOUS

    def set_default_headers(self) -> None:
        # Called from RequestHandler.__init__ before initialize(), and again by clear().
        ctx = cast(PrisnApplication, self.application).ctx
        self.set_header("X-Prisn-Node", ctx.node.node_id)
        self.set_header("X-Prisn-Leader", ctx.node.current_leader() or "")
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        for name, value in ctx.guard.cors_headers(self.request.headers):
            self.set_header(name, value)

    # ------------------------------------------------------------------ body
    def prepare(self) -> None:
        if self.ctx.limiter is not None:  # first: a refused request costs as little as possible
            self._refused = True
            self.ctx.limiter.check(self.request.remote_ip or "", self.ROUTE)  # 429
            self._refused = False
        rid = request_id(self.ctx, self.request.headers.get("X-Request-Id", ""))
        self._request_id = rid
        self.set_header("X-Request-Id", rid)
        self.request.connection.set_max_body_size(_STREAM_LIMIT)  # type: ignore[union-attr]
        headers = self.request.headers
        self._refused = True  # until the checks pass: ignore the body of a refused request
        self.ctx.guard.check_source(headers)  # 421 foreign Host (auth off), 403 foreign Origin
        self._refused = False
        if self.PREFLIGHT and self.request.method == "OPTIONS" and "Origin" in headers \
                and "Access-Control-Request-Method" in headers:
            self._refused = True
            self.preflight()
            return
        self.authenticate()  # 401/403 before the body is read
        length = self.request.headers.get("Content-Length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                n = -1
            if n < 0:
                self._refused = True
                raise BadRequest("Content-Length must be a non-negative integer")
            if n > self.body_limit():
                self._refused = True
                raise PayloadTooLarge(
                    f"request body of {n} bytes exceeds the limit of {self.body_limit()} bytes")
        self._refused = True
        self.check_body_type(headers)  # 415: a body must be application/json
        self._refused = False

    def body_limit(self) -> int:
        """The largest body this route accepts (413 past it): `max_body` unless overridden."""
        return self.ctx.max_body

    def check_body_type(self, headers: Any) -> None:
        """415 unless the body's Content-Type suits the route (JSON unless overridden)."""
        self.ctx.guard.check_content_type(headers)

    def preflight(self) -> None:
        """Answer a CORS preflight from an allowed origin (`check_source` passed): 204 with
        the route's methods and the request headers the API reads. No authentication:
        browsers send no credentials on a preflight."""
        methods = [m for m in self.allowed_methods() if m != "OPTIONS"]
        for name, value in self.ctx.guard.preflight_headers(methods):
            self.set_header(name, value)
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()

    def data_received(self, chunk: bytes) -> None:
        if self._refused:
            return
        self._size += len(chunk)
        if self._size > self.body_limit():
            self._refused = True
            self._chunks.clear()
            self.send_error(413, exc_info=(PayloadTooLarge, PayloadTooLarge(
                f"request body exceeds the limit of {self.body_limit()} bytes"), None))
            return
        self._chunks.append(chunk)

    def json_body(self) -> Any:
        """The parsed JSON body; BadRequest if empty or malformed."""
        return parse_json(b"".join(self._chunks))

    def optional_json_body(self) -> Any:
        return self.json_body() if b"".join(self._chunks).strip() else None

    # ------------------------------------------------------------------ answers
    def send_json(self, status: int | Outcome, body: Any) -> None:
        """Answer `body` as JSON with `status` (an outcome answers with its HTTP status)."""
        if isinstance(status, Outcome):
            status = http_status(status)
        self.set_status(status)
        if status == 204:
            self.clear_header("Content-Type")
            self.finish()
            return
        self.finish(render(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            message = error_message(exc)
        elif status_code == 405:
            allowed = self.allowed_methods()
            self.set_header("Allow", ", ".join(allowed))
            message = (f"method {self.request.method} is not allowed on {self.request.path}; "
                       f"allowed: {', '.join(allowed)}")
        elif isinstance(exc, HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code >= 500:
            message = "internal server error"
        else:
            message = error_string(status_code)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:  # 429 from the rate limiter
            self.set_header("Retry-After", str(retry_after))
        elif status_code == 503:
            self.set_header("Retry-After", "1")
        if isinstance(exc, Unauthorized | Forbidden):
            self.ctx.metrics.auth_failed(exc.auth_reason)
            if isinstance(exc, Unauthorized):
                self.ctx.auth_log.note(exc, self.request.remote_ip or "")
            if isinstance(exc, Unauthorized):
                self.set_header("WWW-Authenticate", exc.challenge)
        if self._request_id:  # send_error() cleared the headers set in prepare()
            self.set_header("X-Request-Id", self._request_id)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(error_json(status_code, message))

    def compute_etag(self) -> str | None:
        """No ETag: Tornado would hash every 200 GET body for it, and no client revalidates."""
        return None

    def allowed_methods(self) -> list[str]:
        return type(self).methods()

    @classmethod
    def methods(cls) -> list[str]:
        """The HTTP methods this handler implements (the rest are 405). The OpenAPI check
        (tests/http/test_openapi.py) compares them with docs/openapi.yaml."""
        return [m for m in _METHODS
                if getattr(cls, m.lower()) is not getattr(RequestHandler, m.lower())]

    def on_finish(self) -> None:
        self.ctx.metrics.observe_request(self.request.method or "", self.ROUTE,
                                         self.get_status(), self.request.request_time())

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, HTTPError):
            return  # expected answers; the access log (DEBUG) has them
        super().log_exception(typ, value, tb)

    # ------------------------------------------------------------------ auth
    def authenticate(self) -> None:
        """Resolve the caller and check this route's permission (called in `prepare`).

        401 without a valid credential, 403 for a role that may not use the route or a
        ``?namespace=`` outside the caller's namespaces. Sets `self.principal`."""
        method = self.request.method or ""
        permission = self.AUTH.get(method, AUTHENTICATED)
        auth = self.ctx.auth
        if not auth.required(permission):
            return
        self._refused = True  # until accepted: ignore body chunks of a refused request
        principal = auth.authenticate(self.request.headers.get("Authorization"),
                                      self.ctx.node.store.token)
        check_permission(principal, permission, f"{method} {self.ROUTE}")
        if permission in (READ, WRITE):
            ns = self.get_query_argument("namespace", None)
            if ns and _valid_name(ns):  # a malformed one is the handler's 400
                check_namespace(principal, ns, write=permission == WRITE)
        self.principal = principal
        self._refused = False

    def require_namespace(self, namespace: str, *, write: bool) -> None:
        """403 unless the caller may read (or change) deployments in `namespace`."""
        check_namespace(self.principal, namespace, write=write)

    # ------------------------------------------------------------------ shared request bits
    def namespace_arg(self) -> str | None:
        ns = self.get_query_argument("namespace", None)
        if not ns:
            return None
        try:
            return validate_name(ns, "namespace")
        except ValidationError as exc:
            raise BadRequest(exc.message) from None

    def int_arg(self, name: str, default: int, low: int, high: int | None) -> int:
        """The integer query argument `name` (`default` when absent or empty), within
        [low, high] (no upper bound when `high` is None); 400 naming the bounds otherwise."""
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise BadRequest(f"{name}: must be an integer {bound}")
        return value

    async def consistency(self) -> None:
        """Honour ``X-Prisn-Consistency`` (`ops.read_level`): a strong read waits for the node
        client's shared read barrier (`ops.strong_read`: 503 if unavailable)."""
        if ops.read_level(self.request.headers.get("X-Prisn-Consistency")):
            await ops.strong_read(self.ctx)
            if self.ctx.auth.enabled:
                # the credential was checked against local state older than the barrier:
                # check it again now that this node has applied everything committed before
                # the read (a token revoked before the request was sent is refused)
                self.authenticate()

    def idempotency_key(self) -> str | None:
        return self.request.headers.get("Idempotency-Key")

    async def propose(self, build: Callable[[], dict[str, Any]]) -> None:
        """Build a command (ValidationError -> 400), propose it, answer with its result."""
        result = await self.commit(build)
        if result is not None:
            self.send_json(*result)

    async def commit(self, build: Callable[[], dict[str, Any]]) -> Result | None:
        """Build a command (ValidationError -> 400), check that the caller may write its
        deployment namespace (403), propose it and return its (status, body); None if the
        request was already refused."""
        if self._refused:
            return None
        command = ops.build(build)
        if command.get("op") in WRITE_OPS and isinstance(command.get("ns"), str):
            self.require_namespace(command["ns"], write=True)
        return await ops.propose_command(self.ctx, command)
