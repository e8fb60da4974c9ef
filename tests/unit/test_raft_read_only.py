"""Table-driven tests of the leader's ReadIndex queue (`prisn.raft.read_only.ReadOnly`)."""

from __future__ import annotations

import pytest

from prisn.raft.read_only import ReadOnly


@pytest.mark.parametrize("seqs,acked,answered,left", [
    ([], 5, [], []),
    ([1], 0, [], [1]),                 # no round acknowledged yet
    ([1], 1, [1], []),
    ([1, 1, 2], 1, [1, 1], [2]),       # in arrival order, up to the acked round
    ([1, 2, 3], 9, [1, 2, 3], []),
    ([2, 3], 1, [], [2, 3]),
])
def test_confirmed(seqs, acked, answered, left) -> None:
    ro = ReadOnly()
    for i, s in enumerate(seqs):
        ro.add(100 + i, s, "o", i)
    got = ro.confirmed(acked)
    assert [r.seq for r in got] == answered
    assert [r.index for r in got] == [100 + i for i in range(len(answered))]
    assert [r.seq for r in ro.queue] == left


@pytest.mark.parametrize("adds,want", [(0, False), (1, True), (3, True)])
def test_round_due_once(adds, want) -> None:
    ro = ReadOnly()
    for i in range(adds):
        ro.add(1, 1, "o", i)
    assert ro.take_round() is want
    assert ro.take_round() is False     # taken: not due again until the next read


@pytest.mark.parametrize("waiting,queued,want", [
    ([], [], []),
    ([("a", 1)], [], [("a", 1)]),
    ([], [("b", 2)], [("b", 2)]),
    ([("a", 1), ("a", 3)], [("b", 2)], [("a", 1), ("a", 3), ("b", 2)]),  # waiting first
])
def test_reset_answers_each_once(waiting, queued, want) -> None:
    ro = ReadOnly()
    ro.waiting.extend(waiting)
    for origin, rid in queued:
        ro.add(7, 1, origin, rid)
    assert ro.reset() == want
    assert (ro.waiting, list(ro.queue), ro.take_round()) == ([], [], False)
    assert ro.reset() == []


def test_take_waiting_empties() -> None:
    ro = ReadOnly()
    ro.waiting.extend([("a", 1), ("b", 2)])
    assert ro.take_waiting() == [("a", 1), ("b", 2)]
    assert ro.take_waiting() == []
