"""`GET /api/v1/cluster/snapshot`: an online backup of this node's applied state.

Runs on the API IOLoop thread; the state is encoded in an executor thread. The node client
carries a ``snapshot_source`` attribute (set by `prisn.server`): a callable returning
(applied index, its term, membership, encoder) captured consistently by the state machine
(`StateMachineActor.capture`). The answer is a `prisn.backup` file: the snapshot format with
magic, format, header (index, term, membership, length) and SHA-256 trailer, also given as
``X-Prisn-Snapshot-Index``, ``X-Prisn-Snapshot-Term``, ``X-Prisn-Snapshot-Sha256`` headers
(the SHA-256 covers every byte before the trailer) and an exact ``Content-Length``.

Invariants: admin only when auth is on; at most one backup is in flight per node
(another gets 503 with Retry-After) and held until it is sent; the response is written in
1 MiB chunks by `actors.api.download.send_chunked`, each flushed before the next (a slow
reader holds at most about one chunk in Tornado's buffer), and a reader that takes no chunk
for `STALL_SECONDS` is cut off, so a stalled client cannot hold the slot forever. The
connection limiter's response deadline (`response_timeout`, about 20 s) counts from the end
of the capture (a `response_wait` of at most `PREPARE_SECONDS`) and restarts after every
chunk the client took (`response_progress`): a large backup to a reading client is not cut.
What the file covers: the state this node has applied (on a follower possibly slightly
behind the leader; ``X-Prisn-Consistency: strong`` first waits for a read barrier, so that
it covers every write acknowledged before the request).
"""

from __future__ import annotations

import logging
from typing import Any

from tornado.ioloop import IOLoop

from actors.api.auth import ADMIN
from actors.api.download import STALL_SECONDS, send_chunked
from actors.api.errors import Unavailable
from actors.api.handler import BaseHandler
from actors.api.limits import response_wait
from prisn.backup import backup_head

log = logging.getLogger("prisn.api")

PREPARE_SECONDS = 600  # capture + encode may take this long before the limiter cuts


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
        # Claimed before the first await (check and set run without a yield between) and held
        # until the answer is sent: one encoded state in memory per node at a time.
        app.snapshot_busy = True
        try:
            await self._send(source)
        finally:
            app.snapshot_busy = False

    async def _send(self, source: Any) -> None:
        await self.consistency()
        loop = IOLoop.current()
        stream = getattr(self.request.connection, "stream", None)
        # the capture takes the state machine's lock (held while it applies a batch) and
        # copies every row reference: not on the IOLoop thread. A large state takes longer
        # than the limiter's response deadline: this node is working, the client waits.
        with response_wait(stream, PREPARE_SECONDS):
            index, term, membership, encode = await loop.run_in_executor(None, source)
            data: bytes = await loop.run_in_executor(None, encode)
            head, digest = await loop.run_in_executor(
                None, backup_head, index, term, membership, data)
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
        await send_chunked(self, (head, data, digest), what=f"online snapshot at index {index}",
                           stall=STALL_SECONDS)


SNAPSHOT_ROUTES: list[tuple[str, type[BaseHandler]]] = [
    (r"/api/v1/cluster/snapshot", SnapshotHandler),
]
