"""HTTP handler for instance output: ``GET /api/v1/deployments/{name}/logs``.

Runs on the API IOLoop thread. The instance's node comes from this node's copy of the
placements table (`find_instance`: a replica index, a slot id or the runner's instance id
as status lists it; default the lowest index); its output is read here (the runner's files, `actors.runner.read_log`, in
an executor) when the instance runs here, else asked of that node over the peer link
(`LogsRequest` / `LogsReply`, through the raft shells; `RaftNodeClient.read_logs`).

Invariants:
- Auth like other deployment reads (READ, and the deployment's namespace).
- An answer carries at most `MAX_LOG_REPLY` (1 MiB) of output; `data` is text, with invalid
  UTF-8 replaced by U+FFFD; `offset`/`next_offset` count bytes of the stream (follow by
  asking again from `next_offset`).
- A node that does not answer within `PEER_TIMEOUT` is a 503 naming it; nothing is retried.
- ``stream=stdout|stderr`` picks the stream (default ``stdout``; each has its own offsets).
  Before the runner kept the streams apart, stderr was mixed into the one stream this
  route served; now it is asked for with ``stream=stderr``.
- ``follow=true`` waits (up to `FOLLOW_WAIT` seconds, re-reading every `FOLLOW_POLL`) for
  output past `offset` before answering, possibly with none: a long poll, still JSON.
"""

from __future__ import annotations

import asyncio
import time

from actors.api.auth import READ
from actors.api.errors import ApiError, BadRequest, NotFound, Unavailable
from actors.api.handler import BaseHandler
from prisn.workloads.logfetch import (
    MAX_LOG_REPLY,
    STREAMS,
    chunk_json,
    find_instance,
    runner_id,
)

PEER_TIMEOUT = 5.0  # seconds a node has to answer a log request
FOLLOW_WAIT = 5.0  # follow=true: longest wait for new output
FOLLOW_POLL = 0.25  # follow=true: how often the output is read again while waiting
MAX_OFFSET = (1 << 63) - 1


class LogsHandler(BaseHandler):
    ROUTE = "/api/v1/deployments/{name}/logs"
    AUTH = {"GET": READ}

    async def get(self, name: str) -> None:
        await self.consistency()
        offset = self._int("offset")
        tail = self._int("tail")
        limit = self._int("limit") or MAX_LOG_REPLY
        if limit > MAX_LOG_REPLY:
            raise BadRequest(f"limit: must be an integer between 1 and {MAX_LOG_REPLY}")
        follow = self._bool("follow")
        stream = self.get_query_argument("stream", None) or "stdout"
        if stream not in STREAMS:
            raise BadRequest("stream: must be stdout or stderr")
        store = self.ctx.node.store
        dep = store.get(self.namespace_arg(), name)
        if dep is not None and dep["name"] != name:
            dep = None  # by name only: an instance id names the deployment by name
        if dep is None:
            raise NotFound(f"deployment {name} not found")
        self.require_namespace(dep["namespace"], write=False)
        placed = store.placements(dep["namespace"], name)
        wanted = self.get_query_argument("instance", None) or None
        where = find_instance(placed, wanted)
        if where is None:
            if wanted is None:
                raise NotFound(f"deployment {dep['namespace']}/{name} has no instance "
                               "placed on a node")
            raise NotFound(f"instance {wanted[:200]} of deployment {dep['namespace']}/{name} "
                           "is not placed on any node")
        node, instance = where.node, runner_id(where)
        reader = getattr(self.ctx.node, "read_logs", None)
        if reader is None:
            raise Unavailable("this node cannot read instance output")
        deadline = time.monotonic() + FOLLOW_WAIT
        while True:
            reply = await reader(node, instance, offset=offset, tail=tail, limit=limit,
                                 timeout=PEER_TIMEOUT, stream=stream)
            if reply.code != 200:
                raise ApiError(reply.reason or f"node {node} refused the log read",
                               status=reply.code)
            if (not follow or reply.data or offset is None
                    or time.monotonic() + FOLLOW_POLL > deadline):
                break
            await asyncio.sleep(FOLLOW_POLL)  # long poll: read again shortly
        self.send_json(200, chunk_json(instance, node, reply.offset, reply.data,
                                       reply.truncated, stream))

    def _int(self, name: str) -> int | None:
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return None
        if not raw.isdigit() or int(raw) > MAX_OFFSET or (name == "limit" and int(raw) < 1):
            raise BadRequest(f"{name}: must be a non-negative integer"
                             + (" (at least 1)" if name == "limit" else ""))
        return int(raw)

    def _bool(self, name: str) -> bool:
        raw = (self.get_query_argument(name, None) or "").lower()
        if raw in ("", "false", "0"):
            return False
        if raw in ("true", "1"):
            return True
        raise BadRequest(f"{name}: must be true or false")


LOG_ROUTES = [(r"/api/v1/deployments/([^/]+)/logs/?", LogsHandler)]
