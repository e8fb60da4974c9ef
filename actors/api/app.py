"""The Tornado HTTP API: `make_app(node, ...)` and its handlers. HTTP mapping only.

Threads: everything here runs on the API IOLoop thread (Tornado is single-threaded); the
node is reached only through the `NodeClient` protocol. No locks: `ApiContext.inflight` is
touched on that thread only.

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
- No per-request logging at INFO (`_log_request`); metric label children are cached.
- Authentication (`actors.api.auth`) happens in `prepare`, before the body is read: each
  handler's `AUTH` maps a method to the permission it needs (a method it lacks needs
  `AUTHENTICATED`, then gets 405; unknown paths likewise, then 404). 401/403 are counted by
  reason; a write is also checked against the namespace of the built command before it is
  proposed. A refused request proposes nothing.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPConnection, HTTPMessageDelegate
from tornado.web import Application, HTTPError, RequestHandler, stream_request_body

from actors.api import openapi
from actors.api.auth import (
    ADMIN,
    ANONYMOUS,
    AUTHENTICATED,
    METRICS,
    OPEN,
    OPEN_PRINCIPAL,
    READ,
    WRITE,
    Authenticator,
    AuthFailureLog,
    Forbidden,
    Principal,
    Unauthorized,
    check_namespace,
    check_permission,
)
from actors.api.errors import (
    ApiError,
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    error_body,
)
from actors.api.fastpath import Dispatch
from actors.api.fastread import ReadBarriers
from actors.api.guard import RequestGuard
from actors.api.limits import RateLimiter
from actors.api.node import NodeClient, NodeStatus
from actors.api.outcomes import error_string, http_status
from actors.api.quotas import Quotas
from actors.metrics import NodeMetrics
from prisn.fsm.commands import OPS, CommandFactory
from prisn.fsm.results import Result
from prisn.fsm.tokens import TokenFactory
from prisn.fsm.validation import TYPES, ValidationError, check_text, validate_name
from prisn.outcomes import Outcome

log = logging.getLogger("prisn.api")

MiB = 1024 * 1024
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Tornado's own per-connection limit while a handler streams: our handlers enforce `max_body`
# themselves (with a proper 413), so Tornado must not cut in first with its bare 400.
_STREAM_LIMIT = 1 << 62
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_WEAK_READS = frozenset({"", "default", "stale", "eventual"})
NO_QUORUM = ("no quorum is available to commit the write ({reason}); a write that timed out may "
             "still commit: retry with the same Idempotency-Key to apply it at most once")


@dataclass
class ApiContext:
    """What every handler shares; created by `make_app`, used on the IOLoop thread only."""

    node: NodeClient
    metrics: NodeMetrics
    commands: CommandFactory
    write_timeout: float
    read_timeout: float
    max_body: int
    max_inflight: int
    inflight: int = 0
    limiter: RateLimiter | None = None  # per-address request rate (None: unlimited)
    request_ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    auth: Authenticator = field(default_factory=Authenticator)  # off unless an API key is set
    auth_log: AuthFailureLog = field(default_factory=AuthFailureLog)  # details of "invalid"
    tokens: TokenFactory = field(default_factory=TokenFactory)
    barriers: ReadBarriers = field(default_factory=ReadBarriers)  # shared strong reads
    quotas: Quotas = field(default_factory=Quotas)  # per-spec and per-namespace bounds
    # Content-Type, Origin and (auth off) Host checks; the default checks no Host
    guard: RequestGuard = field(default_factory=RequestGuard)
    openapi: bytes = b""  # GET /api/v1/openapi.json (`actors.api.openapi.document_bytes`)


class PrisnApplication(Application):
    """A Tornado Application that carries the `ApiContext`; a plain create takes the fast
    path (`actors.api.fastpath`), every other request Tornado's routing."""

    ctx: ApiContext

    def start_request(self, server_conn: object,
                      request_conn: HTTPConnection) -> HTTPMessageDelegate:
        return Dispatch(self, server_conn, request_conn)

    def slow_request(self, server_conn: object,
                     request_conn: HTTPConnection) -> HTTPMessageDelegate:
        """The Application's own delegate (routing to a RequestHandler)."""
        return super().start_request(server_conn, request_conn)


def _log_request(handler: RequestHandler) -> None:
    """Access log: DEBUG normally, WARNING for server errors other than 503."""
    status = handler.get_status()
    level = logging.WARNING if status >= 500 and status != 503 else logging.DEBUG
    if log.isEnabledFor(level):
        req = handler.request
        log.log(level, "%d %s %s %.1fms", status, req.method, req.uri,
                1000.0 * req.request_time())


def _valid_name(value: str) -> bool:
    try:
        validate_name(value, "namespace")
    except ValidationError:
        return False
    return True


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # \uD800-\uDFFF
# One decoder for every request: `json.loads` with a keyword builds a new JSONDecoder per call.
_JSON = json.JSONDecoder(parse_constant=_no_constants)


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
        rid = self.request.headers.get("X-Request-Id", "")
        if not (0 < len(rid) <= 128 and rid.isascii() and rid.isprintable()):
            rid = f"{self.ctx.node.node_id}-{next(self.ctx.request_ids)}"
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
            if n > self.ctx.max_body:
                self._refused = True
                raise PayloadTooLarge(
                    f"request body of {n} bytes exceeds the limit of {self.ctx.max_body} bytes")
        self._refused = True
        self.ctx.guard.check_content_type(headers)  # 415: a body must be application/json
        self._refused = False

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
        if self._size > self.ctx.max_body:
            self._refused = True
            self._chunks.clear()
            self.send_error(413, exc_info=(PayloadTooLarge, PayloadTooLarge(
                f"request body exceeds the limit of {self.ctx.max_body} bytes"), None))
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
        self.finish(json.dumps(body, separators=(",", ":"), allow_nan=False))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            message = exc.message or error_string(status_code)
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
        self.finish(json.dumps(error_body(status_code, message)))

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

    async def consistency(self) -> None:
        """Honour ``X-Prisn-Consistency: strong`` with a read barrier (503 if unavailable)."""
        level = self.request.headers.get("X-Prisn-Consistency", "").strip().lower()
        if level == "strong":
            try:
                await self.ctx.node.read_barrier(self.ctx.read_timeout)
            except Unavailable as exc:
                raise Unavailable(f"strong read unavailable: {exc.message}; retry, or read "
                                  "without X-Prisn-Consistency: strong (possibly stale)") from None
            except TimeoutError:
                raise Unavailable("strong read unavailable: read barrier timed out") from None
            if self.ctx.auth.enabled:
                # the credential was checked against local state older than the barrier:
                # check it again now that this node has applied everything committed before
                # the read (a token revoked before the request was sent is refused)
                self.authenticate()
        elif level not in _WEAK_READS:
            raise BadRequest("X-Prisn-Consistency must be 'strong' or 'default'")

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
        try:
            command = build()
        except ValidationError as exc:
            raise BadRequest(exc.message) from None
        if command.get("op") in OPS and isinstance(command.get("ns"), str):
            self.require_namespace(command["ns"], write=True)
        return await propose_command(self.ctx, command)


def parse_json(raw: bytes) -> Any:
    """A request body as JSON; BadRequest if empty, malformed, or if any string in it (key or
    value, at any depth) is not valid Unicode text (a lone surrogate escape such as
    ``"\\ud800"`` is valid JSON but cannot be stored: 400 naming the field). Any thread."""
    if not raw.strip():
        raise BadRequest("request body must be a JSON object")
    try:
        value = _JSON.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    # raw UTF-8 cannot carry a surrogate (the decode above refuses one): only an escape can,
    # so the walk runs only for bodies that hold one (a cheap scan; false positives are fine)
    if _SURROGATE_ESCAPE.search(raw) is not None:
        try:
            check_text(value)
        except ValidationError as exc:
            raise BadRequest(exc.message) from None
    return value


async def propose_command(ctx: ApiContext, command: dict[str, Any]) -> Result:
    """Propose a built command and return its (status, body) once committed and applied.

    503 at once when `max_inflight` writes wait already; a proposal that finds no quorum or
    times out is a 503 that says it may still commit. Used by the handlers and the fast
    path (`actors.api.fastpath`)."""
    if ctx.inflight >= ctx.max_inflight:
        raise Unavailable(f"too many writes in flight ({ctx.max_inflight}); retry shortly")
    ctx.quotas.check(ctx.node.store, command)  # 413 / 507 before anything is proposed
    ctx.inflight += 1
    try:
        return await ctx.node.propose(command, ctx.write_timeout)
    except Unavailable as exc:
        if exc.status != 503:  # e.g. 507 from a full disk: not a quorum problem
            raise
        raise Unavailable(NO_QUORUM.format(reason=exc.message or "unavailable")) from None
    except TimeoutError:
        raise Unavailable(NO_QUORUM.format(reason="timed out")) from None
    finally:
        ctx.inflight -= 1


class NotFoundHandler(BaseHandler):
    """Every unknown path: 404 in the error shape, whatever the method."""

    ROUTE = "unmatched"
    PREFLIGHT = False

    def prepare(self) -> None:
        super().prepare()
        raise NotFound(f"no route for {self.request.path}")


class DeploymentsHandler(BaseHandler):
    ROUTE = "/api/v1/deployments"
    AUTH = {"GET": READ, "POST": WRITE}

    async def get(self) -> None:
        await self.consistency()
        limit = self._int_arg("limit", DEFAULT_LIMIT, 0, MAX_LIMIT)
        offset = self._int_arg("offset", 0, 0, None)
        namespace = self.namespace_arg()
        typ = self.get_query_argument("type", None) or None
        if typ is not None and typ not in TYPES:
            raise BadRequest(f"type: must be one of {', '.join(TYPES)}")
        # without ?namespace= a namespace-bound caller sees only its own namespaces
        items, total = self.ctx.node.store.list(namespace=namespace, type=typ, limit=limit,
                                                offset=offset,
                                                namespaces=self.principal.namespaces)
        self.send_json(200, {"items": items, "count": len(items), "total": total,
                             "limit": limit, "offset": offset})

    async def post(self) -> None:
        if self._refused:
            return
        body = self.json_body()
        ns = self.namespace_arg()
        await self.propose(lambda: self.ctx.commands.create(
            body, namespace=ns, key=self.idempotency_key()))

    def _int_arg(self, name: str, default: int, low: int, high: int | None) -> int:
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


class DeploymentHandler(BaseHandler):
    ROUTE = "/api/v1/deployments/{name}"
    AUTH = {"GET": READ, "PUT": WRITE, "PATCH": WRITE, "DELETE": WRITE}

    async def get(self, name: str) -> None:
        await self.consistency()
        dep = self.ctx.node.store.get(self.namespace_arg(), name)
        if dep is not None and not self.principal.sees(dep["namespace"]):
            if dep["name"] == name:  # found by name: its namespace was named (or "default")
                self.require_namespace(dep["namespace"], write=False)
            dep = None  # found by id elsewhere: ids do not leak across namespaces
        if dep is None:
            raise NotFound(f"deployment {name} not found")
        self.send_json(200, dep)

    async def put(self, name: str) -> None:
        if self._refused:
            return
        body = self.json_body()
        ns = self.namespace_arg()
        await self.propose(lambda: self.ctx.commands.replace(
            name, body, namespace=ns, key=self.idempotency_key()))

    async def patch(self, name: str) -> None:
        if self._refused:
            return
        body = self.json_body()
        ns = self.namespace_arg()
        await self.propose(lambda: self.ctx.commands.patch(
            name, body, namespace=ns, key=self.idempotency_key()))

    async def delete(self, name: str) -> None:
        if self._refused:
            return
        ns = self.namespace_arg()
        await self.propose(lambda: self.ctx.commands.delete(
            name, namespace=ns, key=self.idempotency_key()))


class ScaleHandler(BaseHandler):
    ROUTE = "/api/v1/deployments/{name}/scale"
    AUTH = {"POST": WRITE}

    async def post(self, name: str) -> None:
        if self._refused:
            return
        body = self.json_body()
        ns = self.namespace_arg()
        await self.propose(lambda: self.ctx.commands.scale(
            name, body, namespace=ns, key=self.idempotency_key()))


class HealthHandler(BaseHandler):
    """Liveness: 200 whenever the process answers."""

    ROUTE = "/health"
    AUTH = {"GET": OPEN}

    def get(self) -> None:
        st = self.ctx.node.status()
        self.send_json(200, {"status": "healthy", "node_id": st.node_id, "state": st.state,
                             "uptime_seconds": round(st.uptime_seconds, 3)})


def saturated(ctx: ApiContext) -> str | None:
    """Why this node cannot take one more write right now (its in-flight bounds are full:
    every write would be a 503), else None. API thread."""
    if ctx.inflight >= ctx.max_inflight:
        return (f"{ctx.inflight} writes in flight, at the limit of {ctx.max_inflight}: new "
                "writes are refused until some finish")
    node = ctx.node
    waiting, cap = getattr(node, "inflight", 0), getattr(node, "max_inflight", None)
    if cap is not None and waiting >= cap:
        return (f"{waiting} requests waiting for raft, at the limit of {cap}: new writes and "
                "strong reads are refused until some finish")
    return None


class ReadyHandler(BaseHandler):
    """Readiness: 200 when the node can serve, else 503 (with the error shape): no leader,
    still catching up, or unable to take a write (its in-flight bounds are full)."""

    ROUTE = "/ready"
    AUTH = {"GET": OPEN}

    def get(self) -> None:
        st = self.ctx.node.status()
        full = saturated(self.ctx) if st.ready else None
        ready = st.ready and full is None
        body: dict[str, Any] = {"ready": ready, "node_id": st.node_id, "state": st.state,
                                "leader": st.leader_id, "applied_index": st.applied_index,
                                "commit_index": st.commit_index}
        if ready:
            self.send_json(200, body)
            return
        why = full or ("no known leader" if st.leader_id is None
                       else "still catching up with the log")
        self.set_header("Retry-After", "1")
        self.send_json(503, {**error_body(503, f"node not ready: {why}"), **body})


def _voters(st: NodeStatus) -> int:
    return sum(1 for n in st.nodes if n.is_voter)


class ClusterStatusHandler(BaseHandler):
    ROUTE = "/api/v1/cluster/status"
    AUTH = {"GET": AUTHENTICATED}

    def get(self) -> None:
        st = self.ctx.node.status()
        self.send_json(200, {
            "leader": st.leader_id,
            "nodes": [{"id": n.id, "address": n.address, "state": n.state} for n in st.nodes],
            "healthy": st.healthy, "term": st.term, "commit_index": st.commit_index,
            "applied_index": st.applied_index, "node_id": st.node_id,
            "cluster_id": st.cluster_id,
        })


class ClusterHealthHandler(BaseHandler):
    """200 when healthy (leader known, quorum in contact), else 503. `quorum` is the number
    of voters a commit needs; `voters` how many there are."""

    ROUTE = "/api/v1/cluster/health"
    AUTH = {"GET": AUTHENTICATED}

    def get(self) -> None:
        st = self.ctx.node.status()
        voters = _voters(st)
        body: dict[str, Any] = {
            "healthy": st.healthy, "leader": st.leader_id, "quorum": voters // 2 + 1,
            "voters": voters,
            "nodes": [{"id": n.id, "address": n.address, "state": n.state,
                       "last_contact_seconds": _finite(n.last_contact_seconds),
                       "lag_entries": n.lag_entries, "lag_seconds": _finite(n.lag_seconds)}
                      for n in st.nodes],
        }
        if st.healthy:
            self.send_json(200, body)
            return
        why = "no known leader" if st.leader_id is None else "no quorum in contact"
        self.set_header("Retry-After", "1")
        self.send_json(503, {**error_body(503, f"cluster unhealthy: {why}"), **body})


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 6)


class ClusterNodeHandler(BaseHandler):
    ROUTE = "/api/v1/cluster/nodes/{id}"
    AUTH = {"DELETE": ADMIN}

    async def delete(self, node_id: str) -> None:
        if self._refused:
            return
        try:
            await self.ctx.node.remove_node(node_id, self.ctx.write_timeout)
        except TimeoutError:
            raise Unavailable(f"removal of {node_id} not committed in time; it may still "
                              "complete") from None
        self.send_json(204, None)


class ElectionHandler(BaseHandler):
    """Leadership transfer: to ``{"target": id}`` if given, else to this node (campaign)."""

    ROUTE = "/api/v1/cluster/election"
    AUTH = {"POST": ADMIN}

    async def post(self) -> None:
        if self._refused:
            return
        body = self.optional_json_body()
        target = self.ctx.node.node_id
        if body is not None:
            if not isinstance(body, dict) or set(body) - {"target"}:
                raise BadRequest("body must be empty or {\"target\": \"<node id>\"}")
            if "target" in body:
                if not isinstance(body["target"], str) or not body["target"]:
                    raise BadRequest("target: must be a node id")
                target = body["target"]
        if target == self.ctx.node.node_id and self.ctx.node.status().state == "learner":
            raise Conflict(f"{target} is a learner and cannot become leader")
        try:
            await self.ctx.node.transfer(target)
        except TimeoutError:
            raise Unavailable("leadership transfer timed out") from None
        self.send_json(202, {"message": f"leadership transfer to {target} started",
                             "target": target})


class MetricsHandler(BaseHandler):
    ROUTE = "/metrics"
    AUTH = {"GET": METRICS}

    def get(self) -> None:
        payload, content_type = self.ctx.metrics.render(self.request.headers.get("Accept"))
        self.set_header("Content-Type", content_type)
        self.finish(payload)


class OpenApiHandler(BaseHandler):
    """This API's OpenAPI 3.1 document (docs/openapi.yaml as JSON, read once at start)."""

    ROUTE = openapi.ROUTE
    AUTH = {"GET": AUTHENTICATED}  # like /api/v1/cluster/status (docs/design-notes.md)

    def get(self) -> None:
        self.finish(self.ctx.openapi)


ROUTES: list[tuple[str, type[BaseHandler]]] = [
    (r"/api/v1/deployments/?", DeploymentsHandler),
    (r"/api/v1/deployments/([^/]+)/scale/?", ScaleHandler),
    (r"/api/v1/deployments/([^/]+)/?", DeploymentHandler),
    (r"/health", HealthHandler),
    (r"/ready", ReadyHandler),
    (r"/api/v1/cluster/status", ClusterStatusHandler),
    (r"/api/v1/cluster/health", ClusterHealthHandler),
    (r"/api/v1/cluster/nodes/([^/]+)", ClusterNodeHandler),
    (r"/api/v1/cluster/election", ElectionHandler),
    (r"/metrics", MetricsHandler),
    (r"/api/v1/openapi\.json", OpenApiHandler),
]


def make_app(node: NodeClient, *, write_timeout: float = 5.0, read_timeout: float = 5.0,
             max_body: int = 10 * MiB, max_inflight: int = 10000,
             metrics: NodeMetrics | None = None,
             commands: CommandFactory | None = None, auth: Authenticator | None = None,
             tokens: TokenFactory | None = None,
             guard: RequestGuard | None = None) -> PrisnApplication:
    """The API application for `node`. Without `metrics`, a `NodeMetrics` is made from
    `node.status` and `node.store.count` (reach it as ``app.ctx.metrics``). Without `auth`
    (or with an `Authenticator` that has no API key) the API is open. Without `guard`, bodies
    must be JSON and any Origin is refused, but no Host is checked (`ApiActor` passes the
    node's own `RequestGuard`)."""
    from actors.api.logs import LOG_ROUTES  # imports BaseHandler from here
    from actors.api.snapshot import SNAPSHOT_ROUTES  # imports BaseHandler from here
    from actors.api.tokens import TOKEN_ROUTES  # tokens imports BaseHandler from here

    if metrics is None:
        metrics = NodeMetrics(status=node.status, deployments=node.store.count)
    app = PrisnApplication(
        ROUTES + TOKEN_ROUTES + SNAPSHOT_ROUTES + LOG_ROUTES, default_handler_class=NotFoundHandler, log_function=_log_request,
        serve_traceback=False, compress_response=False,
    )
    app.ctx = ApiContext(
        node=node, metrics=metrics, commands=commands or CommandFactory(),
        write_timeout=write_timeout, read_timeout=read_timeout, max_body=max_body,
        max_inflight=max_inflight, auth=auth or Authenticator(),
        tokens=tokens or TokenFactory(), guard=guard or RequestGuard(),
        openapi=openapi.document_bytes(),
    )
    return app


def make_server(app: PrisnApplication, **kwargs: Any) -> HTTPServer:
    """An HTTPServer for `app` with `max_body_size` = the app's `max_body` (a backstop: the
    handlers stream and refuse oversize bodies with 413 themselves). Call `.listen()` or
    `.add_sockets()` on the API IOLoop thread."""
    kwargs.setdefault("max_body_size", app.ctx.max_body)
    kwargs.setdefault("idle_connection_timeout", 120.0)
    return HTTPServer(app, **kwargs)
