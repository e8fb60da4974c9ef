"""`GET /api/v1/cluster/snapshot`: an online backup of this node's applied state.

Runs on the API IOLoop thread; the state is encoded in an executor thread. The node client
carries a ``snapshot_source`` attribute (set by `prisn.server`): a callable returning
(applied index, its term, membership, encoder) captured consistently by the state machine
(`StateMachineActor.capture`). The answer is a `prisn.backup` file: the snapshot format with
magic, format, header (index, term, membership, length) and SHA-256 trailer, also given as
``X-Prisn-Snapshot-Index``, ``X-Prisn-Snapshot-Term``, ``X-Prisn-Snapshot-Sha256`` headers
(the SHA-256 covers every byte before the trailer) and an exact ``Content-Length``.

Invariants: admin only when auth is on; at most one backup is encoded at a time per node
(another gets 503 with Retry-After); the response is written in 1 MiB chunks, each flushed
before the next (a slow reader holds at most about one chunk in Tornado's buffer).
What the file covers: the state this node has applied (on a follower possibly slightly
behind the leader; ``X-Prisn-Consistency: strong`` first waits for a read barrier, so that
it covers every write acknowledged before the request).
"""

from __future__ import annotations

import logging
from typing import Any

from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError

from actors.api.app import BaseHandler
from actors.api.auth import ADMIN
from actors.api.errors import Unavailable
from prisn.backup import backup_head

log = logging.getLogger("prisn.api")

CHUNK = 1 << 20


class SnapshotHandler(BaseHandler):
    ROUTE = "/api/v1/cluster/snapshot"
    AUTH = {"GET": ADMIN}

    async def get(self) -> None:
        source = getattr(self.ctx.node, "snapshot_source", None)
        if source is None:
            raise Unavailable("this node cannot take snapshots")
        app: Any = self.application
        if getattr(app, "snapshot_busy", False):
            raise Unavailable("a snapshot is already being taken on this node; retry shortly")
        await self.consistency()
        app.snapshot_busy = True
        try:
            index, term, membership, encode = source()
            data: bytes = await IOLoop.current().run_in_executor(None, encode)
            head, digest = await IOLoop.current().run_in_executor(
                None, backup_head, index, term, membership, data)
        finally:
            app.snapshot_busy = False
        size = len(head) + len(data) + len(digest)
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Length", str(size))
        self.set_header("Content-Disposition",
                        f'attachment; filename="prisn-{index}-{term}.snap"')
        self.set_header("X-Prisn-Snapshot-Index", str(index))
        self.set_header("X-Prisn-Snapshot-Term", str(term))
        self.set_header("X-Prisn-Snapshot-Sha256", digest.hex())
        log.info("online snapshot at index %d (term %d, %d bytes) sent to %s", index, term,
                 size, self.request.remote_ip, extra={"index": index, "term": term})
        view = memoryview(data)
        try:
            self.write(head)
            for off in range(0, len(view), CHUNK):
                self.write(bytes(view[off:off + CHUNK]))
                await self.flush()
            self.write(digest)
            await self.flush()
        except StreamClosedError:
            log.info("online snapshot at index %d: the client went away", index)
            return
        self.finish()


SNAPSHOT_ROUTES: list[tuple[str, type[BaseHandler]]] = [
    (r"/api/v1/cluster/snapshot", SnapshotHandler),
]
