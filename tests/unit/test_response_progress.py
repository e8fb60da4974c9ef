"""`actors.api.limits.response_progress`: a streamed response that made progress restarts
its connection's response clock (so a long follow to a reading client is not cut by
`response_timeout`); other phases and untracked streams are left alone."""

from __future__ import annotations

from actors.api import limits


class _Stream:
    """Stands in for an IOStream (only its identity is used)."""


def test_progress_restarts_the_clock_of_a_busy_response_only() -> None:
    now = [100.0]
    stream = _Stream()
    conn = limits._Conn(stream, limits.BUSY, 10.0)  # type: ignore[arg-type]
    limits._TRACKED[stream] = (conn, lambda: now[0])  # type: ignore[index]
    limits.response_progress(stream)  # type: ignore[arg-type]
    assert conn.since == 100.0
    conn.phase, now[0] = limits.IDLE, 200.0
    limits.response_progress(stream)  # type: ignore[arg-type]
    assert conn.since == 100.0  # not a response in progress: unchanged
    limits.response_progress(None)
    limits.response_progress(_Stream())  # type: ignore[arg-type]  # untracked: ignored
