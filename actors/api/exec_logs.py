"""Execution output over HTTP (issue 15): the body of ``GET /api/v1/executions/{id}/logs``.

Runs on the API IOLoop thread (helpers of `actors.api.executions.ExecutionLogsHandler`).

- A terminal execution whose record holds its output (the last 64 KiB of each stream its
  node proposed with the result, secrets already redacted; `prisn.fsm.executions`) is
  answered from the record, on any node, also when the node that ran it is gone:
  ``"source": "record"``.
- Otherwise the output is read on the node that runs (or ran) it, here or over the peer
  link: the last `LIVE_TAIL` bytes of each stream, with the values of the secrets its
  deployment injects (as this node's store holds them now) replaced by ``***``:
  ``"source": "node"``. A node that cannot open those secrets answers 503 rather than
  output it could not redact.
- ``follow=true``: a chunked answer of newline-delimited JSON objects (content type
  ``application/x-ndjson``): ``{"stream": "stdout"|"stderr", "data": TEXT}`` as output
  appears (each stream from the oldest byte its node keeps, polled every `FOLLOW_POLL`
  seconds), ``{}`` after `HEARTBEAT` seconds without a line (ignore it: it keeps the
  connection and the client's read timeout alive), then exactly one final ``{"status", "exit_code", "error", "node"}`` once the
  execution is terminal, or (``"status"`` not terminal then) when the follow outlives the
  execution's timeout plus `FOLLOW_GRACE`. A follow that starts when the execution is
  already terminal with a recorded output sends that output. It stops when the client
  goes away (its write fails). Redaction holds back, per stream, fewer bytes than the
  longest secret value until more output (or the end) comes, so a value split between two
  reads is still replaced.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import time
from typing import Any

from tornado.iostream import StreamClosedError

from actors.api.errors import ApiError, NotFound, Unavailable
from actors.api.limits import response_progress
from actors.api.logs import PEER_TIMEOUT
from prisn.fsm.secrets import SecretError, secret_env
from prisn.secretbox import SecretDecryptError, opener
from prisn.workloads.logfetch import MAX_LOG_REPLY, STREAMS
from prisn.workloads.output import Redactor, read_extra, redacted_tail, secret_values

LIVE_TAIL = MAX_LOG_REPLY // 2  # bytes of each stream answered from the node
FOLLOW_POLL = 0.25  # seconds between two reads while following
FOLLOW_GRACE = 60.0  # seconds a follow may outlive the execution's timeout
FOLLOW_CHUNK = 256 << 10  # bytes per read while following
FOLLOW_READS = 8  # reads per stream per poll at most (then the next poll goes on)
HEARTBEAT = 10.0  # seconds without a line before an empty object is sent


def runner_iid(e: Any) -> str:
    """The runner's id of the execution's current attempt (`actors.workloads.EXEC_PREFIX`)."""
    return f"x.{e.id}.{e.attempt}"


def live_secrets(h: Any, e: Any) -> tuple[bytes, ...]:
    """The redactable values of the secrets `e`'s deployment injects; Unavailable when this
    node cannot open them (its output is then not shown)."""
    store = h.ctx.node.store
    dep = store.get(e.namespace, e.name)
    if dep is None or dep.get("id") != e.deployment_id or not dep.get("secrets"):
        return ()
    try:
        env = secret_env(store, e.namespace, dep["secrets"], opener(h.ctx.secrets.box))
    except (SecretError, SecretDecryptError):
        raise Unavailable("this node cannot open the secrets of the execution's deployment, "
                          "so it cannot redact its output") from None
    return secret_values(env.values())


def _reader(h: Any) -> Any:
    reader = getattr(h.ctx.node, "read_logs", None)
    if reader is None:
        raise Unavailable("this node cannot read execution output")
    return reader


async def execution_logs(h: Any, e: Any) -> dict[str, Any]:
    """The non-follow answer (module doc)."""
    if e.terminal and e.has_output:
        out = e.output()
        return {**out, "node": e.node, "source": "record",
                "truncated": out["stdout_truncated"] or out["stderr_truncated"]}
    if e.node is None:
        raise NotFound(f"execution {e.id} has not been placed on a node yet")
    reader = _reader(h)
    secrets = live_secrets(h, e)
    extra = read_extra(secrets)
    body: dict[str, Any] = {"node": e.node, "source": "node"}
    for stream in STREAMS:
        reply = await reader(e.node, runner_iid(e), offset=None, tail=LIVE_TAIL + extra,
                             limit=LIVE_TAIL + extra, timeout=PEER_TIMEOUT, stream=stream)
        if reply.code != 200:
            raise ApiError(reply.reason or f"node {e.node} refused the log read",
                           status=reply.code)
        body[stream], body[f"{stream}_truncated"] = redacted_tail(
            reply.data, LIVE_TAIL, secrets, cut=reply.offset > 0 or reply.truncated)
    body["truncated"] = body["stdout_truncated"] or body["stderr_truncated"]
    return body


class _Follow:
    """One follow's state (module doc). The handler's task only."""

    def __init__(self, h: Any, e: Any) -> None:
        self.h = h
        self.reader = _reader(h)
        self.secrets = live_secrets(h, e)
        self.attempt = -1
        self.sent_any = False
        self.last_line = time.monotonic()
        self._reset(e.attempt)

    def _reset(self, attempt: int) -> None:
        self.attempt = attempt
        self.offsets: dict[str, int | None] = dict.fromkeys(STREAMS)
        self.redactors = {s: Redactor(self.secrets) for s in STREAMS}
        self.decoders = {s: codecs.getincrementaldecoder("utf-8")("replace") for s in STREAMS}

    async def emit(self, obj: dict[str, Any] | None) -> None:
        """Write one line (None: nothing) and flush; StreamClosedError if the client left."""
        h = self.h
        if h.request.connection is None or h.request.connection.stream.closed():
            raise StreamClosedError()
        if obj is None and time.monotonic() - self.last_line >= HEARTBEAT:
            obj = {}
        if obj is not None:
            h.write(json.dumps(obj, separators=(",", ":")) + "\n")
            self.last_line = time.monotonic()
        await h.flush()
        response_progress(h.request.connection.stream)

    async def text(self, stream: str, data: bytes, final: bool = False) -> None:
        out = self.redactors[stream].feed(data)
        if final:
            out += self.redactors[stream].flush()
        text = self.decoders[stream].decode(out, final)
        if text:
            self.sent_any = True
            await self.emit({"stream": stream, "data": text})

    async def pump(self, e: Any) -> None:
        """Read what is new on `e`'s node (a node that does not answer: next poll)."""
        if e.attempt != self.attempt:
            self._reset(e.attempt)
        for stream in STREAMS:
            for _ in range(FOLLOW_READS):
                try:
                    reply = await self.reader(e.node, runner_iid(e), offset=self.offsets[stream],
                                              tail=None, limit=FOLLOW_CHUNK,
                                              timeout=PEER_TIMEOUT, stream=stream)
                except ApiError:
                    return
                if reply.code != 200:
                    return
                self.offsets[stream] = reply.next_offset
                if reply.data:
                    await self.text(stream, reply.data)
                if len(reply.data) < FOLLOW_CHUNK:
                    break


async def follow_execution(h: Any, e: Any) -> None:
    """The follow answer (module doc)."""
    f = _Follow(h, e)
    store = h.ctx.node.store
    h.set_status(200)
    h.set_header("Content-Type", "application/x-ndjson")
    deadline = time.monotonic() + e.timeout + FOLLOW_GRACE
    cur = e
    try:
        await f.emit(None)  # the headers: the client knows the follow began
        while True:
            got = store.execution(e.id)
            cur = got if got is not None else cur
            done = got is None or cur.terminal or time.monotonic() > deadline
            recorded = done and cur.terminal and cur.has_output and not f.sent_any
            if cur.node is not None and not recorded:
                await f.pump(cur)
            if done:
                break
            await f.emit(None)  # a flush: progress, or a client that went away
            await asyncio.sleep(FOLLOW_POLL)
        if cur.terminal and cur.has_output and not f.sent_any:
            for stream in STREAMS:  # the node's files are gone or never read: the record
                text = getattr(cur, stream) or ""
                if text:
                    await f.emit({"stream": stream, "data": text})
        else:
            for stream in STREAMS:
                await f.text(stream, b"", final=True)
        await f.emit({"status": cur.status, "exit_code": cur.exit_code, "error": cur.error,
                      "node": cur.node})
        h.finish()
    except StreamClosedError:
        return
