"""Table-driven tests of the pure storage-shell cores (prisn.storage_policy): the logstore's
disk-fault retry backoff and the state machine's snapshot timing. `now` is an input: no
clock, no sleeps."""

from __future__ import annotations

import pytest

from prisn.storage_policy import RetryPolicy, SnapshotTimer

# Each step: (event, now, expected). Events: "fail" (a write failed), "due" (expected: is an
# attempt due?), "again" (the attempt failed; expected: next attempt time), "ok" (recovered),
# "fatal". Times are binary-exact.
RETRY_CASES = [
    ("nothing pending", [("due", 0.0, False), ("due", 99.0, False)]),
    ("first attempt after retry_min", [("fail", 10.0, None), ("due", 10.0, False),
                                       ("due", 10.0625, False), ("due", 10.125, True)]),
    ("doubling to the cap", [("fail", 0.0, None), ("again", 0.125, 0.375),
                             ("due", 0.25, False), ("again", 0.375, 0.875),
                             ("again", 0.875, 1.875), ("again", 1.875, 2.875),
                             ("again", 2.875, 3.875)]),
    ("recovered: no more attempts", [("fail", 0.0, None), ("ok", 0.125, None),
                                     ("due", 50.0, False)]),
    ("fatal: no more attempts", [("fail", 0.0, None), ("fatal", 0.125, None),
                                 ("due", 50.0, False)]),
    ("a new failure restarts at retry_min", [("fail", 0.0, None), ("again", 0.125, 0.375),
                                             ("again", 0.375, 0.875), ("ok", 0.875, None),
                                             ("fail", 5.0, None), ("due", 5.0625, False),
                                             ("due", 5.125, True), ("again", 5.125, 5.375)]),
]


@pytest.mark.parametrize("steps", [c[1] for c in RETRY_CASES], ids=[c[0] for c in RETRY_CASES])
def test_retry_policy(steps: list) -> None:
    p = RetryPolicy(retry_min=0.125, retry_max=1.0)
    for event, now, expected in steps:
        if event == "fail":
            p.failed(now)
        elif event == "due":
            assert p.due(now) is expected, (event, now)
        elif event == "again":
            assert p.due(now)
            assert p.attempt_failed(now) == expected, (event, now)
        elif event == "ok":
            p.recovered()
        elif event == "fatal":
            p.fatal()


def test_retry_attempts_are_counted_per_cycle() -> None:
    p = RetryPolicy(retry_min=1.0, retry_max=4.0)
    p.failed(0.0)
    for now in (1.0, 3.0, 7.0):
        p.attempt_failed(now)
    assert p.attempts == 3 and p.delay == 4.0
    p.failed(10.0)
    assert p.attempts == 0 and p.delay == 1.0


# (name, threshold, min_interval, steps) with steps (applied, snapshot_index, busy, now,
# force (None: leave), expected decision). The timer starts at last_started = 0.
SNAP_CASES = [
    ("below threshold", 10, 0.0, [(9, 0, False, 100.0, None, False)]),
    ("at threshold", 10, 0.0, [(10, 0, False, 100.0, None, True)]),
    ("counted from the last durable snapshot", 10, 0.0,
     [(15, 10, False, 1.0, None, False), (20, 10, False, 2.0, None, True)]),
    ("never while busy", 10, 0.0, [(50, 0, True, 9.0, None, False),
                                   (50, 0, False, 9.0, None, True)]),
    ("min_interval holds back a due snapshot", 10, 5.0,
     [(10, 0, False, 4.0, None, False), (10, 0, False, 5.0, None, True),
      (30, 10, False, 9.0, None, False), (30, 10, False, 10.0, None, True)]),
    ("the interval runs from the last start", 10, 5.0,
     [(10, 0, False, 6.0, None, True), (20, 10, False, 10.0, None, False),
      (20, 10, False, 11.0, None, True)]),
    ("forced ignores threshold and interval", 100, 50.0,
     [(3, 0, False, 1.0, 5, False), (5, 0, False, 1.0, None, True),
      (6, 0, False, 1.0, None, False)]),
    ("forced needs something past the snapshot", 100, 0.0,
     [(5, 5, False, 1.0, 5, False), (6, 5, False, 1.0, None, True)]),
    ("forced waits while busy", 100, 0.0,
     [(9, 0, True, 1.0, 5, False), (9, 0, False, 1.0, None, True)]),
]


@pytest.mark.parametrize("threshold,interval,steps", [c[1:] for c in SNAP_CASES],
                         ids=[c[0] for c in SNAP_CASES])
def test_snapshot_timer(threshold: int, interval: float, steps: list) -> None:
    t = SnapshotTimer(threshold, interval, last_started=0.0)
    for applied, snap, busy, now, force, expected in steps:
        if force is not None:
            t.force(force)
        got = t.decide(applied=applied, snapshot_index=snap, busy=busy, now=now)
        assert got is expected, (applied, snap, busy, now)


def test_snapshot_timer_clamps_its_settings() -> None:
    t = SnapshotTimer(0, -3.0, last_started=0.0)
    assert (t.threshold, t.min_interval) == (1, 0.0)
    assert t.decide(applied=1, snapshot_index=0, busy=False, now=0.0)
