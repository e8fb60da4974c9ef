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


def test_wait_puts_the_clock_ahead_then_restarts_it_on_leaving() -> None:
    """`response_wait`: inside, the response clock stands `seconds` ahead (never behind
    where it was); on leaving (also by an exception) it restarts from then."""
    now = [100.0]
    stream = _Stream()
    conn = limits._Conn(stream, limits.BUSY, 90.0)  # type: ignore[arg-type]
    limits._TRACKED[stream] = (conn, lambda: now[0])  # type: ignore[index]
    with limits.response_wait(stream, 50.0):  # type: ignore[arg-type]
        assert conn.since == 150.0
        now[0] = 130.0
    assert conn.since == 130.0
    conn.since = 500.0
    try:
        with limits.response_wait(stream, 10.0):  # type: ignore[arg-type]
            assert conn.since == 500.0  # already further ahead: kept
            now[0] = 140.0
            raise KeyError("x")
    except KeyError:
        pass
    assert conn.since == 140.0
    with limits.response_wait(None, 10.0):  # untracked: ignored
        pass
