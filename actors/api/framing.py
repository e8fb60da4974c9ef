"""Strict chunked framing for the HTTP API (issue 17): a bare-LF chunk-size line is a prompt 400.

Tornado reads a chunk-size line with ``stream.read_until(b"\\r\\n", max_bytes=64)``. A client
that ends its lines with a bare ``\\n`` (``5\\nhello\\n0\\n\\n``, a smuggling probe) never sends the
``\\r\\n`` that read waits for: the request hung until the slow-client sweep closed it (10 s),
holding a connection slot, and got no answer. `strict_chunk_lines` makes that read stop at the
first ``\\n`` instead and refuses a line not ended by ``\\r\\n`` with `HTTPInputError`, which
Tornado answers with its bare ``400 Bad Request`` and a close, as for any other malformed
framing.

Only reads whose delimiter is exactly ``\\r\\n`` change; on a server connection Tornado uses that
delimiter for chunk-size lines only (the header block is read with a regex). A well-formed
line costs nothing more: the future of the inner read is already done when the data is
buffered, and its result is passed on synchronously.

Thread: the API IOLoop thread (the stream's own).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from tornado.concurrent import Future, future_add_done_callback
from tornado.httputil import HTTPInputError
from tornado.iostream import IOStream

CRLF = b"\r\n"


def strict_chunk_lines(stream: IOStream) -> None:
    """Wrap `stream.read_until` (on this instance only) as described in the module doc."""
    inner_read_until = stream.read_until

    def read_until(delimiter: bytes, max_bytes: int | None = None) -> Awaitable[bytes]:
        if delimiter != CRLF:
            return inner_read_until(delimiter, max_bytes)
        inner = inner_read_until(b"\n", max_bytes)
        out: Future[bytes] = Future()

        def done(f: Any) -> None:
            if out.done():
                return
            exc = f.exception()
            if exc is not None:
                out.set_exception(exc)
                return
            line = f.result()
            if line.endswith(CRLF):
                out.set_result(line)
            else:
                out.set_exception(HTTPInputError(
                    "chunk-size line not terminated by CRLF (bare LF framing)"))

        future_add_done_callback(inner, done)
        return out

    stream.read_until = read_until  # type: ignore[method-assign]
