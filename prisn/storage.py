"""The durable Raft log and hard state in RocksDB (via rocksdict). No threads of its own.

Threading: one thread owns a `LogStorage` at a time. `open`/`load` run in the main thread
before any actor starts; afterwards only the logstore actor's thread calls `write`,
`compact_prefix` and `close`. Nothing here is locked.

On-disk format (FORMAT = 1), raw bytes keys, deterministic CBOR values:
- ``b"m:format"``  -> CBOR uint, the format number; an unknown number refuses to open.
- ``b"m:hard"``    -> CBOR ``{"term", "vote", "commit"}``.
- ``b"m:compact"`` -> CBOR ``[index, term]``: the last entry removed by `compact_prefix`
  (absent: nothing compacted). The log starts right after it.
- ``b"m:snap"``    -> reserved for snapshot metadata ``{"index", "term", "membership"}``
  (read here only for its membership; snapshots live in files, see `prisn.snapshots`, and
  this key is not written).
- ``b"l" + index as 8 bytes big-endian`` -> CBOR ``[term, kind, data]``.
Every entry key sorts before every ``m:`` key, so the log is one ordered range.

Invariants:
- Every mutation is ONE WriteBatch with the WAL on: a batch is on disk entirely or not at
  all, and `write` returns only after it is synced. How it is synced (`sync_mode`):
  ``"walsync"`` (default): RocksDB appends the batch to its WAL file with its own sync off,
  then fdatasync(2) of that very file makes it durable. rocksdict holds the GIL for the whole
  of a synced write; `os.fdatasync` releases it, so the node's other threads run while the
  disk flushes, and only the WAL is flushed (not a snapshot being written beside it). Which
  file took the batch is known exactly: the current WAL grew, or RocksDB switched to a newer
  WAL, which is then synced (with everything newer than the last synced one, and the
  directory for its new entry). This relies on RocksDB handing every WAL record to the OS at
  write time (its default, ``manual_wal_flush = false``): checked at open on the real files,
  and at every write (the batch must land in a WAL we can see); otherwise, or with
  ``PRISN_LOG_SYNC=rocksdb``, RocksDB's own synced writes are used (``"rocksdb"``).
- The stored log is contiguous: indexes ``first_index() .. last_index()`` with no gap, where
  ``first_index() == compact index + 1``. `write` refuses (before touching the disk) any request
  that would break this; `load` re-checks it and raises `StorageCorrupt` on a gap.
- After a failed RocksDB write the on-disk state is unknown; every later mutation raises
  `StorageBroken` until the store is closed and reopened (`load` then tells the truth).
  `reopen` does that in place (same object, same path, the owning thread): it accepts the
  reopened store only if it is exactly what this handle last made durable, or that plus the
  failed batch (a batch is atomic: it landed entirely or not at all); anything else is
  `StorageCorrupt`. An I/O error while reopening (a disk still full: RocksDB writes a
  table file while replaying its WAL) is `StorageOpenError` and leaves the store broken
  and closed; `reopen` may be called again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Protocol

import cbor2
import rocksdict

from prisn.messages import StoreAppend
from prisn.raft.boot import BootState, Membership

FORMAT = 1

K_FORMAT = b"m:format"
K_HARD = b"m:hard"
K_COMPACT = b"m:compact"
K_SNAP = b"m:snap"  # reserved: snapshot metadata (a later issue writes it)
ENTRY_PREFIX = b"l"
ENTRY_END = b"m"  # first key after every entry key
MAX_INDEX = (1 << 63) - 1  # fits a signed 64-bit int everywhere


class StorageError(Exception):
    """Base of every error this module raises on purpose."""


class StorageOpenError(StorageError):
    """The database could not be opened (already open in this process, bad path, ...)."""


class StorageFormatError(StorageError):
    """The database holds an unknown format, or is not a prisn log store."""


class StorageCorrupt(StorageError):
    """The stored log violates its invariants (gap, bad value)."""


class StorageBroken(StorageError):
    """An earlier write failed; the store must be closed and reopened."""


class LogStore(Protocol):
    """What the logstore actor (actors/logstore.py) uses of a log store: exactly these
    operations. Implemented by `LogStorage` (RocksDB) and `prisn.memstore.MemoryLogStorage`
    (the in-memory twin); tests/unit/test_storage_contract.py runs one table of cases
    against both. Every mutation is atomic and durable when it returns; after a failed one
    every mutation raises `StorageBroken` until `reopen` succeeds."""

    def first_index(self) -> int:
        """Index of the first stored entry (compact index + 1)."""
        ...

    def write(self, requests: Sequence[StoreAppend]) -> None:
        """Append/truncate and set the hard state of `requests`, as one durable batch."""
        ...

    def compact_prefix(self, upto_index: int) -> None:
        """Delete entries <= `upto_index` (a durable snapshot covers them)."""
        ...

    def reset_to(self, index: int, term: int) -> bool:
        """An installed snapshot (`index`, `term`) becomes the start of the log."""
        ...

    def reopen(self) -> None:
        """Close and open again after a failure; `StorageOpenError` to retry later,
        `StorageCorrupt` / `StorageFormatError` when the store cannot be trusted."""
        ...

    def probe(self) -> None:
        """A durable write that changes nothing: proves the disk takes writes again."""
        ...


def entry_key(index: int) -> bytes:
    """The key of log entry `index` (1 <= index <= MAX_INDEX)."""
    return ENTRY_PREFIX + index.to_bytes(8, "big")


def _index_of(key: bytes) -> int:
    if len(key) != 9 or key[:1] != ENTRY_PREFIX:
        raise StorageCorrupt(f"unexpected key {key!r} in the entry range")
    return int.from_bytes(key[1:], "big")


log = logging.getLogger("prisn.storage")


def _wal_files(path: str) -> list[tuple[int, str]]:
    """(number, path) of the RocksDB WAL files (``NNNNNN.log``) in `path`, oldest first."""
    out = []
    with os.scandir(path) as it:
        for e in it:
            stem = e.name[:-4]
            if e.name.endswith(".log") and stem.isdigit():
                out.append((int(stem), e.path))
    out.sort()
    return out


class WalLost(RuntimeError):
    """A write did not land in any WAL file the log store can see (walsync mode)."""


class _WalSync:
    """The "walsync" mode: after a write with RocksDB's sync off, fdatasync the WAL file the
    write went to. Owner thread only (the log store's).

    Invariant: every WAL file numbered below `number` was synced after the last write that
    reached it, and RocksDB never appends to a WAL older than its current one."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        self.number = -1
        self.fd = -1
        try:
            if not self._advance():
                raise OSError(f"no WAL file in {path!r}")
        except BaseException:
            self.close()
            raise

    def size(self) -> int:
        """The current WAL's size: call before a write."""
        return os.fstat(self.fd).st_size

    def synced_after(self, size_before: int) -> None:
        """Make the write just done durable (raises OSError on a failed sync)."""
        if os.fstat(self.fd).st_size > size_before:
            os.fdatasync(self.fd)  # releases the GIL
            return
        if not self._advance():
            raise WalLost("the batch reached no WAL file this store can see")

    def _advance(self) -> bool:
        """Sync every WAL from the current one on (a write may sit in any of them), fsync
        the directory for new entries, and make the newest current. False if there is no
        newer WAL than the current one (then the write went nowhere we can see)."""
        files = [(n, p) for n, p in _wal_files(self.path) if n >= self.number]
        if not files or files[-1][0] == self.number:
            return False
        for n, p in files:
            if n == self.number:
                os.fdatasync(self.fd)
                continue
            try:
                fd = os.open(p, os.O_RDONLY)
            except FileNotFoundError:
                if n == files[-1][0]:
                    raise
                continue  # RocksDB removes a WAL only once its data is in a synced table
            try:
                os.fdatasync(fd)
            except BaseException:
                os.close(fd)
                raise
            if n == files[-1][0]:
                if self.fd >= 0:
                    os.close(self.fd)
                self.number, self.fd = n, fd
            else:
                os.close(fd)
        os.fsync(self.dir_fd)
        return True

    def close(self) -> None:
        for fd in (self.fd, self.dir_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.dir_fd = -1


def _dumps(value: Any) -> bytes:
    return cbor2.dumps(value, canonical=True)


def _no_tags(_decoder: Any, tag: Any) -> Any:
    raise StorageCorrupt(f"CBOR tag {tag.tag} in a stored value")


def _loads(data: bytes, what: str) -> Any:
    try:
        return cbor2.loads(data, tag_hook=_no_tags)
    except StorageCorrupt:
        raise
    except Exception as e:  # cbor2 raises several types on bad bytes
        raise StorageCorrupt(f"{what}: bad CBOR: {e}") from None


def _check_entry(e: Any) -> tuple[int, int, int, bytes]:
    """An Entry ``[index, term, kind, data]`` with the right types, or ValueError."""
    if not isinstance(e, list | tuple) or len(e) != 4:
        raise ValueError(f"entry must be [index, term, kind, data], got {e!r:.80}")
    index, term, kind, data = e
    for name, v in (("index", index), ("term", term), ("kind", kind)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"entry {name} must be a non-negative int, got {v!r}")
    if not 1 <= index <= MAX_INDEX:
        raise ValueError(f"entry index {index} out of range")
    if not isinstance(data, bytes):
        raise ValueError(f"entry data must be bytes, got {type(data).__name__}")
    return index, term, kind, data


class LogStorage:
    """The Raft log + hard state of one node in one RocksDB directory (see module doc)."""

    def __init__(self, path: str) -> None:
        """Open (creating if missing) the store at `path`; refuse an unknown format."""
        self.path = path
        self._opts = opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_paranoid_checks(True)
        # Recover a prefix of the batches: a torn (never acknowledged) WAL tail is dropped, and
        # nothing after a damaged record is replayed, so no batch is ever half-applied.
        opts.set_wal_recovery_mode(rocksdict.DBRecoveryMode.point_in_time())
        opts.set_keep_log_file_num(4)  # RocksDB's info LOG files, not the WAL
        self._sync = rocksdict.WriteOptions()  # the options of every mutation
        self._sync.sync = True
        self._wal: _WalSync | None = None  # set in "walsync" mode (module doc)
        try:
            self._db = rocksdict.Rdict(path, opts)
        except Exception as e:  # rocksdict raises a bare Exception (lock held, I/O error)
            raise StorageOpenError(f"cannot open log store {path!r}: {e}") from e
        self._broken: str | None = None
        # (compact index, compact term, last index) the store may hold after the failed batch:
        # what was durable before it, and what it would have made durable
        self._outcomes: list[tuple[int, int, int]] = []
        self._closed = False
        try:
            self._check_format()
            self._compact_index, self._compact_term = self._read_compact()
            self._last = self._scan_last()
            self._choose_sync_mode()
        except BaseException:
            self._db.close()
            raise

    @property
    def sync_mode(self) -> str:
        """``"walsync"`` or ``"rocksdb"``: how mutations are made durable (module doc)."""
        return "walsync" if self._wal is not None else "rocksdb"

    def _choose_sync_mode(self) -> None:
        """Use walsync unless refused by PRISN_LOG_SYNC=rocksdb, or RocksDB is seen to keep
        an unsynced WAL record in memory (the current WAL does not grow on a write)."""
        if os.environ.get("PRISN_LOG_SYNC", "walsync") == "rocksdb":
            return
        try:
            wal = _WalSync(self.path)
        except OSError as e:
            log.warning("log store: cannot follow the WAL files (%s); using RocksDB's own "
                        "synced writes", e)
            return
        nosync = rocksdict.WriteOptions()
        nosync.sync = False
        try:
            before = wal.size()
            wb = rocksdict.WriteBatch(raw_mode=True)
            wb.put(K_FORMAT, _dumps(FORMAT))  # the value it already has: changes nothing
            self._db.write(wb, nosync)
            wal.synced_after(before)
        except WalLost:
            log.warning("log store: RocksDB did not hand a WAL record to the OS at write "
                        "time; using its own synced writes")
            wal.close()
            return
        except BaseException:
            wal.close()
            raise
        self._wal = wal
        self._sync = nosync

    def _write_durable(self, wb: rocksdict.WriteBatch) -> None:
        """Write `wb` and return once it is on disk (either sync mode); raises on failure."""
        wal = self._wal
        if wal is None:
            self._db.write(wb, self._sync)
            return
        before = wal.size()
        self._db.write(wb, self._sync)
        wal.synced_after(before)

    # ------------------------------------------------------------------ opening
    def _check_format(self) -> None:
        raw = self._db.get(K_FORMAT)
        if raw is None:
            if self._any_key():
                raise StorageFormatError(
                    f"{self.path!r} holds data but no format key: not a prisn log store")
            wb = rocksdict.WriteBatch(raw_mode=True)
            wb.put(K_FORMAT, _dumps(FORMAT))
            self._write_durable(wb)
            return
        fmt = _loads(raw, "format key")
        if fmt != FORMAT:
            raise StorageFormatError(
                f"{self.path!r} has log store format {fmt!r}; this build reads only {FORMAT}")

    def _any_key(self) -> bool:
        it = self._db.iter()
        try:
            it.seek_to_first()
            return bool(it.valid())
        finally:
            del it  # a live iterator keeps the DB (and its lock) alive past close()

    def _read_compact(self) -> tuple[int, int]:
        raw = self._db.get(K_COMPACT)
        if raw is None:
            return 0, 0
        v = _loads(raw, "compaction point")
        if (not isinstance(v, list) or len(v) != 2
                or not all(isinstance(x, int) and x >= 0 for x in v)):
            raise StorageCorrupt(f"bad compaction point {v!r}")
        return v[0], v[1]

    def _entry_iter(self, fill_cache: bool = True) -> Any:
        ro = rocksdict.ReadOptions()
        ro.set_iterate_upper_bound(ENTRY_END)
        ro.fill_cache(fill_cache)  # type: ignore[call-arg]  # the stub lacks the argument
        return self._db.iter(ro)

    def _scan_last(self) -> int:
        it = self._entry_iter()
        try:
            it.seek_to_last()
            if it.valid() and bytes(it.key())[:1] == ENTRY_PREFIX:
                return _index_of(bytes(it.key()))
            return self._compact_index
        finally:
            del it

    # ------------------------------------------------------------------ reading
    def first_index(self) -> int:
        """Index of the first stored entry (compact index + 1; equals last+1 when empty)."""
        return self._compact_index + 1

    def last_index(self) -> int:
        """Index of the last stored entry (the compact index when the log is empty)."""
        return self._last

    def load(self) -> BootState:
        """Everything durable: hard state and all entries in order, checked for contiguity.

        Raises `StorageCorrupt` on a gap, an entry before the compaction point, or a bad
        value. Reads the whole log into memory (the raft core keeps it there anyway). The
        scan bypasses RocksDB's block cache: every block is read once here and never again
        through this handle's cache (later reads are single entries), so filling the cache
        would only pin up to its capacity (8 MB) of log blocks in RSS for nothing.
        """
        hard = self._db.get(K_HARD)
        term, vote, commit = 0, "", 0
        if hard is not None:
            h = _loads(hard, "hard state")
            if (not isinstance(h, dict) or not isinstance(h.get("term"), int)
                    or not isinstance(h.get("vote"), str) or not isinstance(h.get("commit"), int)):
                raise StorageCorrupt(f"bad hard state {h!r}")
            term, vote, commit = h["term"], h["vote"], h["commit"]
        membership = None
        snap = self._db.get(K_SNAP)
        if snap is not None:
            s = _loads(snap, "snapshot metadata")
            if isinstance(s, dict) and s.get("membership") is not None:
                try:
                    membership = Membership.from_wire(s["membership"])
                except (KeyError, TypeError, ValueError, AttributeError) as e:
                    raise StorageCorrupt(f"bad snapshot membership: {e!r}") from None
        entries: list[list[Any]] = []
        expected = self._compact_index + 1
        it = self._entry_iter(fill_cache=False)
        try:
            it.seek(ENTRY_PREFIX)
            while it.valid():
                key = bytes(it.key())
                index = _index_of(key)
                if index != expected:
                    raise StorageCorrupt(
                        f"log gap in {self.path!r}: expected entry {expected}, found {index}")
                v = _loads(bytes(it.value()), f"entry {index}")
                if (not isinstance(v, list) or len(v) != 3 or not isinstance(v[0], int)
                        or not isinstance(v[1], int) or not isinstance(v[2], bytes)):
                    raise StorageCorrupt(f"entry {index}: bad value {v!r:.80}")
                entries.append([index, v[0], v[1], v[2]])
                expected += 1
                it.next()
        finally:
            del it
        self._last = expected - 1
        return BootState(term=term, vote=vote, commit=commit, entries=entries,
                         snapshot_index=self._compact_index, snapshot_term=self._compact_term,
                         snapshot_membership=membership)

    # ------------------------------------------------------------------ writing
    def write(self, requests: Sequence[StoreAppend]) -> None:
        """Apply `requests` in order as ONE synced WriteBatch; return once it is on disk.

        Per request: delete entries >= `truncate_from` (if not 0), put `entries`; then the
        hard state of the LAST request. Raises ValueError (nothing written, store still
        usable) if a request would leave a gap or truncate compacted entries; any RocksDB
        error is re-raised and breaks the store (see `StorageBroken`).
        """
        if self._broken is not None:
            raise StorageBroken(f"log store broken by an earlier failed write: {self._broken}")
        if not requests:
            return
        wb = rocksdict.WriteBatch(raw_mode=True)
        last = self._last
        for req in requests:
            if req.truncate_from:
                if req.truncate_from <= self._compact_index:
                    raise ValueError(f"seq {req.seq}: truncate_from {req.truncate_from} is at "
                                     f"or below the compaction point {self._compact_index}")
                for index in range(req.truncate_from, last + 1):
                    wb.delete(entry_key(index))
                last = min(last, req.truncate_from - 1)
            for e in req.entries:
                index, term, kind, data = _check_entry(e)
                if not self._compact_index < index <= last + 1:
                    raise ValueError(f"seq {req.seq}: entry {index} would leave a gap or touch "
                                     f"compacted entries (log is {self._compact_index + 1}.."
                                     f"{last})")
                wb.put(entry_key(index), _dumps([term, kind, data]))
                last = max(last, index)
        final = requests[-1]
        wb.put(K_HARD, _dumps({"term": final.term, "vote": final.vote, "commit": final.commit}))
        self._commit(wb, (self._compact_index, self._compact_term, last))
        self._last = last

    def compact_prefix(self, upto_index: int) -> None:
        """Delete entries <= `upto_index` in one synced batch, remembering its (index, term).

        Only for use after a durable snapshot covers `upto_index`. No-op when
        `upto_index` is at or below the current compaction point; ValueError beyond the log.
        """
        if self._broken is not None:
            raise StorageBroken(f"log store broken by an earlier failed write: {self._broken}")
        if upto_index <= self._compact_index:
            return
        if upto_index > self._last:
            raise ValueError(f"cannot compact to {upto_index}: last index is {self._last}")
        raw = self._db.get(entry_key(upto_index))
        if raw is None:
            raise StorageCorrupt(f"entry {upto_index} missing inside the log")
        v = _loads(raw, f"entry {upto_index}")
        if not isinstance(v, list) or len(v) != 3 or not isinstance(v[0], int):
            raise StorageCorrupt(f"entry {upto_index}: bad value {v!r:.80}")
        wb = rocksdict.WriteBatch(raw_mode=True)
        wb.delete_range(entry_key(self._compact_index + 1), entry_key(upto_index + 1))
        wb.put(K_COMPACT, _dumps([upto_index, v[0]]))
        self._commit(wb, (upto_index, v[0], self._last))
        self._compact_index, self._compact_term = upto_index, v[0]

    def reset_to(self, index: int, term: int) -> bool:
        """An installed snapshot (`index`, `term`) becomes the start of the log, in one synced
        batch. If the stored log holds `index` with `term`, entries after it are kept (a
        plain `compact_prefix`); otherwise every entry is deleted and the log starts empty at
        `index + 1`. Returns True when the tail was kept. No-op at or below the current
        compaction point.
        """
        if self._broken is not None:
            raise StorageBroken(f"log store broken by an earlier failed write: {self._broken}")
        if index < 1:
            raise ValueError(f"cannot reset the log to {index}")
        if index <= self._compact_index:
            return True  # already covered (the core never installs below what it applied)
        if self._compact_index < index <= self._last:
            raw = self._db.get(entry_key(index))
            v = _loads(raw, f"entry {index}") if raw is not None else None
            if isinstance(v, list) and len(v) == 3 and v[0] == term:
                self.compact_prefix(index)
                return True
        wb = rocksdict.WriteBatch(raw_mode=True)
        if self._last > self._compact_index:
            wb.delete_range(entry_key(self._compact_index + 1), entry_key(self._last + 1))
        wb.put(K_COMPACT, _dumps([index, term]))
        self._commit(wb, (index, term, index))
        self._compact_index, self._compact_term = index, term
        self._last = index
        return False

    def _commit(self, wb: rocksdict.WriteBatch, landed: tuple[int, int, int]) -> None:
        """Write `wb` synced; on failure the store is broken and `landed` (compact index,
        compact term, last index) is the state it would have left, for `reopen` to accept."""
        try:
            self._write_durable(wb)
        except Exception as e:
            self._broken = f"{type(e).__name__}: {e}"
            self._outcomes = [(self._compact_index, self._compact_term, self._last), landed]
            raise

    @property
    def broken(self) -> str | None:
        """Why the store refuses mutations (None while it is usable)."""
        return self._broken

    def probe(self) -> None:
        """A tiny synced write that changes nothing (the format key, same value): proves the
        WAL can be appended and synced again. Raises like `write` (and breaks the store)."""
        if self._broken is not None:
            raise StorageBroken(f"log store broken by an earlier failed write: {self._broken}")
        wb = rocksdict.WriteBatch(raw_mode=True)
        wb.put(K_FORMAT, _dumps(FORMAT))
        self._commit(wb, (self._compact_index, self._compact_term, self._last))

    def reopen(self) -> None:
        """Close the handle and open the same path again (after a failed write: RocksDB
        refuses every write after a background error), then check the store (see module
        doc). On success the store is usable again and `broken` is None.

        Raises `StorageOpenError` (still broken; try again later) when the database cannot
        be opened or read, `StorageCorrupt` / `StorageFormatError` (do not retry: the store
        is not what this handle made durable) otherwise. Call from the owning thread only.
        """
        outcomes = self._outcomes or [(self._compact_index, self._compact_term, self._last)]
        if self._broken is None:
            self._broken = "reopening"  # refuse mutations until the checks passed
        self.close()
        try:
            self._db = rocksdict.Rdict(self.path, self._opts)
        except Exception as e:  # I/O error (no space for the table file of the WAL replay)
            raise StorageOpenError(f"cannot reopen log store {self.path!r}: {e}") from e
        self._closed = False
        try:
            self._check_format()
            ci, ct = self._read_compact()
            self._compact_index, self._compact_term = ci, ct
            self.load()  # contiguity and every value; sets self._last
        except StorageError:
            self.close()
            raise
        except Exception as e:  # a read I/O error: not known corrupt, retry later
            self.close()
            raise StorageOpenError(f"cannot read reopened log store {self.path!r}: {e}") from e
        found = (self._compact_index, self._compact_term, self._last)
        if found not in outcomes:
            self.close()
            raise StorageCorrupt(
                f"log store {self.path!r} after reopening holds compaction point "
                f"{found[0]} (term {found[1]}) and last index {found[2]}; expected one of "
                f"{outcomes} (synced data lost?)")
        try:
            self._choose_sync_mode()
        except Exception as e:  # noqa: BLE001 - the disk still refuses writes: retry later
            self.close()
            raise StorageOpenError(f"cannot write to reopened log store {self.path!r}: {e}") from e
        self._broken = None
        self._outcomes = []

    def close(self) -> None:
        """Close the handle (idempotent); the path can then be opened again in this process.

        After a failed write RocksDB's close reports the earlier error (it cannot flush) but
        still releases the database; that error is swallowed here."""
        if self._wal is not None:
            self._wal.close()
            self._wal = None
            self._sync = rocksdict.WriteOptions()
            self._sync.sync = True
        if not self._closed:
            self._closed = True
            try:
                self._db.close()
            except Exception:  # noqa: BLE001 - "Writer has previous error": nothing to save
                if self._broken is None:
                    raise
