"""LogStoreActor under disk faults: FAILED -> retries with backoff -> RECOVERED -> StoreResume.

Checked (see actors/logstore.py): one StoreFailed per failure; requests between the failure
and StoreResume are never written nor answered; compactions wait and run at the resume;
retries back off up to `retry_max`; a store that reopens inconsistent is StoreFatal; data
synced before the failure survives the reopen. The first tests drive the actor without a
thread (FakeOutbox, a fake clock, a storage double over a real RocksDB); the last one fills
a real tmpfs (root only).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import rocksdict
import zmq

from actors.logstore import NO_SPACE, LogStoreActor
from prisn.messages import (
    StoreAppend,
    StoreCompact,
    StoreFailed,
    StoreFatal,
    StoreRecovered,
    StoreResume,
    StoreSynced,
)
from prisn.storage import LogStorage, StorageOpenError, entry_key
from transport.fake import FakeOutbox


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FlakyDisk(LogStorage):
    """A real LogStorage whose disk can be 'full': synced writes fail like RocksDB's (and
    break the store), reopening fails like RocksDB replaying its WAL on a full disk."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.full = False
        self.land = False  # a failing write still reaches the disk (unknown outcome)
        self.reopens = 0

    def _commit(self, wb: Any, landed: tuple[int, int, int]) -> None:
        if self.full:
            if self.land:
                self._db.write(wb, self._sync)
            self._broken = "Exception: IO error: No space left on device"
            self._outcomes = [(self._compact_index, self._compact_term, self._last), landed]
            raise Exception("IO error: No space left on device: While appending to file")
        super()._commit(wb, landed)

    def reopen(self) -> None:
        self.reopens += 1
        if self.full:
            self.close()
            raise StorageOpenError("cannot reopen: IO error: No space left on device")
        super().reopen()


def sa(seq: int, first: int, n: int, term: int = 1) -> StoreAppend:
    return StoreAppend(seq=seq, term=term, vote="n1", commit=0,
                       entries=[[i, term, 0, b"x" * 100] for i in range(first, first + n)])


@pytest.fixture
def rig(tmp_path: Path):
    disk = FlakyDisk(str(tmp_path / "log"))
    clock = Clock()
    actor = LogStoreActor(disk, zmq.Context.instance(), "n1", retry_min=0.125,
                          retry_max=1.0, clock=clock)
    out = FakeOutbox()
    actor.outbox = out  # type: ignore[assignment]
    yield actor, out, disk, clock
    disk.close()


def test_failure_voids_requests_until_resume_then_writes_again(rig) -> None:
    actor, out, disk, clock = rig
    actor.on_messages([sa(1, 1, 5)])
    assert out.take() == [("raft", StoreSynced(seq=1))]
    disk.full = True
    actor.on_messages([sa(2, 6, 2), sa(3, 8, 1)])
    assert out.take() == [("raft", StoreFailed(seq=3, reason=NO_SPACE))]
    assert actor.failed == NO_SPACE
    # requests sent before raft knew are void; a compaction waits
    actor.on_messages([sa(4, 9, 1), StoreCompact(upto=2), sa(5, 10, 1)])
    assert out.take() == [] and actor.voided == 2 and disk.first_index() == 1
    # retries: not before the backoff expires, then doubling up to retry_max
    actor.on_idle()
    assert disk.reopens == 0
    waits = []
    for _ in range(6):
        before, n = disk.reopens, 0
        while disk.reopens == before:
            clock.now += 0.0625  # exact in binary: no rounding games
            actor.on_idle()
            n += 1
        waits.append(n * 0.0625)
    assert waits == [0.125, 0.25, 0.5, 1.0, 1.0, 1.0], waits
    assert out.take() == []
    # the disk has room again: StoreRecovered, but requests stay void until StoreResume
    disk.full = False
    clock.now += 1.0
    actor.on_idle()
    assert out.take() == [("raft", StoreRecovered(reason=NO_SPACE))]
    actor.on_idle()
    clock.now += 5
    actor.on_idle()
    assert out.take() == [] and actor.recoveries == 1  # no more retries once recovered
    actor.on_messages([sa(6, 11, 1)])  # still in the inbox from before: void
    assert out.take() == [] and actor.voided == 3
    # raft resumes: the deferred compaction runs first, then its re-sent suffix is written
    resend = StoreAppend(seq=7, term=1, vote="n1", commit=0, truncate_from=6,
                         entries=[[i, 1, 0, b"y"] for i in range(6, 9)])
    actor.on_messages([StoreResume(seq=7), resend])
    assert out.take() == [("raft", StoreSynced(seq=7))]
    assert actor.failed is None and disk.first_index() == 3
    boot = disk.load()
    assert [e[0] for e in boot.entries] == [3, 4, 5, 6, 7, 8]
    assert [e[3] for e in boot.entries] == [b"x" * 100] * 3 + [b"y"] * 3


def test_a_failed_write_that_landed_is_accepted_on_reopen(rig) -> None:
    """A failed batch may be on disk after all: the reopened store holds it, and the
    truncating re-send makes the disk equal to raft's log again."""
    actor, out, disk, clock = rig
    actor.on_messages([sa(1, 1, 3)])
    assert out.take() == [("raft", StoreSynced(seq=1))]
    disk.full, disk.land = True, True
    actor.on_messages([sa(2, 4, 2)])
    disk.full = False
    clock.now += 1
    actor.on_idle()
    assert [m for _, m in out.take()] == [StoreFailed(seq=2, reason=NO_SPACE),
                                          StoreRecovered(reason=NO_SPACE)]
    assert disk.last_index() == 5  # what the failed write left
    actor.on_messages([StoreResume(seq=3), StoreAppend(seq=3, term=2, vote="", commit=0,
                                                       truncate_from=4)])
    assert out.take() == [("raft", StoreSynced(seq=3))]
    assert [e[0] for e in disk.load().entries] == [1, 2, 3]


def test_failed_compaction_is_deferred_and_retried_at_resume(rig) -> None:
    actor, out, disk, clock = rig
    actor.on_messages([sa(1, 1, 6)])
    disk.full = True
    actor.on_messages([StoreCompact(upto=4)])
    assert [type(m) for _, m in out.take()] == [StoreSynced, StoreFailed]
    disk.full = False
    clock.now += 1
    actor.on_idle()
    actor.on_messages([StoreResume(seq=2), sa(2, 7, 1)])
    assert [m for _, m in out.take()] == [StoreRecovered(reason=NO_SPACE), StoreSynced(seq=2)]
    assert disk.first_index() == 5 and actor.compactions == 1


def test_store_changed_behind_our_back_is_fatal(rig) -> None:
    actor, out, disk, clock = rig
    actor.on_messages([sa(1, 1, 5)])
    disk.full = True
    actor.on_messages([sa(2, 6, 1)])
    disk.full = False
    disk.close()
    db = rocksdict.Rdict(disk.path, rocksdict.Options(raw_mode=True))
    for i in (4, 5):  # synced entries vanish
        db.delete(entry_key(i))
    db.close()
    clock.now += 1
    actor.on_idle()
    msgs = [m for _, m in out.take()]
    assert isinstance(msgs[-1], StoreFatal) and "expected one of" in msgs[-1].reason
    assert actor.fatal is not None
    reopens = disk.reopens
    clock.now += 10
    actor.on_idle()
    assert disk.reopens == reopens and out.take() == []  # no more retries


def test_resume_before_recovery_is_ignored(rig) -> None:
    actor, out, disk, clock = rig
    disk.full = True
    actor.on_messages([sa(1, 1, 1)])
    actor.on_messages([StoreResume(seq=2), sa(2, 1, 1)])
    assert [type(m) for _, m in out.take()] == [StoreFailed]
    assert actor.failed == NO_SPACE and actor.voided == 1


# --------------------------------------------------------------------------- real tmpfs
@pytest.fixture
def tmpfs(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_real_rocksdb_on_a_full_tmpfs_recovers_after_space_is_freed(tmpfs: Path) -> None:
    pad = tmpfs / "padding"
    pad.write_bytes(b"\0" * (1 << 20))
    storage = LogStorage(str(tmpfs / "raft"))
    try:
        actor = LogStoreActor(storage, zmq.Context.instance(), "n1", retry_min=0.0,
                              retry_max=0.0)
        out = FakeOutbox()
        actor.outbox = out  # type: ignore[assignment]
        synced, seq, big = 0, 0, b"z" * (32 << 10)
        while actor.failed is None:
            seq += 1
            assert seq < 200, "the tmpfs never filled"
            actor.on_messages([StoreAppend(seq=seq, term=1, vote="", commit=0,
                                           entries=[[synced + 1, 1, 0, big]])])
            (_, m), = out.take()
            if isinstance(m, StoreSynced):
                synced += 1
        assert m == StoreFailed(seq=seq, reason=NO_SPACE)
        actor.on_idle()  # still full: the reopen fails, no answer
        assert out.take() == [] and actor.retries >= 1
        pad.unlink()
        actor.on_idle()
        assert out.take() == [("raft", StoreRecovered(reason=NO_SPACE))]
        assert storage.last_index() in (synced, synced + 1)  # the failed write: either
        actor.on_messages([StoreResume(seq=seq + 1),
                           StoreAppend(seq=seq + 1, term=1, vote="", commit=0,
                                       truncate_from=synced + 1,
                                       entries=[[synced + 1, 1, 0, b"after"]])])
        assert out.take() == [("raft", StoreSynced(seq=seq + 1))]
        entries = storage.load().entries
        assert [e[0] for e in entries] == list(range(1, synced + 2))
        assert entries[-1][3] == b"after" and all(e[3] == big for e in entries[:-1])
    finally:
        storage.close()
