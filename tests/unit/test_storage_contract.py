"""One table of cases run against both log stores: `LogStorage` (RocksDB) and its in-memory
twin `MemoryLogStorage`. The twin is what the simulator runs on, so every case here is a
promise that the simulated disk behaves like the real one.

A case is a list of steps ``(op, args, expect)``: `expect` is None (returns normally), a
value (the return value) or an exception class. After every case both stores must also
agree on `load()` after a reopen/crash. Disk faults are injected through a `Faults` handle
the fixture gives for each kind (a RocksDB store whose commit fails like a full disk, the
twin's `MemoryDisk.full`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from prisn.memstore import MemoryDisk, MemoryLogStorage
from prisn.messages import StoreAppend
from prisn.storage import (
    LogStorage,
    StorageBroken,
    StorageCorrupt,
    StorageOpenError,
)


class _FlakyRocks(LogStorage):
    """LogStorage whose synced writes fail like a full disk (and break the store)."""

    full = False
    land = False

    def _commit(self, wb: Any, landed: tuple[int, int, int]) -> None:
        if self.full:
            if self.land:
                self._db.write(wb, self._sync)
            self._broken = "Exception: IO error: No space left on device"
            self._outcomes = [(self._compact_index, self._compact_term, self._last), landed]
            raise Exception("IO error: No space left on device: While appending to file")
        super()._commit(wb, landed)

    def reopen(self) -> None:
        if self.full:
            self.close()
            raise StorageOpenError("cannot reopen: IO error: No space left on device")
        super().reopen()


@dataclass
class Rig:
    """A store under test plus how to fault it and how to crash it."""

    store: Any
    set_full: Callable[[bool, bool], None]  # (full, land)
    crash: Callable[[], Any]  # -> a new store on what was durable


def _rocks_rig(path: str) -> Rig:
    r = Rig(_FlakyRocks(path), lambda full, land: None, lambda: None)

    def set_full(full: bool, land: bool) -> None:
        r.store.full, r.store.land = full, land

    def crash() -> Any:
        r.store.close()
        r.store = _FlakyRocks(path)
        return r.store

    r.set_full, r.crash = set_full, crash
    return r


def _mem_rig() -> Rig:
    disk = MemoryDisk()
    r = Rig(MemoryLogStorage(disk), lambda full, land: None, lambda: None)

    def set_full(full: bool, land: bool) -> None:
        disk.full, disk.land = full, land

    def crash() -> Any:
        r.store = r.store.crash()
        return r.store

    r.set_full, r.crash = set_full, crash
    return r


@pytest.fixture(params=["rocksdb", "memory"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    r = _rocks_rig(str(tmp_path / "log")) if request.param == "rocksdb" else _mem_rig()
    yield r
    r.store.close()


def sa(seq: int, first: int = 0, n: int = 0, term: int = 1, *, trunc: int = 0,
       vote: str = "n1", commit: int = 0) -> StoreAppend:
    return StoreAppend(seq=seq, term=term, vote=vote, commit=commit, truncate_from=trunc,
                       entries=[[i, term, 0, b"v%d" % i] for i in range(first, first + n)])


def _shape(boot: Any) -> tuple:
    return (boot.term, boot.vote, boot.commit, boot.snapshot_index, boot.snapshot_term,
            [tuple(e) for e in boot.entries])


# (name, steps, (first_index, last_index) at the end)
CASES: list[tuple[str, list[tuple[str, tuple, Any]], tuple[int, int]]] = [
    ("empty", [], (1, 0)),
    ("append", [("write", ([sa(1, 1, 3)],), None)], (1, 3)),
    ("hard state only", [("write", ([sa(1, term=4, vote="n2", commit=0)],), None)], (1, 0)),
    ("group of requests", [("write", ([sa(1, 1, 2), sa(2, 3, 2), sa(3, 5, 1)],), None)],
     (1, 5)),
    ("truncate then append", [("write", ([sa(1, 1, 5)],), None),
                              ("write", ([sa(2, 3, 1, term=2, trunc=3)],), None)], (1, 3)),
    ("truncate only", [("write", ([sa(1, 1, 5)],), None),
                       ("write", ([sa(2, trunc=2)],), None)], (1, 1)),
    ("truncate inside one batch", [("write", ([sa(1, 1, 4), sa(2, 2, 1, term=2, trunc=2)],),
                                    None)], (1, 2)),
    ("overwrite keeps tail", [("write", ([sa(1, 1, 4)],), None),
                              ("write", ([sa(2, 2, 1, term=1)],), None)], (1, 4)),
    ("empty write", [("write", ([],), None)], (1, 0)),
    ("gap refused", [("write", ([sa(1, 1, 2)],), None),
                     ("write", ([sa(2, 4, 1)],), ValueError)], (1, 2)),
    ("gap in a later request refuses the batch", [
        ("write", ([sa(1, 1, 2), sa(2, 5, 1)],), ValueError)], (1, 0)),
    ("bad entry refused", [("write", ([StoreAppend(seq=1, term=1, vote="", commit=0,
                                                   entries=[[1, 1, 0, "text"]])],),
                            ValueError)], (1, 0)),
    ("compact", [("write", ([sa(1, 1, 5)],), None), ("compact_prefix", (3,), None)], (4, 5)),
    ("compact is idempotent", [("write", ([sa(1, 1, 5)],), None),
                               ("compact_prefix", (3,), None),
                               ("compact_prefix", (2,), None)], (4, 5)),
    ("compact past the log", [("write", ([sa(1, 1, 2)],), None),
                              ("compact_prefix", (3,), ValueError)], (1, 2)),
    ("truncate compacted refused", [("write", ([sa(1, 1, 5)],), None),
                                    ("compact_prefix", (3,), None),
                                    ("write", ([sa(2, 3, 1, trunc=3)],), ValueError)], (4, 5)),
    ("write compacted refused", [("write", ([sa(1, 1, 5)],), None),
                                 ("compact_prefix", (3,), None),
                                 ("write", ([sa(2, 2, 1)],), ValueError)], (4, 5)),
    ("reset keeps a matching tail", [("write", ([sa(1, 1, 5)],), None),
                                     ("reset_to", (3, 1), True)], (4, 5)),
    ("reset drops a disagreeing log", [("write", ([sa(1, 1, 5)],), None),
                                       ("reset_to", (3, 7), False)], (4, 3)),
    ("reset past the log", [("write", ([sa(1, 1, 2)],), None), ("reset_to", (9, 2), False),
                            ("write", ([sa(2, 10, 1, term=2)],), None)], (10, 10)),
    ("reset below compaction", [("write", ([sa(1, 1, 5)],), None),
                                ("compact_prefix", (4,), None),
                                ("reset_to", (2, 9), True)], (5, 5)),
    ("reset to zero refused", [("reset_to", (0, 0), ValueError)], (1, 0)),
    ("probe", [("write", ([sa(1, 1, 1)],), None), ("probe", (), None)], (1, 1)),
    ("reopen when healthy", [("write", ([sa(1, 1, 3)],), None), ("reopen", (), None)], (1, 3)),
    # disk faults: a failed write breaks the store; it landed or not; reopen accepts either
    ("failed write, not landed", [("write", ([sa(1, 1, 2)],), None), ("full", (True, False), None),
                                  ("write", ([sa(2, 3, 2)],), Exception),
                                  ("write", ([sa(3, 3, 1)],), StorageBroken),
                                  ("compact_prefix", (1,), StorageBroken),
                                  ("probe", (), StorageBroken),
                                  ("reopen", (), StorageOpenError),
                                  ("full", (False, False), None),
                                  ("reopen", (), None),
                                  ("write", ([sa(3, 3, 1)],), None)], (1, 3)),
    ("failed write, landed", [("write", ([sa(1, 1, 2)],), None), ("full", (True, True), None),
                              ("write", ([sa(2, 3, 2)],), Exception),
                              ("full", (False, False), None),
                              ("reopen", (), None)], (1, 4)),
    ("failed compaction, landed", [("write", ([sa(1, 1, 4)],), None),
                                   ("full", (True, True), None),
                                   ("compact_prefix", (2,), Exception),
                                   ("full", (False, False), None), ("reopen", (), None),
                                   ("compact_prefix", (2,), None)], (3, 4)),
    ("failed probe", [("full", (True, False), None), ("probe", (), Exception),
                      ("full", (False, False), None), ("reopen", (), None),
                      ("probe", (), None)], (1, 0)),
    ("crash keeps what was synced", [("write", ([sa(1, 1, 3)],), None),
                                     ("compact_prefix", (1,), None), ("crash", (), None),
                                     ("write", ([sa(2, 4, 1, commit=2)],), None)], (2, 4)),
    ("crash after a failed write keeps only the durable outcome", [
        ("write", ([sa(1, 1, 2)],), None), ("full", (True, False), None),
        ("write", ([sa(2, 3, 2)],), Exception), ("full", (False, False), None),
        ("crash", (), None)], (1, 2)),
]


def _run(rig: Rig, steps: list[tuple[str, tuple, Any]]) -> list[Any]:
    got: list[Any] = []
    for op, args, expect in steps:
        if op == "full":
            rig.set_full(*args)
            continue
        if op == "crash":
            rig.crash()
            continue
        fn = getattr(rig.store, op)
        if isinstance(expect, type) and issubclass(expect, BaseException):
            with pytest.raises(expect) as info:
                fn(*args)
            if expect is Exception:  # a disk fault: neither a refusal nor a broken store
                assert not isinstance(info.value, ValueError | StorageBroken), info.value
            got.append(type(info.value).__name__)
            continue
        r = fn(*args)
        if expect is not None:
            assert r == expect, (op, args, r)
        got.append(r)
    return got


@pytest.mark.parametrize("steps,bounds", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_contract(rig: Rig, steps: list, bounds: tuple[int, int]) -> None:
    _run(rig, steps)
    store = rig.store
    assert (store.first_index(), store.last_index()) == bounds
    live = _shape(store.load())
    assert _shape(rig.crash().load()) == live  # everything returned is durable


@pytest.mark.parametrize("steps", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_both_stores_end_the_same(tmp_path: Path, steps: list) -> None:
    """The same case on both stores returns the same results and ends with the same
    `load()` (hard state, compaction point, entries)."""
    rock, mem = _rocks_rig(str(tmp_path / "log")), _mem_rig()
    try:
        got_r = _run(rock, steps)
        got_m = _run(mem, steps)
        assert [type(g).__name__ if g is not None else g for g in got_r] == \
            [type(g).__name__ if g is not None else g for g in got_m]
        assert _shape(rock.store.load()) == _shape(mem.store.load())
    finally:
        rock.store.close()


def test_reopen_refuses_a_store_that_lost_synced_data(rig: Rig) -> None:
    """A store that reopens as something neither before nor after the failed batch is
    StorageCorrupt (synced data lost), on both stores."""
    s = rig.store
    s.write([sa(1, 1, 4)])
    rig.set_full(True, False)
    with pytest.raises(Exception, match="No space left"):
        s.write([sa(2, 5, 1)])
    rig.set_full(False, False)
    # lose a synced entry behind the store's back
    if isinstance(s, MemoryLogStorage):
        del s.disk.entries[4]
    else:
        from prisn.storage import entry_key
        s._db.delete(entry_key(4))
    with pytest.raises(StorageCorrupt):
        s.reopen()
