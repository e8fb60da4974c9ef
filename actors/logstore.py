"""The logstore actor: the only RocksDB writer of a node (group commit, persist before speak).

Invariants:
- Group commit: every `StoreAppend` of one drained batch goes into ONE `LogStorage.write`
  (one synced WriteBatch), answered by ONE `StoreSynced(seq=<highest seq>)` to "raft".
  Answers are cumulative: StoreSynced(s) means every request with seq <= s is on disk.
- Never acknowledge an unsynced write: `StoreSynced` is sent only after `write` returned.
- A failed write is answered with `StoreFailed(seq=<highest seq>)` and the actor keeps running,
  but stays failed: because answers are cumulative, a later success would falsely cover the
  failed seqs, so every later StoreAppend is answered `StoreFailed` without touching the disk.
  The raft core decides what to do (stopping the node and reloading from disk is the only
  clean recovery; see `LogStorage` on broken stores).
- `StoreCompact` / `StoreReset` (snapshots) keep their place in the message order: the appends
  before one are written (and answered) first, then the compaction/reset runs as its own
  synced batch. They are not answered; a failure is a `StoreFailed` like a failed append.
- The actor does not own the `LogStorage`: whoever opened it closes it after the actor ended.
All hooks run in this actor's own thread.
"""

from __future__ import annotations

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
    StoreReset,
    StoreSynced,
)
from prisn.storage import LogStorage

log = logging.getLogger("prisn.logstore")

FsyncObserver = Callable[[float, int], None]  # (seconds for the synced write, entries in it)


class LogStoreActor(Actor):
    """Shell around `LogStorage`: batch, write once, answer raft once (see module doc)."""

    def __init__(self, storage: LogStorage, ctx: zmq.Context, node_id: str,
                 observe_fsync: FsyncObserver | None = None,
                 on_failure: FailureHook | None = None) -> None:
        super().__init__("logstore", ctx, node_id, on_failure=on_failure)
        self.storage = storage
        self.observe_fsync = observe_fsync
        self.failed: str | None = None  # reason of the first failed write; sticky
        # Counters (read from any thread for metrics; written only by this actor's thread).
        self.writes = 0  # successful synced writes
        self.requests = 0  # StoreAppend requests made durable
        self.entries = 0  # entries made durable
        self.write_failures = 0  # batches answered StoreFailed
        self.ignored = 0  # messages of a type this actor does not handle
        self.compactions = 0  # StoreCompact/StoreReset done
        self.compacted_to = storage.first_index() - 1  # the log's compaction point
        self._last_seq = 0  # highest StoreAppend seq seen (what a StoreFailed must cover)
        self._last_warn = 0.0

    def on_messages(self, msgs: list[Msg]) -> None:
        """Write every StoreAppend of the batch in one synced write, then answer once."""
        appends: list[StoreAppend] = []
        stop = False
        for m in msgs:
            if isinstance(m, StoreAppend):
                appends.append(m)
                self._last_seq = max(self._last_seq, m.seq)
            elif isinstance(m, StoreCompact | StoreReset):
                if appends:
                    self._persist(appends)
                    appends = []
                self._compact(m)
            elif isinstance(m, Stop):
                stop = True
            else:
                self.ignored += 1
                self._warn("ignored a %s message (%d so far)", m.T, self.ignored)
        if appends:
            self._persist(appends)
        if stop:
            self.stop()

    def _persist(self, appends: list[StoreAppend]) -> None:
        seq = max(a.seq for a in appends)
        if self.failed is not None:
            self.write_failures += 1
            self.send("raft", StoreFailed(seq=seq, reason=f"log store failed earlier: "
                                                          f"{self.failed}"))
            return
        n_entries = sum(len(a.entries) for a in appends)
        t0 = time.perf_counter()
        try:
            self.storage.write(appends)
        except Exception as e:  # disk full, I/O error, a request that would leave a gap
            self.failed = f"{type(e).__name__}: {e}"
            self.write_failures += 1
            log.error("logstore: write of %d requests (seq <= %d, %d entries) failed: %s",
                      len(appends), seq, n_entries, self.failed)
            self.send("raft", StoreFailed(seq=seq, reason=self.failed))
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
        if self.failed is not None:
            return  # already answered StoreFailed; the node is stopping
        t0 = time.perf_counter()
        try:
            if isinstance(m, StoreCompact):
                self.storage.compact_prefix(m.upto)
            else:
                self.storage.reset_to(m.index, m.term)
        except Exception as e:
            self.failed = f"{type(e).__name__}: {e}"
            self.write_failures += 1
            log.error("logstore: %s failed: %s", m.T, self.failed)
            self.send("raft", StoreFailed(seq=self._last_seq, reason=self.failed))
            return
        self.compactions += 1
        self.compacted_to = self.storage.first_index() - 1
        log.info("logstore: %s done in %.1f ms; log now starts at %d", m.T,
                 (time.perf_counter() - t0) * 1000, self.compacted_to + 1)

    def _warn(self, fmt: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_warn > 1.0:
            self._last_warn = now
            log.warning("logstore: " + fmt, *args)
