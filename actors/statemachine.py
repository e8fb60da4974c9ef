"""The state-machine actor: applies committed entries to the deployments store, in order,
takes snapshots, and receives InstallSnapshot chunks.

Runs on its own thread; it is the only writer of the `DeploymentStore` (the API thread only
reads it). Invariants: entries arrive from raft in log order, each exactly once; an entry at or
below the applied index (a replay, or one covered by an installed snapshot) is skipped; after
every batch that applied something (or installed a snapshot) one `fsm.applied` goes to the API
(more when its results pass `APPLIED_BYTES`: each frame stays far under the frame cap)
carrying the new applied index and the results of the commands this node proposed in this
process: an entry at or below `boot_commit` (committed before the process started, replayed
from the log at boot) was proposed by an earlier incarnation whose request ids no waiter holds
(the API draws them from a random base per process), so its result is not sent.

Memory (a restart replays every entry since the snapshot, 100k+ at once): the frames of a
drained batch are decoded and applied ONE AT A TIME, each released before the next is decoded,
so the decoded entries of a batch never coexist (they would interleave with the rows the
replay builds and leave the heap fragmented), and replayed results (a deployment body each) are
neither collected nor encoded into an `Applied` frame the API would refuse as too large.

Snapshots (when a `SnapshotStore` is given):
- Every `threshold` applied entries, at the end of a batch, the actor takes a consistent copy
  of the store under its lock (references only: cheap) and hands it to its writer thread,
  which encodes it, writes the file atomically and sends `SnapshotTaken` to raft. Apply never
  waits for the encoding or the fsync; at most one snapshot is being written at a time (a
  threshold crossed meanwhile waits for the next batch after it finished).
- The snapshot's membership is the latest CONFIG entry applied (or the restored snapshot's),
  which is the configuration in force at that index; its term is the applied entry's term.
- `SnapChunk`s are written to the partial file in this thread; the last one is verified and
  its state parsed and checked (`DeploymentStore.prepare_restore`: a snapshot the store
  refuses is deleted and never becomes a snapshot file, the state is untouched and the leader
  starts over), renamed into place (durable), then the store installs the parsed state, and
  only then does raft hear `installed` (a crash before leaves the previous snapshot and log, a
  crash after leaves the new snapshot, which boot prefers). A snapshot at or below the applied
  index is installed as a file but not restored (the state never goes backwards).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cbor2
import zmq

from actors.base import Actor
from prisn.fsm.deployments import DeploymentStore
from prisn.messages import (
    Applied,
    Apply,
    EntryKind,
    Msg,
    SnapChunk,
    SnapChunkAck,
    SnapshotRequest,
    SnapshotTaken,
)
from prisn.raft.boot import Membership
from prisn.raft.core import decode_config
from prisn.snapshots import SnapshotError, SnapshotMeta, SnapshotStore
from prisn.storage_policy import SnapshotTimer
from transport.mailbox import Outbox

log = logging.getLogger("prisn.fsm")

# An `Applied` frame carries at most about this many bytes of results (a result is the stored
# deployment, about the size of its command): a batch that drained many Apply frames of this
# node's writes (64 KiB specs, an fsm that fell behind during a snapshot) sends several frames,
# each well under the 16 MiB frame cap the API's decoder enforces.
APPLIED_BYTES = 4 << 20
RESULT_OVERHEAD = 256  # per result: id, timestamps and the other small fields


@dataclass(frozen=True)
class _Job:
    index: int
    term: int
    membership: Membership | None
    encode: Callable[[], bytes]
    started: float


class StateMachineActor(Actor):
    def __init__(self, ctx: zmq.Context, node_id: str, store: DeploymentStore, *,
                 snapshots: SnapshotStore | None = None, threshold: int = 8192,
                 min_interval: float = 0.0,
                 snapshot_index: int = 0, snapshot_term: int = 0,
                 membership: Membership | None = None, boot_commit: int = 0,
                 observe_snapshot: Callable[[float], None] | None = None, **kw) -> None:
        super().__init__("fsm", ctx, node_id, **kw)
        self.observe_snapshot = observe_snapshot  # writer thread: seconds of each snapshot
        self.store = store
        # entries <= boot_commit were committed before this process started: no result
        self.boot_commit = boot_commit
        self.snapshots = snapshots
        self.threshold = max(1, threshold)
        # Like hashicorp/raft's SnapshotInterval: a full snapshot costs CPU in proportion to
        # the whole state, so under sustained writes take one at most every `min_interval`
        # seconds (the log grows by threshold-or-more entries in between).
        self.min_interval = max(0.0, min_interval)
        # when to snapshot: a pure core (prisn.storage_policy) fed this thread's clock
        self._timer = SnapshotTimer(self.threshold, self.min_interval, time.monotonic())
        self._term = snapshot_term  # term of the last applied entry
        self._membership = membership  # configuration in force at the applied index
        self._writer: _SnapshotWriter | None = None
        # Held by this thread while it changes the store together with `_term` and
        # `_membership` (one Apply message, one snapshot install), and by `capture` (any
        # thread): a capture sees the three at the same applied index.
        self._capture_lock = threading.Lock()
        # metrics (written by this thread or the writer thread; read from any thread)
        self.snapshot_index = snapshot_index  # newest durable snapshot
        self.snapshot_term = snapshot_term
        self.snapshot_size = 0
        self.snapshot_duration = 0.0  # seconds for the last local snapshot (copy to durable)
        self.snapshots_taken = 0
        self.snapshot_failures = 0
        self.installs_received = 0
        self.install_duration = 0.0  # seconds from the last chunk to restored
        self.chunks_received = 0

    def on_start(self) -> None:
        if self.snapshots is not None:
            self._writer = _SnapshotWriter(self)
            self._writer.start()

    def on_stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def on_messages(self, msgs: list[Msg]) -> None:
        batch = _Batch()
        for m in msgs:
            self._handle(m, batch)
        self._end_batch(batch)

    def _inbox_batch(self, frames: list[bytes]) -> None:
        """A drained batch, decoded and handled frame by frame (module doc: Memory); each
        frame and its message are released before the next frame is decoded."""
        batch = _Batch()
        decode = self.decoder.try_decode
        for k in range(len(frames)):
            m = decode(frames[k])
            frames[k] = b""
            if m is not None:
                self._handle(m, batch)
                m = None
        self._end_batch(batch)

    def _handle(self, m: Msg, batch: _Batch) -> None:
        if isinstance(m, Apply):
            with self._capture_lock:
                self._apply(m, batch)
        elif isinstance(m, SnapChunk):
            if self._on_chunk(m):
                batch.applied = True
        elif isinstance(m, SnapshotRequest):
            self._timer.force(max(self._timer.force_at, m.index))

    def capture(self) -> tuple[int, int, Membership | None, Callable[[], bytes]]:
        """(applied index, its term, the membership in force there, encoder) of the applied
        state, consistent with each other; cheap (references only, see
        `DeploymentStore.snapshot_capture`). Any thread (the API's online backup); the
        encoder may run in any thread."""
        with self._capture_lock:
            index, encode = self.store.snapshot_capture()
            return index, self._term, self._membership, encode

    def _apply(self, m: Apply, batch: _Batch) -> None:
        """Apply one Apply message's entries (under `_capture_lock`)."""
        store = self.store
        me = self.node_id
        quiet = self.boot_commit
        results = batch.results
        for entry in m.entries:
            index, term, kind, data = entry
            if index <= store.applied_index:
                continue
            out = store.apply(index, kind, data)
            self._term = term
            batch.applied = True
            if kind == EntryKind.CONFIG:
                try:
                    self._membership = decode_config(data)
                except ValueError as e:  # raft refuses such entries; keep the old
                    log.error("fsm: undecodable configuration at %d: %s", index, e)
            if out is not None and index > quiet:
                origin, rid = store.last_origin
                if origin == me:
                    results.append([rid, out[0], out[1]])
                    batch.size += len(data) + RESULT_OVERHEAD
                    if batch.size >= APPLIED_BYTES:
                        self._send_applied(batch)
                        results = batch.results

    def _end_batch(self, batch: _Batch) -> None:
        if batch.applied:
            self._send_applied(batch)
        self._maybe_snapshot()

    def _send_applied(self, batch: _Batch) -> None:
        """Tell the API the applied index and the results gathered so far; start afresh."""
        self.send("api", Applied(src="fsm", dst="api", index=self.store.applied_index,
                                 results=batch.results))
        batch.results = []
        batch.size = 0
        batch.applied = False

    # ------------------------------------------------------------------ local snapshots
    def _maybe_snapshot(self) -> None:
        w = self._writer
        if w is None:
            return
        if not self._timer.decide(applied=self.store.applied_index,
                                  snapshot_index=self.snapshot_index, busy=w.busy,
                                  now=time.monotonic()):
            return
        t0 = time.perf_counter()
        index, encode = self.store.snapshot_capture()
        w.submit(_Job(index, self._term, self._membership, encode, t0))

    def snapshot_written(self, job: _Job, size: int, seconds: float) -> None:
        """Writer thread: record metrics (plain attribute writes)."""
        if job.index > self.snapshot_index:
            self.snapshot_index = job.index
            self.snapshot_term = job.term
            self.snapshot_size = size
        self.snapshot_duration = seconds
        self.snapshots_taken += 1
        if self.observe_snapshot is not None:
            try:
                self.observe_snapshot(seconds)
            except Exception:  # a metrics bug must not fail the snapshot
                log.exception("fsm: observe_snapshot failed")

    # ------------------------------------------------------------------ InstallSnapshot
    def _on_chunk(self, m: SnapChunk) -> bool:
        """Write one chunk; on the last, install and restore. True if the store changed."""
        snaps = self.snapshots
        if snaps is None:
            self.send("raft", SnapChunkAck(src="fsm", dst="raft", snap_id=m.snap_id,
                                           offset=m.offset, next_offset=0,
                                           error="snapshots disabled"))
            return False
        self.chunks_received += 1
        try:
            nxt = snaps.receive_chunk(m.snap_id, m.offset, m.data)
        except (OSError, SnapshotError) as e:
            log.error("fsm: cannot write snapshot chunk at %d: %s", m.offset, e)
            self.send("raft", SnapChunkAck(src="fsm", dst="raft", snap_id=m.snap_id,
                                           offset=m.offset, next_offset=0, error=str(e)))
            return False
        if nxt < m.size:
            self.send("raft", SnapChunkAck(src="fsm", dst="raft", snap_id=m.snap_id,
                                           offset=m.offset, next_offset=nxt))
            return False
        t0 = time.perf_counter()
        installs: list[Callable[[], None]] = []

        def check(meta: SnapshotMeta, data: bytes) -> None:
            # before the rename: a state the store refuses never becomes a snapshot file
            if meta.index > self.store.applied_index:
                try:
                    installs.append(self.store.prepare_restore(data))
                except ValueError as e:
                    raise SnapshotError(f"state machine refused the snapshot: {e}") from None

        try:
            meta = snaps.finish_receive(m.snap_id, check=check)
        except (OSError, SnapshotError) as e:
            log.error("fsm: received snapshot refused (the leader starts over): %s", e)
            self.send("raft", SnapChunkAck(src="fsm", dst="raft", snap_id=m.snap_id,
                                           offset=m.offset, next_offset=0, error=str(e)))
            return False
        restored = bool(installs)
        if restored:
            with self._capture_lock:
                installs[0]()  # the file is durably in place: now the state (cannot fail)
                self._term = meta.term
                self._membership = meta.membership
            self.installs_received += 1
            self.install_duration = time.perf_counter() - t0
            log.info("fsm: installed snapshot %d (term %d, %d bytes) in %.3f s", meta.index,
                     meta.term, meta.size, self.install_duration)
        if meta.index > self.snapshot_index:
            self.snapshot_index, self.snapshot_term = meta.index, meta.term
            self.snapshot_size = meta.size
        self.send("raft", SnapChunkAck(
            src="fsm", dst="raft", snap_id=m.snap_id, offset=m.offset, next_offset=meta.size,
            installed=True, index=meta.index, term=meta.term,
            membership=meta.membership.to_wire() if meta.membership else {},
            path=meta.path, size=meta.size))
        return restored


class _Batch:
    """What one drained batch produced since its last `Applied`: results to send, about how
    many bytes they encode to, and whether anything applied."""

    __slots__ = ("results", "size", "applied")

    def __init__(self) -> None:
        self.results: list = []
        self.size = 0
        self.applied = False


class _SnapshotWriter(threading.Thread):
    """The fsm actor's helper thread: encodes and writes one snapshot at a time, then tells
    raft through its own outbox (its own sockets, created and closed in this thread)."""

    def __init__(self, owner: StateMachineActor) -> None:
        super().__init__(name=f"prisn-snapwriter-{owner.node_id}", daemon=True)
        self.owner = owner
        self._q: queue.Queue[_Job | None] = queue.Queue()
        self._busy = threading.Event()

    @property
    def busy(self) -> bool:
        return self._busy.is_set()

    def submit(self, job: _Job) -> None:
        self._busy.set()
        self._q.put(job)

    def close(self) -> None:
        self._q.put(None)
        self.join(timeout=60)

    def run(self) -> None:
        owner = self.owner
        outbox = Outbox(owner.ctx, owner.node_id, closing=owner.closing)
        try:
            while True:
                job = self._q.get()
                if job is None:
                    return
                try:
                    self._write(job, outbox)
                except Exception:  # noqa: BLE001 - a failed snapshot only delays compaction
                    owner.snapshot_failures += 1
                    log.exception("fsm: snapshot at %d failed", job.index,
                                  extra={"event": "snapshot_failed", "index": job.index})
                finally:
                    self._busy.clear()
        finally:
            outbox.close()

    def _write(self, job: _Job, outbox: Outbox) -> None:
        owner = self.owner
        assert owner.snapshots is not None
        tmp, size, digest = _in_child(
            lambda: owner.snapshots.write_tmp(job.index, job.term, job.membership, job.encode()))
        meta = owner.snapshots.publish_tmp(tmp, job.index, job.term, job.membership, size,
                                           digest)
        seconds = time.perf_counter() - job.started
        owner.snapshot_written(job, meta.size, seconds)
        log.info("fsm: snapshot %d (term %d, %d bytes) written in %.3f s", meta.index,
                 meta.term, meta.size, seconds,
                 extra={"event": "snapshot_written", "index": meta.index, "term": meta.term,
                        "bytes": meta.size, "seconds": round(seconds, 3)})
        outbox.send("raft", SnapshotTaken(src="fsm", dst="raft", index=meta.index,
                                          term=meta.term, snap_id=meta.checksum,
                                          path=meta.path, size=meta.size))


def _in_child(work: Callable[[], tuple[Path, int, str]]) -> tuple[Path, int, str]:
    """Run `work` (encode + write a snapshot file) in a forked child and return its result.

    Encoding a whole state takes seconds at 100k deployments and holds the GIL; in a child
    it runs on the other core while this process keeps serving. The child sees the state
    copied on write at the fork, touches only Python objects and its own file (no lock, no
    ZeroMQ, no RocksDB) and leaves with os._exit. This thread waits for it in a blocking
    read, which releases the GIL. Where fork is unavailable, `work` runs here."""
    if not hasattr(os, "fork"):
        return work()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(r)
            tmp, size, digest = work()
            os.write(w, cbor2.dumps([str(tmp), size, digest]))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        payload = f.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not payload:
        raise RuntimeError(f"snapshot child exited with status {status}")
    tmp, size, digest = cbor2.loads(payload)
    return Path(tmp), int(size), str(digest)
