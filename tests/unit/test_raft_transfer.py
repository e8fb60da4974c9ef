"""Table-driven tests of a leadership transfer's state (`prisn.raft.transfer.Transfer`)."""

from __future__ import annotations

import pytest

from prisn.raft.transfer import Transfer


@pytest.mark.parametrize("ticks,limit,expired", [(1, 3, False), (2, 3, False), (3, 3, True),
                                                 (1, 1, True)])
def test_tick_expires_after_limit(ticks, limit, expired) -> None:
    t = Transfer()
    t.start("b")
    results = [t.tick(limit) for _ in range(ticks)]
    assert results[-1] is expired and not any(results[:-1])


@pytest.mark.parametrize("steps,want", [
    # (match, last_index) asked in turn -> answers; TimeoutNow at most once per transfer
    ([(4, 5)], [False]),
    ([(5, 5)], [True]),
    ([(5, 5), (5, 5)], [True, False]),
    ([(3, 5), (5, 5), (6, 6)], [False, True, False]),
])
def test_timeout_now_once(steps, want) -> None:
    t = Transfer()
    t.start("b")
    assert [t.timeout_now_due(m, last) for m, last in steps] == want


def test_timeout_now_restarts_the_clock_and_a_new_transfer_rearms() -> None:
    t = Transfer()
    t.start("b")
    t.tick(10)
    t.tick(10)
    assert t.timeout_now_due(5, 5) and t.elapsed == 0
    t.start("c")
    assert t.timeout_now_due(5, 5)


@pytest.mark.parametrize("running,leaders,want", [
    ("b", ["b"], [("b", True)]),              # the target took over: done
    ("b", ["c"], [("b", False)]),             # someone else leads: aborted
    ("b", ["", "b"], [None, ("b", True)]),    # no leader yet: keep watching
    ("b", ["b", "b"], [("b", True), None]),   # reported once
    ("", ["b"], [None]),                      # no transfer ran: nothing to report
])
def test_watch_after_stepping_down(running, leaders, want) -> None:
    t = Transfer()
    if running:
        t.start(running)
    t.stepped_down()
    assert [t.new_leader(lid) for lid in leaders] == want


@pytest.mark.parametrize("running,want", [("b", "b"), ("", "")])
def test_stop(running, want) -> None:
    t = Transfer()
    if running:
        t.start(running)
        t.timeout_now_due(1, 1)
    assert t.stop() == want
    assert (t.target, t.timeout_now_sent) == ("", False)
