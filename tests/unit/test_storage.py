"""LogStorage against a real RocksDB in a temporary directory (prisn.storage)."""

from __future__ import annotations

import errno
import os
import tempfile
from typing import Any

import cbor2
import pytest
import rocksdict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prisn.storage as storage_mod
from prisn.messages import EntryKind, StoreAppend
from prisn.raft.boot import BootState
from prisn.storage import (
    FORMAT,
    K_FORMAT,
    K_HARD,
    LogStorage,
    StorageBroken,
    StorageCorrupt,
    StorageFormatError,
    StorageOpenError,
    entry_key,
)


def req(seq: int, *, term: int = 1, vote: str = "", commit: int = 0,
        entries: list[list[Any]] | None = None, truncate_from: int = 0) -> StoreAppend:
    return StoreAppend(seq=seq, term=term, vote=vote, commit=commit, entries=entries or [],
                       truncate_from=truncate_from)


def ents(first: int, last: int, term: int, tag: bytes = b"") -> list[list[Any]]:
    return [[i, term, int(EntryKind.COMMAND), tag + b"e%d" % i] for i in range(first, last + 1)]


def reopen(store: LogStorage) -> LogStorage:
    store.close()
    return LogStorage(store.path)


@pytest.fixture(params=["walsync", "rocksdb"])
def store(request, tmp_path, monkeypatch):
    """A store in each sync mode (module doc of prisn.storage)."""
    monkeypatch.setenv("PRISN_LOG_SYNC", request.param)
    s = LogStorage(str(tmp_path / "log"))
    assert s.sync_mode == request.param
    yield s
    s.close()


class SpyDB:
    """Wraps the Rdict handle to count (or break) `write` calls; delegates everything else.

    Every write must carry WriteOptions with sync on, or (walsync mode) be followed by an
    fdatasync of the WAL it went to before the store returns: that is the durability promise.
    `test_walsync_*` check the second half.
    """

    def __init__(self, db: Any, fail: Exception | None = None, walsync: bool = False) -> None:
        self.db = db
        self.fail = fail
        self.walsync = walsync
        self.writes = 0

    def write(self, *args: Any) -> None:
        self.writes += 1
        assert len(args) == 2 and (args[1].sync is True or self.walsync), "unsynced write"
        if self.fail is not None:
            raise self.fail
        self.db.write(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


class SyncLog:
    """Stands in for os.fdatasync: records ("fdatasync", file) in `events`, really syncs,
    and can fail the next call with an errno."""

    def __init__(self, real: Any, events: list) -> None:
        self.real = real
        self.events = events
        self.fail = 0

    def __call__(self, fd: int) -> None:
        self.events.append(("fdatasync", os.readlink(f"/proc/self/fd/{fd}")))
        if self.fail:
            err, self.fail = self.fail, 0
            raise OSError(err, os.strerror(err))
        self.real(fd)


class OrderDB(SpyDB):
    def __init__(self, db: Any, events: list) -> None:
        super().__init__(db, walsync=True)
        self.events = events

    def write(self, *args: Any) -> None:
        self.events.append(("write", ""))
        super().write(*args)


@pytest.fixture
def walsync_store(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISN_LOG_SYNC", "walsync")
    events: list = []
    recorder = SyncLog(os.fdatasync, events)
    monkeypatch.setattr(storage_mod.os, "fdatasync", recorder)
    s = LogStorage(str(tmp_path / "log"))
    assert s.sync_mode == "walsync"
    s._db = OrderDB(s._db, events)
    events.clear()
    yield s, events, recorder
    if isinstance(s._db, OrderDB):
        s._db = s._db.db
    s.close()


def _current_wal(store: LogStorage) -> str:
    return storage_mod._wal_files(store.path)[-1][1]


def test_walsync_syncs_the_wal_after_every_mutation_before_it_returns(walsync_store):
    store, events, _ = walsync_store
    wal = _current_wal(store)
    store.write([req(1, term=1, vote="a", commit=0, entries=ents(1, 3, 1))])
    assert events == [("write", ""), ("fdatasync", wal)]
    store.compact_prefix(2)
    store.probe()
    assert events == [("write", ""), ("fdatasync", wal)] * 3


def test_walsync_follows_rocksdb_to_a_new_wal(walsync_store):
    store, events, _ = walsync_store
    store.write([req(1, term=1, vote="a", commit=0, entries=ents(1, 3, 1))])
    old = _current_wal(store)
    store._db.flush()  # a memtable flush: RocksDB switches to a new WAL file
    new = _current_wal(store)
    assert new != old
    events.clear()
    store.write([req(2, term=1, vote="a", commit=0, entries=ents(4, 5, 1))])
    # the old WAL did not grow: the new one is synced (and made current), then the directory
    assert events[0] == ("write", "") and ("fdatasync", new) in events
    assert store._wal is not None and store._wal.number == storage_mod._wal_files(store.path)[-1][0]
    events.clear()
    store.write([req(3, term=1, vote="a", commit=0, entries=ents(6, 6, 1))])
    assert events == [("write", ""), ("fdatasync", new)]
    store._db = store._db.db
    assert [e[0] for e in reopen(store).load().entries] == list(range(1, 7))


def test_a_wal_removed_while_following_a_switch_is_skipped(walsync_store, monkeypatch):
    store, events, _ = walsync_store
    store._db.flush()  # switch to a new WAL
    real = storage_mod._wal_files
    assert store._wal is not None
    newest = real(store.path)[-1][0]
    # RocksDB numbers the flushed table between the two WALs: a WAL in that gap that is
    # listed, then removed before it can be opened, must not break the store
    assert newest - store._wal.number >= 2
    gone = newest - 1

    def with_a_removed_one(path: str) -> list[tuple[int, str]]:
        files = real(path)
        return sorted(files + [(gone, os.path.join(path, "removed.log"))])

    monkeypatch.setattr(storage_mod, "_wal_files", with_a_removed_one)
    store.write([req(1, term=1, vote="a", commit=0, entries=ents(1, 2, 1))])
    assert store.broken is None and ("fdatasync", real(store.path)[-1][1]) in events
    monkeypatch.setattr(storage_mod, "_wal_files", real)
    store._db = store._db.db
    assert [e[0] for e in reopen(store).load().entries] == [1, 2]


def test_a_write_that_reaches_no_visible_wal_breaks_the_store(walsync_store, monkeypatch):
    store, events, _ = walsync_store
    monkeypatch.setattr(storage_mod._WalSync, "size", lambda self: 1 << 60)  # never grows
    with pytest.raises(storage_mod.WalLost):
        store.write([req(1, term=1, vote="a", commit=0, entries=ents(1, 1, 1))])
    assert store.broken is not None


def test_a_failed_fdatasync_breaks_the_store_like_a_failed_write(walsync_store):
    store, events, recorder = walsync_store
    recorder.fail = errno.EIO
    with pytest.raises(OSError):
        store.write([req(1, term=1, vote="a", commit=0, entries=ents(1, 2, 1))])
    assert store.broken is not None
    with pytest.raises(StorageBroken):
        store.write([req(2, term=1, vote="a", commit=0)])
    store._db = store._db.db
    store.reopen()  # the batch landed: reopening accepts it
    assert store.broken is None and store.sync_mode == "walsync"
    assert [e[0] for e in store.load().entries] == [1, 2]


def test_rocksdb_mode_when_asked_and_when_rocksdb_keeps_the_wal_in_memory(
        tmp_path, monkeypatch):
    monkeypatch.setenv("PRISN_LOG_SYNC", "rocksdb")
    s = LogStorage(str(tmp_path / "a"))
    assert s.sync_mode == "rocksdb" and s._sync.sync is True
    s.close()
    monkeypatch.setenv("PRISN_LOG_SYNC", "walsync")
    monkeypatch.setattr(storage_mod._WalSync, "size", lambda self: 1 << 60)  # never grows
    s = LogStorage(str(tmp_path / "b"))
    assert s.sync_mode == "rocksdb" and s._sync.sync is True
    s.close()


# --------------------------------------------------------------------------- basics
def test_fresh_store_is_empty(store):
    assert store.load() == BootState()
    assert store.last_index() == 0
    assert store.first_index() == 1


def test_round_trip_and_reopen(store):
    entries = [[1, 1, int(EntryKind.NOOP), b""],
               [2, 1, int(EntryKind.COMMAND), bytes(range(256))],
               [3, 2, int(EntryKind.CONFIG), b"\x00" * 300]]
    store.write([req(1, term=2, vote="n2", commit=1, entries=entries)])
    want = BootState(term=2, vote="n2", commit=1, entries=entries)
    assert store.load() == want
    assert store.last_index() == 3
    store = reopen(store)
    try:
        assert store.load() == want
        assert store.last_index() == 3
    finally:
        store.close()


def test_golden_on_disk_bytes(tmp_path):
    """Accidental format changes must fail here: exact keys and deterministic CBOR values."""
    path = str(tmp_path / "log")
    s = LogStorage(path)
    s.write([req(1, term=3, vote="n1", commit=1, entries=[[1, 3, 2, b"abc"]])])
    s.close()
    db = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True))
    try:
        assert entry_key(1) == b"l\x00\x00\x00\x00\x00\x00\x00\x01"
        assert db.get(K_FORMAT) == b"\x01"
        assert db.get(entry_key(1)) == bytes.fromhex("83030243616263")  # [3, 2, h'616263']
        # {"term": 3, "vote": "n1", "commit": 1}, canonical key order (shortest first)
        assert db.get(K_HARD) == bytes.fromhex("a3" "647465726d03" "64766f7465626e31"
                                               "66636f6d6d697401")
    finally:
        db.close()


def test_hard_state_only_write(store):
    store.write([req(1, term=1, entries=ents(1, 3, 1))])
    store.write([req(2, term=5, vote="n3", commit=2)])
    boot = store.load()
    assert (boot.term, boot.vote, boot.commit) == (5, "n3", 2)
    assert boot.entries == ents(1, 3, 1)


def test_truncate_then_append_rewrites_conflict(store):
    store.write([req(1, term=1, entries=ents(1, 5, 1))])
    store.write([req(2, term=2, entries=ents(3, 4, 2, b"new"), truncate_from=3)])
    boot = store.load()
    assert boot.entries == ents(1, 2, 1) + ents(3, 4, 2, b"new")
    assert store.last_index() == 4
    store = reopen(store)
    try:
        assert store.load().entries == ents(1, 2, 1) + ents(3, 4, 2, b"new")
    finally:
        store.close()


def test_truncate_only(store):
    store.write([req(1, entries=ents(1, 5, 1))])
    store.write([req(2, truncate_from=2)])
    assert store.load().entries == ents(1, 1, 1)
    assert store.last_index() == 1


def test_merge_order_across_requests_in_one_write(store):
    spy = SpyDB(store._db, walsync=store.sync_mode == "walsync")
    store._db = spy
    store.write([
        req(1, term=1, vote="a", commit=0, entries=ents(1, 5, 1)),
        req(2, term=2, vote="b", commit=1, entries=ents(3, 4, 2, b"x"), truncate_from=3),
        req(3, term=3, vote="c", commit=2, entries=ents(5, 6, 3)),
        req(4, term=3, vote="c", commit=4),
    ])
    assert spy.writes == 1  # one synced WriteBatch for all four requests
    boot = store.load()
    assert boot.entries == ents(1, 2, 1) + ents(3, 4, 2, b"x") + ents(5, 6, 3)
    assert (boot.term, boot.vote, boot.commit) == (3, "c", 4)  # the last request wins
    assert store.last_index() == 6
    store.compact_prefix(2)
    assert spy.writes == 2


def test_overwrite_inside_log_without_truncate_keeps_tail(store):
    store.write([req(1, entries=ents(1, 4, 1))])
    store.write([req(2, entries=ents(2, 3, 1))])  # a re-sent, identical prefix
    assert store.load().entries == ents(1, 4, 1)


def test_empty_write_is_a_no_op(store):
    spy = SpyDB(store._db, walsync=store.sync_mode == "walsync")
    store._db = spy
    store.write([])
    assert spy.writes == 0


def test_reopen_recovers_exactly_after_many_writes(store):
    store.write([req(1, term=1, entries=ents(1, 50, 1))])
    store.write([req(2, term=2, vote="n1", entries=ents(40, 60, 2), truncate_from=40)])
    store.compact_prefix(10)
    store.write([req(3, term=2, vote="n1", commit=55, entries=ents(61, 61, 2))])
    before = store.load()
    store = reopen(store)
    try:
        assert store.load() == before
        assert before.snapshot_index == 10 and before.snapshot_term == 1
        assert [e[0] for e in before.entries] == list(range(11, 62))
        assert store.first_index() == 11 and store.last_index() == 61
    finally:
        store.close()


# --------------------------------------------------------------------------- refusals
def test_refuses_unknown_format(tmp_path):
    path = str(tmp_path / "log")
    db = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True))
    db.put(K_FORMAT, cbor2.dumps(FORMAT + 98))
    db.close()
    with pytest.raises(StorageFormatError, match=r"format 99; this build reads only 1"):
        LogStorage(path)
    # the refused handle was closed: the path can be opened again in this process
    db = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True))
    db.close()


def test_refuses_foreign_database(tmp_path):
    path = str(tmp_path / "log")
    db = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True))
    db.put(b"something", b"else")
    db.close()
    with pytest.raises(StorageFormatError, match="not a prisn log store"):
        LogStorage(path)


def test_second_open_in_one_process_is_refused(store):
    with pytest.raises(StorageOpenError, match="cannot open log store"):
        LogStorage(store.path)
    store.close()
    store.close()  # idempotent
    again = LogStorage(store.path)
    again.close()


def test_write_refuses_gap_and_writes_nothing(store):
    store.write([req(1, term=1, vote="a", entries=ents(1, 3, 1))])
    with pytest.raises(ValueError, match="gap"):
        store.write([req(2, term=2, vote="b", entries=ents(4, 4, 2)),
                     req(3, term=2, vote="b", entries=ents(6, 6, 2))])
    boot = store.load()
    assert boot.entries == ents(1, 3, 1) and boot.vote == "a"  # nothing of that batch landed
    assert store.last_index() == 3
    store.write([req(4, term=2, entries=ents(4, 4, 2))])  # still usable
    assert store.last_index() == 4


@pytest.mark.parametrize("bad", [
    [1, 1, 0],  # too short
    [1, 1, 0, "text"],  # data not bytes
    [1, -1, 0, b""],  # negative term
    [1, True, 0, b""],  # bool is not a term
    [0, 1, 0, b""],  # index 0
])
def test_write_refuses_malformed_entry(store, bad):
    with pytest.raises(ValueError):
        store.write([req(1, entries=[bad])])
    assert store.load() == BootState()


def test_load_detects_gap(tmp_path):
    path = str(tmp_path / "log")
    s = LogStorage(path)
    s.write([req(1, entries=ents(1, 5, 1))])
    s.close()
    db = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True))
    db.delete(entry_key(3))
    db.close()
    s = LogStorage(path)
    try:
        with pytest.raises(StorageCorrupt, match="expected entry 3, found 4"):
            s.load()
    finally:
        s.close()


def test_failed_write_breaks_store_until_reopen(store):
    store.write([req(1, entries=ents(1, 2, 1))])
    real = store._db
    store._db = SpyDB(real, fail=OSError("No space left on device"),
                      walsync=store.sync_mode == "walsync")
    with pytest.raises(OSError, match="No space"):
        store.write([req(2, entries=ents(3, 3, 1))])
    store._db = real
    with pytest.raises(StorageBroken, match="No space"):
        store.write([req(3, entries=ents(3, 3, 1))])
    with pytest.raises(StorageBroken):
        store.compact_prefix(1)
    store = reopen(store)
    try:
        assert store.load().entries == ents(1, 2, 1)
        store.write([req(4, entries=ents(3, 3, 1))])
    finally:
        store.close()


# --------------------------------------------------------------------------- compaction
def test_compact_prefix(store):
    store.write([req(1, term=1, entries=ents(1, 4, 1)), req(2, term=2, entries=ents(5, 8, 2))])
    store.compact_prefix(5)
    boot = store.load()
    assert (boot.snapshot_index, boot.snapshot_term) == (5, 2)
    assert boot.entries == ents(6, 8, 2)
    assert store.first_index() == 6 and store.last_index() == 8
    store.compact_prefix(3)  # at or below the compaction point: no-op
    assert store.load() == boot
    with pytest.raises(ValueError, match="last index is 8"):
        store.compact_prefix(9)
    with pytest.raises(ValueError, match="compaction point"):
        store.write([req(3, truncate_from=5)])
    with pytest.raises(ValueError, match="gap"):
        store.write([req(3, entries=ents(5, 5, 3))])
    store.write([req(3, term=3, entries=ents(7, 7, 3), truncate_from=7)])
    store.compact_prefix(7)  # everything: an empty log that continues at 8
    boot = store.load()
    assert boot.entries == [] and (boot.snapshot_index, boot.snapshot_term) == (7, 3)
    assert store.last_index() == 7
    store = reopen(store)
    try:
        assert store.load() == boot
        assert store.last_index() == 7
        store.write([req(4, term=3, entries=ents(8, 9, 3))])
        assert [e[0] for e in store.load().entries] == [8, 9]
    finally:
        store.close()


# --------------------------------------------------------------------------- property
class Model:
    """The obvious in-memory log: what `load()` must return after any sequence of writes."""

    def __init__(self) -> None:
        self.log: dict[int, list[Any]] = {}
        self.hard = (0, "", 0)
        self.compact = (0, 0)

    def last(self) -> int:
        return max(self.log, default=self.compact[0])

    def apply(self, r: StoreAppend) -> None:
        if r.truncate_from:
            for i in [i for i in self.log if i >= r.truncate_from]:
                del self.log[i]
        for e in r.entries:
            self.log[e[0]] = list(e)
        self.hard = (r.term, r.vote, r.commit)

    def compact_to(self, upto: int) -> None:
        if upto <= self.compact[0]:
            return
        self.compact = (upto, self.log[upto][1])
        for i in [i for i in self.log if i <= upto]:
            del self.log[i]

    def boot(self) -> BootState:
        return BootState(term=self.hard[0], vote=self.hard[1], commit=self.hard[2],
                         entries=[self.log[i] for i in sorted(self.log)],
                         snapshot_index=self.compact[0], snapshot_term=self.compact[1])


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_store_matches_model_across_reopens(data):
    with tempfile.TemporaryDirectory() as d:
        store = LogStorage(d + "/log")
        model = Model()
        seq = 0
        term = 1
        try:
            for _ in range(data.draw(st.integers(1, 12), label="steps")):
                op = data.draw(st.sampled_from(["write", "write", "write", "compact", "reopen"]))
                if op == "reopen":
                    store = reopen(store)
                    assert store.load() == model.boot()
                    continue
                if op == "compact":
                    lo, hi = model.compact[0], model.last()
                    upto = data.draw(st.integers(max(0, lo - 1), hi), label="compact upto")
                    store.compact_prefix(upto)
                    model.compact_to(upto)
                    continue
                batch = []
                shadow = Model()
                shadow.log, shadow.compact = dict(model.log), model.compact
                for _ in range(data.draw(st.integers(1, 4), label="requests")):
                    seq += 1
                    kind = data.draw(st.sampled_from(["append", "truncate", "hard"]))
                    last = shadow.last()
                    trunc = 0
                    if kind == "truncate":
                        trunc = data.draw(st.integers(shadow.compact[0] + 1, last + 1))
                        term += 1
                        last = trunc - 1
                    if kind == "hard":
                        term += data.draw(st.integers(0, 1))
                        n = 0
                    else:
                        n = data.draw(st.integers(0 if trunc else 1, 5), label="entries")
                    r = req(seq, term=term, vote=data.draw(st.sampled_from(["", "a", "b"])),
                            commit=data.draw(st.integers(0, max(0, last))),
                            entries=[[i, term, data.draw(st.integers(0, 2)),
                                      data.draw(st.binary(max_size=20))]
                                     for i in range(last + 1, last + 1 + n)],
                            truncate_from=trunc)
                    batch.append(r)
                    shadow.apply(r)
                store.write(batch)
                for r in batch:
                    model.apply(r)
                assert store.last_index() == model.last()
            store = reopen(store)
            assert store.load() == model.boot()
            assert store.last_index() == model.last()
        finally:
            store.close()
