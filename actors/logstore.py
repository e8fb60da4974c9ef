"""The logstore actor: the only RocksDB writer of a node (group commit, persist before speak).

Invariants:
- Group commit: every `StoreAppend` of one drained batch goes into ONE `LogStorage.write`
  (one synced WriteBatch), answered by ONE `StoreSynced(seq=<highest seq>)` to "raft".
  Answers are cumulative: StoreSynced(s) means every request with seq <= s is on disk.
- Never acknowledge an unsynced write: `StoreSynced` is sent only after `write` returned.
- `StoreCompact` / `StoreReset` (snapshots) keep their place in the message order: the appends
  before one are written (and answered) first, then the compaction/reset runs as its own
  synced batch. They are not answered; a failure is a `StoreFailed` like a failed append.

Disk faults (a full disk, an I/O error), one cycle per failure:
1. FAILED. A failed write (or compaction) is answered `StoreFailed(seq, reason)` once. From
   then on every `StoreAppend` is void: not written, not answered (a later success would
   otherwise be a cumulative answer covering the failed seqs). `StoreCompact`/`StoreReset`
   are deferred, in order (the failed one too: both are idempotent). The actor keeps
   running and retries with a bounded backoff (`retry_min` doubling to `retry_max`): reopen
   the store (`LogStorage.reopen`: RocksDB refuses writes after a background error until it
   is closed and opened again) and a small synced probe write.
2. RECOVERED. Once reopen and probe succeed it sends `StoreRecovered` and stops retrying, but
   requests stay void: those still in the inbox were sent before raft knew of the failure.
3. `StoreResume` from raft ends the cycle: the deferred operations run, then requests are
   written again. Raft sends its unsynced suffix and hard state right after it.
- A store that reopens as something other than what was made durable (`StorageCorrupt`,
  `StorageFormatError`) is unrecoverable: `StoreFatal` to raft (the node exits 1) and no
  more retries.
- The actor does not own the `LogStorage`: whoever opened it closes it after the actor ended.
All hooks run in this actor's own thread.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable

import zmq

from actors.base import Actor, FailureHook
from prisn.messages import (
    Msg,
    Stop,
    StoreAppend,
    StoreCompact,
    StoreFailed,
    StoreFatal,
    StoreRecovered,
    StoreReset,
    StoreResume,
    StoreSynced,
)
from prisn.storage import LogStore, StorageCorrupt, StorageFormatError
from prisn.storage_policy import RetryPolicy

log = logging.getLogger("prisn.logstore")

FsyncObserver = Callable[[float, int], None]  # (seconds for the synced write, entries in it)
NO_SPACE = "no space left on device"


def describe(exc: BaseException) -> str:
    """A short reason for raft and the API: "no space left on device" for a full disk
    (RocksDB raises a bare Exception with the OS text), else the exception's type and text."""
    text = str(exc)
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or NO_SPACE in text.lower():
        return NO_SPACE
    return f"{type(exc).__name__}: {text}"


class LogStoreActor(Actor):
    """Shell around a `LogStore` (RocksDB's `LogStorage`, or the in-memory twin): batch, write once, answer raft once (see module doc)."""

    def __init__(self, storage: LogStore, ctx: zmq.Context, node_id: str,
                 observe_fsync: FsyncObserver | None = None,
                 on_failure: FailureHook | None = None, *, retry_min: float = 0.1,
                 retry_max: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("logstore", ctx, node_id, on_failure=on_failure)
        self.storage = storage
        self.observe_fsync = observe_fsync
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.clock = clock
        self.failed: str | None = None  # reason of the current failure (None: writing)
        self.recovered = False  # FAILED -> RECOVERED: probe succeeded, waiting for StoreResume
        self.fatal: str | None = None  # the store cannot be trusted: no more retries
        # Counters (read from any thread for metrics; written only by this actor's thread).
        self.writes = 0  # successful synced writes
        self.requests = 0  # StoreAppend requests made durable
        self.entries = 0  # entries made durable
        self.write_failures = 0  # failed writes/compactions (each answered StoreFailed)
        self.voided = 0  # StoreAppends dropped between a failure and StoreResume
        self.retries = 0  # failed recovery attempts
        self.recoveries = 0  # StoreRecovered sent
        self.ignored = 0  # messages of a type this actor does not handle
        self.compactions = 0  # StoreCompact/StoreReset done
        self.compacted_to = storage.first_index() - 1  # the log's compaction point
        self._last_seq = 0  # highest StoreAppend seq seen (what a StoreFailed must cover)
        self._deferred: list[StoreCompact | StoreReset] = []
        self._retry = RetryPolicy(retry_min, retry_max)  # when to reopen + probe (pure)
        self._last_warn = 0.0

    # ------------------------------------------------------------------ hooks
    def on_messages(self, msgs: list[Msg]) -> None:
        """Write every StoreAppend of the batch in one synced write, then answer once."""
        appends: list[StoreAppend] = []
        stop = False
        for m in msgs:
            if isinstance(m, StoreAppend):
                self._last_seq = max(self._last_seq, m.seq)
                if self.failed is None:
                    appends.append(m)
                else:
                    self.voided += 1
            elif isinstance(m, StoreCompact | StoreReset):
                if appends:
                    self._persist(appends)
                    appends = []
                if self.failed is None:
                    self._compact(m)
                else:
                    self._deferred.append(m)
            elif isinstance(m, StoreResume):
                if appends:
                    self._persist(appends)
                    appends = []
                self._resume(m)
            elif isinstance(m, Stop):
                stop = True
            else:
                self.ignored += 1
                self._warn("ignored a %s message (%d so far)", m.T, self.ignored)
        if appends:
            self._persist(appends)
        self._maybe_retry()
        if stop:
            self.stop()

    def on_idle(self) -> None:
        self._maybe_retry()

    # ------------------------------------------------------------------ writing
    def _persist(self, appends: list[StoreAppend]) -> None:
        seq = max(a.seq for a in appends)
        n_entries = sum(len(a.entries) for a in appends)
        t0 = time.perf_counter()
        try:
            self.storage.write(appends)
        except Exception as e:  # disk full, I/O error, a request that would leave a gap
            self._fail(seq, e, f"write of {len(appends)} requests (seq <= {seq}, "
                               f"{n_entries} entries)")
            return
        elapsed = time.perf_counter() - t0
        self.writes += 1
        self.requests += len(appends)
        self.entries += n_entries
        self.send("raft", StoreSynced(seq=seq))
        if self.observe_fsync is not None:
            try:
                self.observe_fsync(elapsed, n_entries)
            except Exception:  # a metrics bug must not stop the node's log
                log.exception("logstore: observe_fsync failed")

    def _compact(self, m: StoreCompact | StoreReset) -> None:
        t0 = time.perf_counter()
        try:
            if isinstance(m, StoreCompact):
                self.storage.compact_prefix(m.upto)
            else:
                self.storage.reset_to(m.index, m.term)
        except Exception as e:
            self._deferred.append(m)  # idempotent: run it again after the recovery
            self._fail(self._last_seq, e, m.T)
            return
        self.compactions += 1
        self.compacted_to = self.storage.first_index() - 1
        log.info("logstore: %s done in %.1f ms; log now starts at %d", m.T,
                 (time.perf_counter() - t0) * 1000, self.compacted_to + 1)

    # ------------------------------------------------------------------ failure cycle
    def _fail(self, seq: int, exc: BaseException, what: str) -> None:
        """Enter FAILED: answer StoreFailed once, void later requests, schedule a retry."""
        reason = describe(exc)
        self.failed = reason
        self.recovered = False
        self.write_failures += 1
        log.error("logstore: %s failed: %s: %s; writes are refused until the store can be "
                  "written again (retrying every %.1f-%.1f s)", what, type(exc).__name__, exc,
                  self.retry_min, self.retry_max,
                  extra={"event": "log_write_failed", "error": reason})
        self.send("raft", StoreFailed(seq=seq, reason=reason))
        self._retry.failed(self.clock())

    def _maybe_retry(self) -> None:
        """FAILED and the backoff expired: reopen + probe; RECOVERED on success."""
        if self.failed is None or self.recovered or self.fatal is not None:
            return
        now = self.clock()
        if not self._retry.due(now):
            return
        try:
            self.storage.reopen()
            self.storage.probe()
        except (StorageCorrupt, StorageFormatError) as e:
            self.fatal = f"{type(e).__name__}: {e}"
            self._retry.fatal()
            log.critical("logstore: the log store cannot be trusted after reopening: %s",
                         self.fatal)
            self.send("raft", StoreFatal(reason=self.fatal))
            return
        except Exception as e:  # still full / still failing: back off
            self.retries += 1
            self._retry.attempt_failed(now)
            self._warn("still cannot write the log (%d attempts): %s", self.retries, describe(e))
            return
        self.recovered = True
        self._retry.recovered()
        self.recoveries += 1
        self.compacted_to = self.storage.first_index() - 1
        log.warning("logstore: the log can be written again (after: %s); resuming", self.failed)
        self.send("raft", StoreRecovered(reason=self.failed))

    def _resume(self, m: StoreResume) -> None:
        """Raft knows of the failure and the recovery: run deferred operations, write again."""
        if self.failed is None:
            return  # nothing to resume (a repeated StoreResume)
        if not self.recovered:
            log.error("logstore: StoreResume(seq=%d) before the store recovered; ignored",
                      m.seq)
            return
        self.failed = None
        self.recovered = False
        deferred, self._deferred = self._deferred, []
        for k, op in enumerate(deferred):
            self._compact(op)
            if self.failed is not None:  # failed again: keep the rest for the next resume
                self._deferred.extend(deferred[k + 1:])
                return
        log.info("logstore: resumed at seq %d (%d requests were void)", m.seq, self.voided)

    def _warn(self, fmt: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_warn > 1.0:
            self._last_warn = now
            log.warning("logstore: " + fmt, *args)
