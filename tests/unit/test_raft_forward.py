"""Table-driven tests of the pure parts of forwarding (`prisn.raft.forward`): the leader's
window of recently seen forwards and what it answers to a duplicate."""

from __future__ import annotations

import pytest

from prisn.raft.forward import HELD, SEEN_FORWARDS, SeenForwards, confirmation


@pytest.mark.parametrize("mark,want", [
    (0, None),                                           # refused: nothing to confirm
    (HELD, ("held during a leadership transfer", 0)),
    (1, ("appended", 1)),
    (12345, ("appended", 12345)),
])
def test_confirmation(mark, want) -> None:
    assert confirmation(mark) == want


@pytest.mark.parametrize("ops,want", [
    # (op, key, mark) steps; want: the marks of keys a, b, c afterwards
    ([("add", "a", 0)], {"a": 0, "b": None, "c": None}),
    ([("add", "a", 0), ("mark", "a", 7)], {"a": 7, "b": None, "c": None}),
    ([("mark", "a", 7)], {"a": None, "b": None, "c": None}),     # unseen stays unseen
    ([("add", "a", 0), ("add", "b", 0), ("add", "c", 0)],        # limit 2: oldest forgotten
     {"a": None, "b": 0, "c": 0}),
    ([("add", "a", 0), ("mark", "a", HELD), ("add", "b", 0), ("add", "c", 0),
      ("mark", "a", 5)], {"a": None, "b": 0, "c": 0}),           # forgotten stays forgotten
    ([("add", "a", 0), ("mark", "a", HELD), ("mark", "a", 0)], {"a": 0, "b": None, "c": None}),
])
def test_seen_forwards(ops, want) -> None:
    seen = SeenForwards(limit=2)
    for op, key, mark in ops:
        if op == "add":
            seen.add((key, 1))
        else:
            seen.mark((key, 1), mark)
    assert {k: seen.mark_of((k, 1)) for k in "abc"} == want
    assert len(seen) <= 2


def test_seen_forwards_default_bound() -> None:
    seen = SeenForwards()
    for i in range(SEEN_FORWARDS + 3):
        seen.add(("o", i))
    assert len(seen) == SEEN_FORWARDS
    assert seen.mark_of(("o", 2)) is None and seen.mark_of(("o", 3)) == 0
