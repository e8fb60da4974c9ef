"""The cluster-wide rolling update: which replica slots may run a deployment's new spec.

Pure and deterministic: no clock, no I/O. Inputs are what the replicated instances table
says (each placed slot's last report: the generation it runs, its state, when its process
started and when the report was written, both Unix ms from the reporting node's clock and
carried in the log), so every node that applied the same entries decides the same.

The rule (level-triggered, re-evaluated on every change of the log): slot ``i`` may run
generation ``g`` once every placed slot ``j < i`` of the deployment reports ``Running`` at
``g`` for at least ``min_ready_ms`` (``at - started_at``, both from the one node that runs
slot ``j``, so clock offsets between nodes do not matter). Slot 0 starts the roll; a slot
that is not placed (no node for it) does not hold the others (it serves nothing). A new
generation that never stays up (a crash loop) holds the roll at its slot: the later slots
keep their old spec and keep serving.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

RUNNING = "Running"
ROLL_MIN_READY_MS = 3000  # how long a new instance runs before the next slot takes it


@dataclass(frozen=True, slots=True)
class SlotReport:
    """The last report of the instance of one placed slot (instances table row)."""

    generation: int
    state: str
    started_at: int | None  # Unix ms, the process start on the reporting node
    at: int | None  # Unix ms, when the report was written (its command's ts)


def settled(r: SlotReport | None, generation: int, min_ready_ms: int = ROLL_MIN_READY_MS
            ) -> bool:
    """True if `r` reports `generation` Running for at least `min_ready_ms`."""
    return (r is not None and r.generation == generation and r.state == RUNNING
            and r.started_at is not None and r.at is not None
            and r.at - r.started_at >= min_ready_ms)


def may_run(index: int, generation: int, slots: Mapping[int, SlotReport | None],
            min_ready_ms: int = ROLL_MIN_READY_MS) -> bool:
    """True if slot `index` may run `generation` (module doc: the rule)."""
    return all(settled(slots[j], generation, min_ready_ms) for j in slots if j < index)
