"""`MemoryLogStorage`: the in-memory twin of `prisn.storage.LogStorage` (hashicorp/raft's
``inmem_store``), for the simulator and for tests of the log store's users.

Same semantics as the RocksDB store, checked by one table of cases run against both
(tests/unit/test_storage_contract.py):
- the log is contiguous, ``first_index() == compact index + 1``; `write` refuses a request
  that would leave a gap or touch compacted entries with ValueError, before changing anything;
- every mutation is atomic and durable when it returns: it is applied to a `MemoryDisk`
  (the "platter") in one step;
- after a failed mutation every later one raises `StorageBroken` until `reopen`, which
  accepts only what was durable before the failed batch or that plus the batch, else
  `StorageCorrupt`.

Crash semantics: the `MemoryDisk` is what survives a crash. `crash()` drops this handle and
returns a new one opened on the same disk: it holds exactly what was synced (every
successful mutation; a failed one landed entirely or not at all, as `MemoryDisk.land` says).

Disk faults (set on the `MemoryDisk`): ``full`` makes every mutation and `probe` fail like a
full disk (an ``OSError(ENOSPC)``, then `StorageBroken`) and `reopen` raise
`StorageOpenError`; ``land`` says whether a failing mutation still reached the disk (its
outcome is unknown to the writer). No threads, no locks: one owning thread at a time, like
`LogStorage`.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prisn.messages import StoreAppend
from prisn.raft.boot import BootState, Membership
from prisn.storage import (
    StorageBroken,
    StorageCorrupt,
    StorageOpenError,
    _check_entry,
)

_NO_SPACE = "IO error: No space left on device"


@dataclass
class MemoryDisk:
    """The durable image of one store: survives `MemoryLogStorage.crash`.

    ``entries`` maps index -> (term, kind, data); ``compact`` is (index, term) of the last
    entry removed (0, 0: none); ``hard`` is (term, vote, commit)."""

    hard: tuple[int, str, int] = (0, "", 0)
    compact: tuple[int, int] = (0, 0)
    entries: dict[int, tuple[int, int, bytes]] = field(default_factory=dict)
    membership: Membership | None = None  # the reserved snapshot key's membership
    full: bool = False  # fault: mutations fail, reopen fails
    land: bool = False  # fault: a failing mutation still reaches the disk
    writes: int = 0  # successful durable mutations (for tests)
    changes: int = 0  # mutations that reached the disk (successful or landed): a version

    def copy(self) -> MemoryDisk:
        """An independent image with the same contents (and no faults)."""
        return MemoryDisk(hard=self.hard, compact=self.compact, entries=dict(self.entries),
                          membership=self.membership)


class MemoryLogStorage:
    """A `LogStore` over a `MemoryDisk` (see module doc). One owning thread."""

    def __init__(self, disk: MemoryDisk | None = None) -> None:
        self.disk = disk if disk is not None else MemoryDisk()
        self.sync_mode = "memory"
        self._broken: str | None = None
        self._outcomes: list[tuple[int, int, int]] = []
        self._closed = False
        self._compact_index, self._compact_term = self.disk.compact
        self._last = max(self.disk.entries, default=self._compact_index)

    # ------------------------------------------------------------------ reading
    def first_index(self) -> int:
        """Index of the first stored entry (compact index + 1; equals last+1 when empty)."""
        return self._compact_index + 1

    def last_index(self) -> int:
        """Index of the last stored entry (the compact index when the log is empty)."""
        return self._last

    def load(self) -> BootState:
        """Everything durable, checked for contiguity (`StorageCorrupt` on a gap)."""
        d = self.disk
        entries: list[list[Any]] = []
        expected = self._compact_index + 1
        for index in sorted(d.entries):
            if index != expected:
                raise StorageCorrupt(f"log gap: expected entry {expected}, found {index}")
            term, kind, data = d.entries[index]
            entries.append([index, term, kind, data])
            expected += 1
        self._last = expected - 1
        term, vote, commit = d.hard
        return BootState(term=term, vote=vote, commit=commit, entries=entries,
                         snapshot_index=self._compact_index, snapshot_term=self._compact_term,
                         snapshot_membership=d.membership)

    @property
    def broken(self) -> str | None:
        """Why the store refuses mutations (None while it is usable)."""
        return self._broken

    # ------------------------------------------------------------------ writing
    def _check_usable(self) -> None:
        if self._broken is not None:
            raise StorageBroken(f"log store broken by an earlier failed write: {self._broken}")

    def _commit(self, mutate: Any, landed: tuple[int, int, int]) -> None:
        """Apply `mutate(disk)` atomically; on a disk fault the store is broken and the
        mutation landed or not (`MemoryDisk.land`), like `LogStorage._commit`."""
        d = self.disk
        if d.full:
            if d.land:
                mutate(d)
                d.changes += 1
            self._broken = f"OSError: {_NO_SPACE}"
            self._outcomes = [(self._compact_index, self._compact_term, self._last), landed]
            raise OSError(errno.ENOSPC, _NO_SPACE)
        mutate(d)
        d.changes += 1
        d.writes += 1

    def write(self, requests: Sequence[StoreAppend]) -> None:
        """Apply `requests` in order as one atomic durable batch (see `LogStorage.write`)."""
        self._check_usable()
        if not requests:
            return
        puts: dict[int, tuple[int, int, bytes]] = {}
        deletes: set[int] = set()
        last = self._last
        for req in requests:
            if req.truncate_from:
                if req.truncate_from <= self._compact_index:
                    raise ValueError(f"seq {req.seq}: truncate_from {req.truncate_from} is at "
                                     f"or below the compaction point {self._compact_index}")
                for index in range(req.truncate_from, last + 1):
                    deletes.add(index)
                    puts.pop(index, None)
                last = min(last, req.truncate_from - 1)
            for e in req.entries:
                index, term, kind, data = _check_entry(e)
                if not self._compact_index < index <= last + 1:
                    raise ValueError(f"seq {req.seq}: entry {index} would leave a gap or touch "
                                     f"compacted entries (log is {self._compact_index + 1}.."
                                     f"{last})")
                puts[index] = (term, kind, data)
                deletes.discard(index)
                last = max(last, index)
        final = requests[-1]
        hard = (final.term, final.vote, final.commit)

        def mutate(d: MemoryDisk) -> None:
            for index in deletes:
                d.entries.pop(index, None)
            d.entries.update(puts)
            d.hard = hard

        self._commit(mutate, (self._compact_index, self._compact_term, last))
        self._last = last

    def compact_prefix(self, upto_index: int) -> None:
        """Delete entries <= `upto_index` (see `LogStorage.compact_prefix`)."""
        self._check_usable()
        if upto_index <= self._compact_index:
            return
        if upto_index > self._last:
            raise ValueError(f"cannot compact to {upto_index}: last index is {self._last}")
        got = self.disk.entries.get(upto_index)
        if got is None:
            raise StorageCorrupt(f"entry {upto_index} missing inside the log")
        term = got[0]
        lo = self._compact_index

        def mutate(d: MemoryDisk) -> None:
            for index in range(lo + 1, upto_index + 1):
                d.entries.pop(index, None)
            d.compact = (upto_index, term)

        self._commit(mutate, (upto_index, term, self._last))
        self._compact_index, self._compact_term = upto_index, term

    def reset_to(self, index: int, term: int) -> bool:
        """An installed snapshot becomes the start of the log (see `LogStorage.reset_to`).
        Returns True when the tail was kept."""
        self._check_usable()
        if index < 1:
            raise ValueError(f"cannot reset the log to {index}")
        if index <= self._compact_index:
            return True
        if self._compact_index < index <= self._last:
            got = self.disk.entries.get(index)
            if got is not None and got[0] == term:
                self.compact_prefix(index)
                return True

        def mutate(d: MemoryDisk) -> None:
            d.entries.clear()
            d.compact = (index, term)

        self._commit(mutate, (index, term, index))
        self._compact_index, self._compact_term = index, term
        self._last = index
        return False

    def probe(self) -> None:
        """A durable write that changes nothing: fails (and breaks the store) on a full disk."""
        self._check_usable()
        self._commit(lambda d: None, (self._compact_index, self._compact_term, self._last))

    def reopen(self) -> None:
        """Drop the handle's view and read the disk again; accept it only if it is what this
        handle made durable, or that plus the failed batch (see `LogStorage.reopen`)."""
        outcomes = self._outcomes or [(self._compact_index, self._compact_term, self._last)]
        if self._broken is None:
            self._broken = "reopening"
        self._closed = True
        if self.disk.full:
            raise StorageOpenError("cannot reopen log store: " + _NO_SPACE)
        self._closed = False
        self._compact_index, self._compact_term = self.disk.compact
        self.load()
        found = (self._compact_index, self._compact_term, self._last)
        if found not in outcomes:
            self._closed = True
            raise StorageCorrupt(
                f"log store after reopening holds compaction point {found[0]} (term "
                f"{found[1]}) and last index {found[2]}; expected one of {outcomes}")
        self._broken = None
        self._outcomes = []

    def crash(self) -> MemoryLogStorage:
        """The process dies: this handle is gone; a new one opened on the same disk holds
        exactly what was made durable."""
        self._closed = True
        return MemoryLogStorage(self.disk)

    def close(self) -> None:
        """Close the handle (idempotent)."""
        self._closed = True
