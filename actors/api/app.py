"""The Tornado HTTP API: `make_app(node, ...)`, its route table and the route handlers.

Threads: everything here runs on the API IOLoop thread (Tornado is single-threaded); the
node is reached only through the `NodeClient` protocol.

Each handler is a thin adapter: HTTP in (`actors.api.handler.BaseHandler`: headers, body,
auth, errors), the route's work through the shared operations (`actors.api.ops`: build,
propose, read with a consistency level, render), HTTP out. The raw fast paths
(`actors.api.fastpath`, `actors.api.fastread`) answer the hottest create and read through
the same operations, byte for byte. The invariants every answer keeps are in
`actors.api.handler`.

No import cycle: this module imports the handler base, the shared operations and the route
modules (`actors.api.tokens`, `actors.api.snapshot`); none of them imports it
(tests/unit/test_api_imports.py). Names other modules used to take from here
(`ApiContext`, `BaseHandler`, `PrisnApplication`, `parse_json`, `propose_command`) are
re-exported; new code imports them from where they live.
"""

from __future__ import annotations

import math
from typing import Any

from tornado.httpserver import HTTPServer

from actors.api import openapi, ops
from actors.api.artifacts import ARTIFACT_ROUTES
from actors.api.auth import (
    ADMIN,
    AUTHENTICATED,
    METRICS,
    OPEN,
    READ,
    WRITE,
    Authenticator,
)
from actors.api.context import ApiContext
from actors.api.errors import (
    BadRequest,
    Conflict,
    NotFound,
    Unavailable,
    error_body,
)
from actors.api.executions import EXECUTION_ROUTES
from actors.api.guard import RequestGuard
from actors.api.handler import BaseHandler, PrisnApplication
from actors.api.handler import log_request as _log_request  # the name make_app uses
from actors.api.logs import LOG_ROUTES
from actors.api.node import NodeClient, NodeStatus
from actors.api.ops import DEFAULT_LIMIT, MAX_LIMIT, NO_QUORUM, parse_json, propose_command
from actors.api.secrets import SECRET_ROUTES
from actors.api.snapshot import SNAPSHOT_ROUTES
from actors.api.tokens import TOKEN_ROUTES
from actors.metrics import NodeMetrics
from prisn.fsm.commands import CommandFactory
from prisn.fsm.executions import DEFAULT_HISTORY
from prisn.fsm.tokens import TokenFactory
from prisn.fsm.validation import TYPES

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "NO_QUORUM", "ROUTES", "ApiContext", "BaseHandler",
           "PrisnApplication", "make_app", "make_server", "parse_json", "propose_command",
           "saturated"]

MiB = 1024 * 1024


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
        limit = self.int_arg("limit", DEFAULT_LIMIT, 0, MAX_LIMIT)
        offset = self.int_arg("offset", 0, 0, None)
        namespace = self.namespace_arg()
        typ = self.get_query_argument("type", None) or None
        if typ is not None and typ not in TYPES:
            raise BadRequest(f"type: must be one of {', '.join(TYPES)}")
        # without ?namespace= a namespace-bound caller sees only its own namespaces
        items, total = self.ctx.node.store.list(namespace=namespace, type=typ, limit=limit,
                                                offset=offset,
                                                namespaces=self.principal.namespaces)
        items = [ops.deployment_view(self.ctx, d) for d in items]
        self.send_json(200, {"items": items, "count": len(items), "total": total,
                             "limit": limit, "offset": offset})

    async def post(self) -> None:
        if self._refused:
            return
        body = self.json_body()
        ns = self.namespace_arg()
        await self.propose(lambda: self.ctx.commands.create(
            body, namespace=ns, key=self.idempotency_key()))


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
            raise ops.deployment_not_found(name)
        self.send_json(200, ops.deployment_view(self.ctx, dep))

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
             guard: RequestGuard | None = None,
             execution_history: int = DEFAULT_HISTORY) -> PrisnApplication:
    """The API application for `node`. Without `metrics`, a `NodeMetrics` is made from
    `node.status` and `node.store.count` (reach it as ``app.ctx.metrics``). Without `auth`
    (or with an `Authenticator` that has no API key) the API is open. Without `guard`, bodies
    must be JSON and any Origin is refused, but no Host is checked (`ApiActor` passes the
    node's own `RequestGuard`)."""
    if metrics is None:
        metrics = NodeMetrics(status=node.status, deployments=node.store.count)
    app = PrisnApplication(
        ROUTES + TOKEN_ROUTES + SNAPSHOT_ROUTES + ARTIFACT_ROUTES + SECRET_ROUTES + LOG_ROUTES
        + EXECUTION_ROUTES,
        default_handler_class=NotFoundHandler, log_function=_log_request,
        serve_traceback=False, compress_response=False,
    )
    app.ctx = ApiContext(
        node=node, metrics=metrics, commands=commands or CommandFactory(),
        write_timeout=write_timeout, read_timeout=read_timeout, max_body=max_body,
        max_inflight=max_inflight, auth=auth or Authenticator(),
        tokens=tokens or TokenFactory(), guard=guard or RequestGuard(),
        openapi=openapi.document_bytes(), execution_history=execution_history,
    )
    return app


def make_server(app: PrisnApplication, **kwargs: Any) -> HTTPServer:
    """An HTTPServer for `app` with `max_body_size` = the app's `max_body` (a backstop: the
    handlers stream and refuse oversize bodies with 413 themselves). Call `.listen()` or
    `.add_sockets()` on the API IOLoop thread."""
    kwargs.setdefault("max_body_size", app.ctx.max_body)
    kwargs.setdefault("idle_connection_timeout", 120.0)
    return HTTPServer(app, **kwargs)
