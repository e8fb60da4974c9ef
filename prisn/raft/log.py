"""In-memory view of the Raft log (pure: no I/O).

Entries are ``[index, term, kind, data]`` lists and are never mutated once built. The view
holds everything after the snapshot boundary; durability is tracked by the core, not here.

Invariants (checked by tests, relied on by the core):
- entries are contiguous: ``entries[k][0] == snap_index + 1 + k``;
- terms never decrease along the log and never exceed the owner's current term;
- ``term_at(snap_index) == snap_term`` and ``term_at(0) == 0``.
"""

from __future__ import annotations

from collections.abc import Iterable

ENTRY_OVERHEAD = 16  # rough per-entry framing cost used for the byte cap


def entry_size(e: list) -> int:
    """Approximate encoded size of one entry, for `max_append_bytes`."""
    data = e[3]
    return ENTRY_OVERHEAD + (len(data) if data else 0)


class RaftLog:
    """Entries ``(snap_index, last_index]`` plus the term at the snapshot boundary."""

    __slots__ = ("snap_index", "snap_term", "_entries")

    def __init__(self, snap_index: int = 0, snap_term: int = 0,
                 entries: Iterable[list] = ()) -> None:
        self.snap_index = snap_index
        self.snap_term = snap_term
        self._entries: list[list] = []
        ents = list(entries)
        if ents:
            self.append(ents)

    # ------------------------------------------------------------------ reading
    @property
    def last_index(self) -> int:
        return self.snap_index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1][1] if self._entries else self.snap_term

    def term_at(self, index: int) -> int | None:
        """Term of the entry at `index`; None when it is compacted away or beyond the end."""
        off = index - self.snap_index
        if off == 0:
            return self.snap_term
        if off < 0:
            return 0 if index == 0 else None
        if off > len(self._entries):
            return None
        return self._entries[off - 1][1]

    def entry(self, index: int) -> list:
        """The entry at `index` (must be in the view)."""
        off = index - self.snap_index - 1
        if off < 0 or off >= len(self._entries):
            raise IndexError(index)
        return self._entries[off]

    def slice(self, lo: int, hi: int, max_count: int = 0, max_bytes: int = 0) -> list[list]:
        """Entries lo..hi inclusive, capped by count/bytes (0 = no cap); never empty if lo<=hi."""
        if lo > hi:
            return []
        a = lo - self.snap_index - 1
        b = hi - self.snap_index
        if a < 0 or b > len(self._entries):
            raise IndexError((lo, hi))
        if max_count and b - a > max_count:
            b = a + max_count
        if not max_bytes:
            return self._entries[a:b]
        total = 0
        ents = self._entries
        for k in range(a, b):
            total += entry_size(ents[k])
            if total > max_bytes and k > a:
                return ents[a:k]
        return ents[a:b]

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: is a log ending at (last_index, last_term) at least as new as ours?"""
        lt = self.last_term
        return last_term > lt or (last_term == lt and last_index >= self.last_index)

    def find_conflict(self, entries: list[list]) -> int:
        """Index of the first entry of `entries` that is new or differs in term; 0 if none."""
        for e in entries:
            if self.term_at(e[0]) != e[1]:
                return e[0]
        return 0

    def find_le_term(self, index: int, term: int) -> int:
        """Largest k <= index with term_at(k) <= term (fast backtracking, thesis 3.5 note)."""
        k = min(index, self.last_index)
        while k > self.snap_index:
            t = self.term_at(k)
            if t is not None and t <= term:
                return k
            k -= 1
        return k

    def reject_hint(self, prev_index: int, prev_term: int) -> tuple[int, int]:
        """Where a leader should retry after our log did not match (prev_index, prev_term)."""
        if prev_index > self.last_index:
            return self.last_index, self.last_term
        # term_at(prev_index) != prev_term here, so k < prev_index unless our term there is lower
        k = self.find_le_term(prev_index, prev_term)
        t = self.term_at(k)
        return k, t if t is not None else 0

    # ------------------------------------------------------------------ writing
    def append(self, entries: list[list]) -> None:
        """Append contiguous entries starting at last_index + 1."""
        if not entries:
            return
        if entries[0][0] != self.last_index + 1:
            raise ValueError(f"non-contiguous append at {entries[0][0]}, last {self.last_index}")
        self._entries.extend(entries)

    def truncate_from(self, index: int) -> None:
        """Drop every entry with index >= `index` (must be after the snapshot)."""
        if index <= self.snap_index:
            raise ValueError(f"cannot truncate at {index} <= snapshot {self.snap_index}")
        del self._entries[index - self.snap_index - 1:]

    def compact(self, upto: int) -> None:
        """Forget entries <= `upto` (covered by a snapshot); `upto` must be in the view."""
        if upto <= self.snap_index:
            return
        if upto > self.last_index:
            raise ValueError(f"cannot compact to {upto}: last index is {self.last_index}")
        term = self.term_at(upto)
        assert term is not None
        del self._entries[:upto - self.snap_index]
        self.snap_index = upto
        self.snap_term = term

    def entries(self) -> list[list]:
        """A copy of the entries in the view (tests and simulator)."""
        return list(self._entries)
