"""The cluster-wide roll rule (`prisn.workloads.roll`), table-driven."""

from __future__ import annotations

import pytest

from prisn.workloads.roll import SlotReport, may_run, settled

G_OLD, G_NEW = 1, 2


def run(gen: int, ran_ms: int, state: str = "Running") -> SlotReport:
    return SlotReport(generation=gen, state=state, started_at=1_000_000, at=1_000_000 + ran_ms)


CASES = [
    # (name, placed slots -> report, index, expected)
    ("slot 0 starts the roll", {0: run(G_OLD, 9000), 1: run(G_OLD, 9000)}, 0, True),
    ("slot 1 waits for slot 0", {0: run(G_OLD, 9000), 1: run(G_OLD, 9000)}, 1, False),
    ("slot 0 new but not yet ready long enough", {0: run(G_NEW, 2999), 1: None}, 1, False),
    ("slot 0 new and ready long enough", {0: run(G_NEW, 3000), 1: run(G_OLD, 9000)}, 1, True),
    ("slot 0 new but starting", {0: run(G_NEW, 5000, "Starting")}, 1, False),
    ("slot 0 crash-looping holds the roll",
     {0: run(G_NEW, 5000, "CrashLoopBackOff"), 1: run(G_OLD, 9000)}, 1, False),
    ("slot 0 placed, no report yet", {0: None, 1: run(G_OLD, 9000)}, 1, False),
    ("an unplaced slot does not hold the roll", {1: run(G_NEW, 3000), 2: None}, 2, True),
    ("slot 2 needs both 0 and 1", {0: run(G_NEW, 4000), 1: run(G_NEW, 100), 2: None}, 2, False),
    ("slot 2 after 0 and 1", {0: run(G_NEW, 4000), 1: run(G_NEW, 3000), 2: None}, 2, True),
    ("a later generation is not the one asked", {0: run(3, 9000)}, 1, False),
    ("higher slots do not matter", {0: run(G_NEW, 0), 1: None, 2: run(G_OLD, 1)}, 0, True),
]


@pytest.mark.parametrize(("name", "slots", "index", "expected"), CASES,
                         ids=[c[0] for c in CASES])
def test_may_run(name: str, slots: dict, index: int, expected: bool) -> None:
    assert may_run(index, G_NEW, slots, 3000) is expected


def test_settled_needs_both_times() -> None:
    assert not settled(SlotReport(G_NEW, "Running", None, 5000), G_NEW, 0)
    assert not settled(SlotReport(G_NEW, "Running", 5000, None), G_NEW, 0)
    assert not settled(None, G_NEW, 0)
    assert settled(SlotReport(G_NEW, "Running", 5000, 5000), G_NEW, 0)


def test_a_roll_of_three_slots_goes_one_at_a_time() -> None:
    """Replaying the rule: at each step exactly one more slot may take the new spec."""
    slots: dict[int, SlotReport | None] = {i: run(G_OLD, 9000) for i in range(3)}
    allowed = []
    for step in range(3):
        ok = [i for i in range(3) if may_run(i, G_NEW, slots, 3000)]
        allowed.append(ok)
        slots[step] = run(G_NEW, 3000)
    assert allowed == [[0], [0, 1], [0, 1, 2]]
