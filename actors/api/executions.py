"""HTTP handlers for executions (issue 15): ``/api/v1/executions``, ``/api/v1/executions/{id}``
and ``/api/v1/executions/{id}/cancel``.

Runs on the API IOLoop thread. ``POST /api/v1/executions`` proposes an ``execution.create``
(a Raft write like a deployment write: forwarded by a follower, answered once committed and
applied here, ``Idempotency-Key`` honoured through the dedup table, so a retry with the same
key answers the same execution). With ``async: true`` it answers 202 with the Pending
execution at once; otherwise it waits on this node's applied state (polling the local store,
never proposing anything more) until the execution is terminal and answers 200 with it. The
wait is bounded by the execution's `timeout` plus `WAIT_GRACE` (time to be placed and
started); past it the answer is 202 with the execution as it stands. A client that goes away
cancels nothing: the execution lives in the log, not in the request.

Permissions: list and get need READ in the execution's namespace (an execution elsewhere is a
404: ids do not leak across namespaces); create and cancel need WRITE there.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from actors.api.auth import READ, WRITE
from actors.api.errors import BadRequest, NotFound
from actors.api.exec_logs import execution_logs, follow_execution
from actors.api.handler import BaseHandler
from actors.api.ops import DEFAULT_LIMIT, MAX_LIMIT
from prisn.fsm.commands import COMMAND_VERSION, check_key, format_ts, new_id
from prisn.fsm.executions import DEFAULT_HISTORY, DEFAULT_TIMEOUT, MAX_TIMEOUT, STATUSES
from prisn.fsm.validation import (
    DEFAULT_NAMESPACE,
    ValidationError,
    is_int,
    validate_args,
    validate_env,
    validate_name,
)
from prisn.outcomes import Outcome

WAIT_GRACE = 30.0  # seconds a synchronous run may wait beyond its timeout (placement, start)
POLL_SECONDS = 0.05  # how often a synchronous run looks at the local store
_FIELDS = frozenset({"deployment_id", "name", "namespace", "env", "args", "timeout", "async"})


def create_command(body: Any, *, namespace: str | None, key: str | None,
                   clock: Any = time.time, make_id: Any = new_id,
                   history: int = DEFAULT_HISTORY) -> tuple[dict[str, Any], bool]:
    """(the ``execution.create`` command, async?) for a request body; ValidationError (400)
    for a bad one. `history` (this node's --execution-history) travels in the command
    unless it is the default. The namespace is the query's, else the body's, else ``default``."""
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise ValidationError(unknown[0], "unknown field")
    if ("deployment_id" in body) == ("name" in body):
        raise ValidationError("name", "exactly one of name and deployment_id is required")
    ns = namespace
    if "namespace" in body:
        body_ns = validate_name(body["namespace"], "namespace")
        if ns is not None and body_ns != ns:
            raise ValidationError("namespace", "the body and the query name different ones")
        ns = body_ns
    ns = ns or DEFAULT_NAMESPACE
    run_async = body.get("async", False)
    if type(run_async) is not bool:
        raise ValidationError("async", "must be a boolean")
    timeout = body.get("timeout", DEFAULT_TIMEOUT)
    if not is_int(timeout) or not 1 <= timeout <= MAX_TIMEOUT:
        raise ValidationError("timeout", f"must be an integer 1..{MAX_TIMEOUT} (seconds)")
    cmd: dict[str, Any] = {"v": COMMAND_VERSION, "op": "execution.create",
                           "key": check_key(key) if key is not None else make_id(),
                           "ts": format_ts(clock()), "id": make_id(), "ns": ns}
    if "deployment_id" in body:
        dep_id = body["deployment_id"]
        if type(dep_id) is not str or not 0 < len(dep_id) <= 64 or "/" in dep_id:
            raise ValidationError("deployment_id", "must be a deployment id")
        cmd["deployment_id"] = dep_id
    else:
        cmd["name"] = validate_name(body["name"])
    if body.get("env"):
        cmd["env"] = validate_env(body["env"])
    if body.get("args"):
        cmd["args"] = validate_args(body["args"])
    if "timeout" in body:
        cmd["timeout"] = int(timeout)
    if history != DEFAULT_HISTORY:
        cmd["history"] = history
    return cmd, run_async


class _ExecutionBase(BaseHandler):
    def checked_key(self) -> str | None:
        """The Idempotency-Key header, checked before anything else (400 if malformed)."""
        key = self.idempotency_key()
        if key is not None:
            try:
                check_key(key)
            except ValidationError as exc:
                raise BadRequest(exc.message) from None
        return key

    def visible(self, exec_id: str) -> Any:
        """The execution record, or 404 (also for one outside the caller's namespaces)."""
        e = self.ctx.node.store.execution(exec_id)
        if e is None or not self.principal.sees(e.namespace):
            raise NotFound(f"execution {exec_id[:64]} not found")
        return e


class ExecutionsHandler(_ExecutionBase):
    ROUTE = "/api/v1/executions"
    AUTH = {"GET": READ, "POST": WRITE}

    async def get(self) -> None:
        await self.consistency()
        limit = self.int_arg("limit", DEFAULT_LIMIT, 0, MAX_LIMIT)
        offset = self.int_arg("offset", 0, 0, None)
        ns = self.namespace_arg()
        status = self.get_query_argument("status", None) or None
        if status is not None and status not in STATUSES:
            raise BadRequest(f"status: must be one of {', '.join(STATUSES)}")
        dep_id = self.get_query_argument("deployment_id", None) or None
        if ns is not None:
            self.require_namespace(ns, write=False)
        page = self.ctx.node.store.executions(
            deployment_id=dep_id, namespace=ns, status=status, limit=limit, offset=offset,
            namespaces=None if ns is not None else self.principal.namespaces)
        self.send_json(200, page)

    async def post(self) -> None:
        if self._refused:
            return
        ns = self.namespace_arg()
        key = self.checked_key()
        body = self.json_body()
        cf = self.ctx.commands
        run_async = [False]

        def build() -> dict[str, Any]:
            cmd, run_async[0] = create_command(
                body, namespace=ns, key=key,
                clock=getattr(cf, "_clock", time.time), make_id=getattr(cf, "_new_id", new_id),
                history=self.ctx.execution_history)
            self.require_namespace(cmd["ns"], write=True)
            return cmd

        result = await self.commit(build)
        if result is None:
            return
        status, out = result
        if status != Outcome.CREATED:
            self.send_json(status, out)
            return
        if run_async[0]:
            self.send_json(202, out)
            return
        deadline = time.monotonic() + int(body.get("timeout", DEFAULT_TIMEOUT)) + WAIT_GRACE
        exec_id = out["id"]
        while True:
            e = self.ctx.node.store.execution(exec_id)
            if e is not None and e.terminal:
                self.send_json(200, e.to_json())
                return
            if time.monotonic() >= deadline:
                self.send_json(202, out if e is None else e.to_json())
                return
            await asyncio.sleep(POLL_SECONDS)


class ExecutionHandler(_ExecutionBase):
    ROUTE = "/api/v1/executions/{id}"
    AUTH = {"GET": READ}

    async def get(self, exec_id: str) -> None:
        await self.consistency()
        self.send_json(200, self.visible(exec_id).to_json())


class ExecutionLogsHandler(_ExecutionBase):
    """``{"stdout", "stderr", "node", "truncated", "stdout_truncated", "stderr_truncated",
    "source"}`` of one execution (`execution_logs`); ``?follow=true`` streams it
    (`follow_execution`). 404 before a node was assigned; 503 when the output is only on a
    node that does not answer."""

    ROUTE = "/api/v1/executions/{id}/logs"
    AUTH = {"GET": READ}

    async def get(self, exec_id: str) -> None:
        await self.consistency()
        raw = (self.get_query_argument("follow", None) or "").lower()
        if raw not in ("", "true", "false", "1", "0"):
            raise BadRequest("follow: must be true or false")
        e = self.visible(exec_id)
        if raw in ("true", "1"):
            await follow_execution(self, e)
            return
        self.send_json(200, await execution_logs(self, e))


class ExecutionCancelHandler(_ExecutionBase):
    ROUTE = "/api/v1/executions/{id}/cancel"
    AUTH = {"POST": WRITE}

    async def post(self, exec_id: str) -> None:
        if self._refused:
            return
        key = self.checked_key()
        e = self.visible(exec_id)
        self.require_namespace(e.namespace, write=True)
        cf = self.ctx.commands
        clock = getattr(cf, "_clock", time.time)
        make_id = getattr(cf, "_new_id", new_id)
        await self.propose(lambda: {"v": COMMAND_VERSION, "op": "execution.cancel",
                                    "key": check_key(key) if key is not None else make_id(),
                                    "ts": format_ts(clock()), "id": e.id})


EXECUTION_ROUTES: list[tuple[str, type[BaseHandler]]] = [
    (r"/api/v1/executions/?", ExecutionsHandler),
    (r"/api/v1/executions/([^/]+)/cancel/?", ExecutionCancelHandler),
    (r"/api/v1/executions/([^/]+)/logs/?", ExecutionLogsHandler),
    (r"/api/v1/executions/([^/]+)/?", ExecutionHandler),
]
