"""`send_chunked`: write a large response body in chunks paced by the client's reading.

Used by the downloads whose body can be megabytes (`GET /api/v1/cluster/snapshot`,
`GET /api/v1/artifacts/{digest}`). Runs on the API IOLoop thread.

Invariants: the body is written in `CHUNK` pieces, each flushed before the next (a slow
reader holds at most about one chunk in Tornado's buffer); after every completed flush the
connection limiter's response clock restarts (`limits.response_progress`), so a client that
keeps reading is not cut by `response_timeout` however long the whole download takes, while
one that takes nothing still is; a flush that does not complete within `stall` seconds
closes the connection. A client that goes away or stalls is logged (INFO / WARNING, no
traceback) and the handler returns normally; nothing more is written to it.
"""

from __future__ import annotations

import asyncio
import logging

from tornado.iostream import StreamClosedError
from tornado.web import RequestHandler

from actors.api.limits import response_progress

log = logging.getLogger("prisn.api")

CHUNK = 1 << 20
STALL_SECONDS = 60.0  # a reader that takes no chunk for this long is cut off


async def send_chunked(handler: RequestHandler, parts: tuple[bytes | memoryview, ...], *,
                       what: str, stall: float = STALL_SECONDS) -> bool:
    """Write `parts` (in order, each split into `CHUNK` pieces) then finish the response.
    True when all of it was sent; False when the client went away or stalled for `stall`
    seconds (then the connection is closed). The caller sets the headers first, including an
    exact Content-Length. `what` names the download in the log ("artifact sha256:...")."""
    stream = getattr(handler.request.connection, "stream", None)
    try:
        for part in parts:
            view = memoryview(part)
            for off in range(0, len(view), CHUNK):
                handler.write(bytes(view[off:off + CHUNK]))
                await asyncio.wait_for(handler.flush(), stall)
                response_progress(stream)  # the client took the chunk: not a stalled reader
    except StreamClosedError:
        log.info("%s: the client went away", what)
        return False
    except TimeoutError:
        log.warning("%s: the client read nothing for %g s; closing the connection", what,
                    stall)
        if handler.request.connection is not None:
            handler.request.connection.close()  # type: ignore[attr-defined]
        return False
    handler.finish()
    return True
