"""HTTP handlers for executions (issue 15): ``/api/v1/executions``, ``/api/v1/executions/{id}``
and ``/api/v1/executions/{id}/cancel``.

Runs on the API IOLoop thread. ``POST /api/v1/executions`` proposes an ``execution.create``
(a Raft write like a deployment write: forwarded by a follower, answered once committed and
applied here, ``Idempotency-Key`` honoured through the dedup table, so a retry with the same
key answers the same execution). With ``async: true`` it answers 202 with the Pending
execution at once; otherwise it waits on this node's applied state (polling the local store,
never proposing anything more) until the execution is terminal and answers 200 with it. The
wait is bounded by the execution's `timeout` plus `WAIT_GRACE` (time to be placed and
started); past it the answer is 202 with the execution as it stands. The wait is a
`limits.response_wait`, so the connection limiter's response deadline (about 20 s) does not
cut a run that takes longer; it applies to sending the answer. A client that goes away
cancels nothing: the execution lives in the log, not in the request.

Ad-hoc runs (no deployment): a body with ``source`` (the script's text) or ``artifact`` (an
uploaded artifact's digest) plus ``entry``/``runtime`` runs that code once. For ``source``
this node packs the text into a one-file artifact (`prisn.workloads.adhoc`) and proposes an
``artifact.put`` (dedup by digest; a touch when already stored) before the
``execution.create`` naming ``artifact``, ``entry`` and ``runtime``: the log entry of the
execution stays small and the bytes go through the artifact table's checks and bounds.

Permissions: list and get need READ in the execution's namespace (an execution elsewhere is a
404: ids do not leak across namespaces); create and cancel need WRITE there.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from actors.api.auth import READ, WRITE
from actors.api.errors import BadRequest, NotFound, PayloadTooLarge, Unavailable
from actors.api.exec_logs import execution_logs, follow_execution
from actors.api.handler import BaseHandler
from actors.api.limits import response_wait
from actors.api.ops import DEFAULT_LIMIT, MAX_LIMIT, barrier
from prisn.fsm.artifacts import ArtifactFactory
from prisn.fsm.commands import COMMAND_VERSION, check_key, format_ts, new_id
from prisn.fsm.executions import DEFAULT_HISTORY, DEFAULT_TIMEOUT, MAX_TIMEOUT, STATUSES
from prisn.fsm.validation import (
    DEFAULT_NAMESPACE,
    ValidationError,
    is_int,
    validate_args,
    validate_env,
    validate_name,
    validate_runtime,
)
from prisn.outcomes import Outcome
from prisn.workloads.adhoc import default_entry, default_name, infer_runtime, inline_artifact
from prisn.workloads.artifacts import (
    DEFAULT_MAX_ARTIFACT_BYTES,
    ArtifactError,
    check_digest,
    check_path,
)

WAIT_GRACE = 30.0  # seconds a synchronous run may wait beyond its timeout (placement, start)
POLL_SECONDS = 0.05  # how often a synchronous run looks at the local store
_FIELDS = frozenset({"deployment_id", "name", "namespace", "env", "args", "timeout", "async",
                     "source", "artifact", "entry", "runtime"})
_ADHOC_ONLY = ("entry", "runtime")
DEFAULT_MAX_SOURCE_BYTES = 1 << 20  # --max-spec-bytes' default


def create_command(body: Any, *, namespace: str | None, key: str | None,
                   clock: Any = time.time, make_id: Any = new_id,
                   history: int = DEFAULT_HISTORY) -> tuple[dict[str, Any], bool]:
    """(the ``execution.create`` command, async?) for a request body; ValidationError (400)
    for a bad one. `history` (this node's --execution-history) travels in the command
    unless it is the default. The namespace is the query's, else the body's, else ``default``.
    (`build_create` also gives an inline source's artifact.)"""
    cmd, run_async, _data = build_create(body, namespace=namespace, key=key, clock=clock,
                                         make_id=make_id, history=history)
    return cmd, run_async


def build_create(body: Any, *, namespace: str | None, key: str | None,
                 clock: Any = time.time, make_id: Any = new_id,
                 history: int = DEFAULT_HISTORY,
                 max_source_bytes: int = DEFAULT_MAX_SOURCE_BYTES,
                 max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
                 ) -> tuple[dict[str, Any], bool, bytes | None]:
    """`create_command`'s (command, async?) plus, for an inline ``source``, the archive the
    command's ``artifact`` names (to be put first; None otherwise). ValidationError (400)
    for a bad body; PayloadTooLarge (413) for a source over `max_source_bytes`
    (--max-spec-bytes) or an archive over `max_artifact_bytes` (--max-artifact-bytes)."""
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise ValidationError(unknown[0], "unknown field")
    adhoc = "source" in body or "artifact" in body
    if adhoc:
        if "source" in body and "artifact" in body:
            raise ValidationError("source", "give either source or artifact, not both")
        if "deployment_id" in body:
            raise ValidationError("deployment_id", "an ad-hoc run (source or artifact) "
                                  "names no deployment")
    elif "deployment_id" not in body and "name" not in body:
        raise ValidationError("body", "either deployment_id/name or source (or artifact) is "
                              "required: exactly one of them")
    elif "deployment_id" in body and "name" in body:
        raise ValidationError("name", "exactly one of name and deployment_id is required")
    else:
        extra = [f for f in _ADHOC_ONLY if f in body]
        if extra:
            raise ValidationError(extra[0], "only for an ad-hoc run (with source or artifact)")
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
    data = None
    if adhoc:
        data = _adhoc(body, cmd, max_source_bytes, max_artifact_bytes)
    elif "deployment_id" in body:
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
    return cmd, run_async, data


def _adhoc(body: dict[str, Any], cmd: dict[str, Any], max_source_bytes: int,
           max_artifact_bytes: int) -> bytes | None:
    """Fill `cmd`'s ``artifact``, ``entry``, ``runtime`` and ``name`` from an ad-hoc body;
    the inline source's archive (None for ``artifact``). The runtime is the body's, else
    the entry's extension's; without either it is a 400."""
    entry = body.get("entry")
    if entry is not None:
        try:
            entry = check_path(entry, "entry")
        except ArtifactError as exc:
            raise ValidationError("entry", f"must be a safe relative file path ({exc})"
                                  ) from None
    runtime = body.get("runtime")
    if runtime is not None:
        runtime = validate_runtime(runtime)
    data = None
    if "source" in body:
        source = body["source"]
        if type(source) is not str or not source:
            raise ValidationError("source", "must be the script's text (a non-empty string)")
        size = len(source.encode("utf-8", "surrogatepass"))
        if size > max_source_bytes:
            raise PayloadTooLarge(f"source of {size} bytes exceeds --max-spec-bytes "
                                  f"({max_source_bytes}); upload it as an artifact "
                                  "(prisn run FILE) and name it with artifact")
        if runtime is None and (entry is None or infer_runtime(entry) is None):
            raise ValidationError("runtime", "required with an inline source, unless entry "
                                  "is a file name whose extension tells it (.py, .js, .sh)")
        if entry is None:
            entry = default_entry(runtime)
        try:
            data, digest = inline_artifact(source, entry)
        except (UnicodeEncodeError, ArtifactError) as exc:
            raise ValidationError("source", f"cannot be packed: {exc}") from None
        if len(data) > max_artifact_bytes:
            raise PayloadTooLarge(f"the source's artifact of {len(data)} bytes exceeds "
                                  f"--max-artifact-bytes ({max_artifact_bytes})")
    else:
        try:
            digest = check_digest(body["artifact"], "artifact")
        except ArtifactError as exc:
            raise ValidationError("artifact", str(exc).removeprefix("artifact: ")) from None
        if entry is None:
            raise ValidationError("entry", "required with artifact: the file to run in it")
    runtime = runtime or infer_runtime(entry)
    if runtime is None:
        raise ValidationError("runtime", f"required: the extension of entry {entry[:80]!r} "
                              "does not tell it (.py, .js, .sh)")
    cmd.update(artifact=digest, entry=entry, runtime=runtime,
               name=validate_name(body["name"]) if "name" in body else default_name(entry))
    return data


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

    async def visible_for_write(self, exec_id: str) -> Any:
        """`visible` for a write that must look the record up before proposing (cancel):
        a local miss is looked up again after a read barrier, so a node that merely trails
        the one that acknowledged the execution never answers 404 for it. 503 when the
        barrier fails (no quorum: the write could not commit either)."""
        try:
            return self.visible(exec_id)
        except NotFound:
            pass
        try:
            await asyncio.shield(barrier(self.ctx))
        except (Unavailable, TimeoutError) as exc:
            reason = exc.message if isinstance(exc, Unavailable) else "read barrier timed out"
            raise Unavailable(f"cannot look execution {exec_id[:64]} up: {reason}; retry"
                              ) from None
        return self.visible(exec_id)


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
        clock, make_id = getattr(cf, "_clock", time.time), getattr(cf, "_new_id", new_id)
        try:
            cmd, run_async, data = build_create(
                body, namespace=ns, key=key, clock=clock, make_id=make_id,
                history=self.ctx.execution_history,
                max_source_bytes=self.ctx.quotas.max_spec_bytes,
                max_artifact_bytes=self.ctx.quotas.max_artifact_bytes)
        except ValidationError as exc:
            raise BadRequest(exc.message) from None
        self.require_namespace(cmd["ns"], write=True)
        if data is not None and not await self._put_artifact(cmd["artifact"], data,
                                                             ArtifactFactory(clock, make_id)):
            return
        result = await self.commit(lambda: cmd)
        if result is None:
            return
        status, out = result
        if status != Outcome.CREATED:
            self.send_json(status, out)
            return
        if run_async:
            self.send_json(202, out)
            return
        wait = int(body.get("timeout", DEFAULT_TIMEOUT)) + WAIT_GRACE
        deadline = time.monotonic() + wait
        exec_id = out["id"]
        conn = self.request.connection
        # waiting, not writing: the connection limiter's response clock starts at the answer
        with response_wait(getattr(conn, "stream", None), wait + POLL_SECONDS):
            while True:
                e = self.ctx.node.store.execution(exec_id)
                if e is not None and e.terminal:
                    status, answer = 200, e.to_json()
                    break
                if time.monotonic() >= deadline:
                    status, answer = 202, out if e is None else e.to_json()
                    break
                await asyncio.sleep(POLL_SECONDS)
        self.send_json(status, answer)


    async def _put_artifact(self, digest: str, data: bytes, af: ArtifactFactory) -> bool:
        """Make sure the inline source's artifact is stored (and its upload grace renewed):
        a touch when this node holds it (the full put if that answers 404), else the full
        put. False when it failed (the error was sent; nothing else is proposed)."""
        if self.ctx.node.store.artifact(digest) is not None:
            result = await self.commit(lambda: af.put(digest, None))
            if result is None:
                return False
            if result[0] in (200, 201):
                return True
            if result[0] != 404:
                self.send_json(*result)
                return False
        result = await self.commit(lambda: af.put(digest, data))
        if result is None:
            return False
        if result[0] not in (200, 201):
            self.send_json(*result)
            return False
        return True


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
        e = await self.visible_for_write(exec_id)
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
