"""Pure decision cores of the storage shells: no clock, no I/O, `now` is an input.

- `RetryPolicy`: when the logstore actor (actors/logstore.py) retries a failed disk
  (reopen + probe) after a disk fault: first `retry_min` after the failure, then doubling up
  to `retry_max` after each failed attempt; none once recovered or fatal.
- `SnapshotTimer`: when the state-machine actor (actors/statemachine.py) takes a local
  snapshot: `threshold` applied entries since the last durable snapshot AND at least
  `min_interval` since the last one was started (hashicorp/raft's SnapshotThreshold and
  SnapshotInterval), or a forced one at or past its index.

Each is owned by one thread (its actor's); the simulator drives the same classes with its own
integer clock. Invariants are stated per class.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RetryPolicy:
    """Backoff of the logstore's recovery attempts (one failure cycle at a time).

    Invariants: `due(now)` is False unless a failure is pending and `now >= retry_at`;
    every failed attempt doubles the delay, capped at `retry_max`; `failed()` restarts at
    `retry_min`; `recovered()` / `fatal()` stop the attempts until the next `failed()`.
    """

    retry_min: float
    retry_max: float
    pending: bool = False  # a failure awaits a successful attempt
    delay: float = 0.0  # the wait before the next attempt
    retry_at: float = 0.0  # the next attempt is not before this
    attempts: int = 0  # failed attempts in this cycle

    def failed(self, now: float) -> None:
        """A write failed at `now`: the first attempt is `retry_min` later."""
        self.pending = True
        self.attempts = 0
        self.delay = self.retry_min
        self.retry_at = now + self.retry_min

    def due(self, now: float) -> bool:
        """Is an attempt due at `now`?"""
        return self.pending and now >= self.retry_at

    def attempt_failed(self, now: float) -> float:
        """The attempt at `now` failed: back off; returns the time of the next attempt."""
        self.attempts += 1
        self.delay = min(self.delay * 2, self.retry_max)
        self.retry_at = now + self.delay
        return self.retry_at

    def recovered(self) -> None:
        """The attempt succeeded: no more attempts until the next failure."""
        self.pending = False

    def fatal(self) -> None:
        """The store cannot be trusted: never attempt again (until a new `failed`)."""
        self.pending = False


@dataclass
class SnapshotTimer:
    """When to take a local snapshot, given what was applied and `now`.

    Invariants: never while one is being written (`busy`); a due snapshot needs at least
    `threshold` (>= 1) entries applied past the last durable snapshot and `min_interval`
    elapsed since the last one was started (`started`); a forced snapshot (`force(index)`)
    is taken once applied reaches its index and is past the last snapshot, regardless of
    the interval, and then cleared.
    """

    threshold: int
    min_interval: float
    last_started: float
    force_at: int = 0  # 0: none

    def __post_init__(self) -> None:
        self.threshold = max(1, self.threshold)
        self.min_interval = max(0.0, self.min_interval)

    def force(self, index: int) -> None:
        """Ask for a snapshot once `index` is applied (0 clears it)."""
        self.force_at = index

    def decide(self, *, applied: int, snapshot_index: int, busy: bool, now: float) -> bool:
        """Take a snapshot now? True also records it as started at `now` (and clears a
        forced one it satisfies)."""
        if busy:
            return False
        due = (applied - snapshot_index >= self.threshold
               and now - self.last_started >= self.min_interval)
        forced = bool(self.force_at) and applied >= self.force_at and applied > snapshot_index
        if not (due or forced):
            return False
        self.last_started = now
        if forced:
            self.force_at = 0
        return True
