"""A seeded, deterministic simulator of N RaftCores with invariant checks after every step.

Everything random comes from one `random.Random(seed)`; time is an integer (10 units per
tick). The simulated network drops, delays, duplicates, reorders and partitions peer
messages; the simulated logstore syncs StoreAppends after a random delay, in order, and a
crash loses every unsynced write (restart builds BootState from what was synced). Clients
propose commands and ask for read indexes.

Checked after every step (a violation raises `SimFailure` with the seed and a trace tail):
- election safety: at most one leader per term (§5.2);
- log matching (§5.3): each (index, term) has one content and one predecessor term, checked
  on every entry as it enters a log (all entries enter through StoreAppend or boot);
- leader completeness (§5.4): a new leader's log holds every entry committed so far;
- commit: monotonic per node incarnation; no two nodes commit different terms at an index;
- state-machine safety: Apply in order, contiguous, identical entry at each index everywhere;
- no command applied twice; acknowledged (applied on its origin) commands are never lost;
- ReadIndex: a read index covers every command acknowledged before the read was issued.
Liveness after healing: a leader known to every live voter within a bound, and a new
command commits and applies everywhere.

Disk faults (`SimConfig.disk_fail_rate`): a node's disk starts failing for a random while;
the next sync of its logstore fails instead: a random prefix of the unsynced writes lands
(a failed write's outcome is unknown), the rest is void, StoreFailed goes to the core.
Modelled like `actors/logstore.py`: until the core's StoreResume every later StoreAppend is
void and StoreCompact/StoreReset are deferred; once the disk works again StoreRecovered goes
to the core. The disk is `prisn.memstore`'s twin of the RocksDB store (same contract, see
tests/unit/test_storage_contract.py): a failure breaks it, and the logstore's retry core
(`prisn.storage_policy.RetryPolicy`, `SimConfig.disk_retry`) schedules reopen + probe
attempts until the disk has room again; local snapshots are timed by the state machine's
`SnapshotTimer`. Extra checks: a core with a broken disk never leads and never emits a
StoreAppend; StoreResume only after StoreRecovered; the core's re-sent suffix must fit the
disk as it really is (the twin refuses a write that would leave a gap), and right after a
StoreResume the disk plus the announced writes must equal the core's in-memory log.

Snapshots (`SimConfig.snapshots`): each node's modelled state machine is a hash chain over the
entries it applied; it snapshots itself every random threshold of applied entries (a real
snapshot file image, written after a random delay, latest 2 kept), the core compacts its log
and disk, and followers that fall behind receive InstallSnapshot chunks over the same faulty
network (loss, duplication, reordering), written to a partial file that survives a crash with
a random tail lost or a byte flipped. Boot assembles the log and the newest snapshot with the
server's own `assemble_boot`. Extra checks: the state-machine hash at every index is the same
on every node, including after a snapshot install or a restart from a snapshot; an entry at
or below a restored snapshot is never applied; no node compacts past its snapshot.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import cbor2

from prisn.memstore import MemoryDisk, MemoryLogStorage
from prisn.messages import (
    AddNode,
    AppendEntries,
    AppendResponse,
    Apply,
    EntryKind,
    ForwardPropose,
    InstallSnapshot,
    InstallSnapshotResponse,
    Msg,
    Propose,
    ReadIndex,
    RemoveNode,
    Reply,
    SnapChunk,
    SnapChunkAck,
    SnapSend,
    SnapSendFailed,
    SnapshotTaken,
    StoreAppend,
    StoreCompact,
    StoreFailed,
    StoreRecovered,
    StoreReset,
    StoreResume,
    StoreSynced,
    Tick,
    TransferLeadership,
    VoteRequest,
    VoteResponse,
)
from prisn.raft.boot import BootState, Membership
from prisn.raft.core import RaftCore, RaftOptions, decode_config
from prisn.snapshots import BootError, SnapshotMeta, assemble_boot, encode_snapshot
from prisn.storage import StorageBroken, StorageError, StorageOpenError
from prisn.storage_policy import RetryPolicy, SnapshotTimer

UNITS_PER_TICK = 10


class SimFailure(AssertionError):
    """An invariant violation (or liveness failure) in a simulation run."""


@dataclass
class SimConfig:
    nodes: int = 3
    formation: str = "static"  # "static": initial_members; "join": n1 bootstraps, others join
    ticks: int = 600  # chaos phase length
    heal_ticks: int = 400  # liveness bound after healing
    drop: float = 0.05
    dup: float = 0.03
    max_delay: int = 25  # units (a tick is 10)
    sync_delay: int = 15  # units
    crash_rate: float = 0.01  # per tick
    restart_after: tuple[int, int] = (20, 150)  # ticks
    partition_rate: float = 0.01  # per tick
    heal_rate: float = 0.015  # per tick while partitioned
    propose_rate: float = 0.5  # per tick
    burst: int = 1  # commands per proposal (one client sending several at once)
    read_rate: float = 0.15  # per tick
    membership_rate: float = 0.0  # per tick: remove or re-add a node
    max_down: int = -1  # max nodes down at once (-1: minority)
    disk_fail_rate: float = 0.0  # per tick: a node's disk starts failing
    disk_fail_for: tuple[int, int] = (5, 80)  # ticks until it can be written again
    snapshots: tuple[int, int] | None = None  # per-node snapshot threshold range (None: off)
    fsm_delay: int = 30  # units: snapshot writes and chunk answers take up to this long
    trailing_logs: int = -1  # with snapshots: entries kept behind a snapshot (-1: random)
    snapshot_interval: int = 0  # units: the fsm's min_interval between snapshots
    disk_retry: tuple[int, int] = (UNITS_PER_TICK, 8 * UNITS_PER_TICK)  # logstore backoff
    opts: RaftOptions = field(default_factory=lambda: RaftOptions(
        heartbeat_ticks=3, election_ticks=10, max_append_entries=16, max_inflight=8,
        pending_ticks=200))


class Disk:
    """The durable log of one node: the in-memory twin of the RocksDB store
    (`prisn.memstore.MemoryLogStorage`, held to the same contract as `LogStorage` by
    tests/unit/test_storage_contract.py) over a `MemoryDisk` that survives crashes. Entries
    start after the compaction point (`start`, `start_term`). A write the store refuses (a
    gap, compacted entries) is a `SimFailure`: the core sent what the real store refuses."""

    def __init__(self, mem: MemoryDisk | None = None) -> None:
        self.store = MemoryLogStorage(mem)
        self._entries: list[list] = []
        self._version = -1

    @property
    def mem(self) -> MemoryDisk:
        return self.store.disk

    @property
    def term(self) -> int:
        return self.mem.hard[0]

    @property
    def vote(self) -> str:
        return self.mem.hard[1]

    @property
    def commit(self) -> int:
        return self.mem.hard[2]

    @property
    def start(self) -> int:
        return self.mem.compact[0]

    @property
    def start_term(self) -> int:
        return self.mem.compact[1]

    @property
    def last(self) -> int:
        return self.start + len(self.entries)  # the stored log is contiguous

    @property
    def entries(self) -> list[list]:
        """The stored entries ``[index, term, kind, data]`` in order (cached per version)."""
        if self._version != self.mem.changes:
            ents = self.mem.entries
            self._entries = [[i, *ents[i]] for i in sorted(ents)]
            self._version = self.mem.changes
        return self._entries

    @entries.setter
    def entries(self, value: list[list]) -> None:
        """Test setup: the stored entries become `value` (contiguous after `start`)."""
        self.mem.entries = {e[0]: (e[1], e[2], bytes(e[3])) for e in value}
        self.mem.changes += 1
        self.store = MemoryLogStorage(self.mem)

    def copy(self) -> Disk:
        """An independent disk with the same contents (the checker's mirrors)."""
        return Disk(self.mem.copy())

    def write(self, sa: StoreAppend) -> None:
        try:
            self.store.write([sa])
        except ValueError as e:
            raise SimFailure(f"disk: {e}") from None

    def apply_op(self, op: Msg) -> None:
        if type(op) is StoreAppend:
            self.write(op)  # type: ignore[arg-type]
        elif type(op) is StoreCompact:
            self.compact(op.upto)  # type: ignore[attr-defined]
        elif type(op) is StoreReset:
            self.reset(op.index, op.term)  # type: ignore[attr-defined]

    def compact(self, upto: int) -> None:
        """`LogStore.compact_prefix`."""
        try:
            self.store.compact_prefix(upto)
        except ValueError as e:
            raise SimFailure(f"disk: {e}") from None

    def reset(self, index: int, term: int) -> None:
        """`LogStore.reset_to`."""
        self.store.reset_to(index, term)

    def fault(self) -> None:
        """The disk fills up: the logstore's next write fails and breaks the store."""
        self.mem.full = True
        try:
            self.store.probe()
        except OSError:
            return
        raise SimFailure("disk: a write on a full disk succeeded")

    def crash(self) -> None:
        """The process dies: a new handle on the same disk (what was made durable)."""
        self.store = self.store.crash()
        self.mem.full = False  # the restarted node's disk can be written (as before)

    def boot(self) -> BootState:
        return self.store.load()


@dataclass
class SimSnap:
    """A snapshot file image (real format and checksum) with what it models."""

    index: int
    term: int
    membership: Membership | None
    fsm_hash: bytes
    blob: bytes

    @property
    def snap_id(self) -> str:
        return self.blob[-32:].hex()

    def meta(self) -> SnapshotMeta:
        return SnapshotMeta(index=self.index, term=self.term, membership=self.membership,
                            path=f"sim:{self.snap_id[:12]}", size=len(self.blob),
                            checksum=self.snap_id)


def make_snap(index: int, term: int, membership: Membership | None, h: bytes) -> SimSnap:
    blob = encode_snapshot(index, term, membership, cbor2.dumps({"h": h}, canonical=True))
    return SimSnap(index, term, membership, h, blob)


def parse_snap(blob: bytes) -> SimSnap | None:
    """The snapshot in a received file image, or None if it does not verify."""
    if len(blob) < 32 or hashlib.sha256(blob[:-32]).digest() != blob[-32:]:
        return None
    import io

    from prisn.snapshots import SnapshotError, _parse_prefix
    try:
        index, term, mem, dlen, head = _parse_prefix(io.BytesIO(blob), len(blob))
    except SnapshotError:
        return None
    data = cbor2.loads(blob[len(head):len(head) + dlen])
    return SimSnap(index, term, mem, data["h"], blob)


class SimNode:
    def __init__(self, nid: str, addr: str) -> None:
        self.id = nid
        self.addr = addr
        self.disk = Disk()
        self.core: RaftCore | None = None
        self.unsynced: list[StoreAppend] = []
        self.next_sync_time = 0
        self.incarnation = 0
        self.next_apply = 1
        self.commit = 0
        self.leader_term = 0  # last term in which we checked this node as leader
        self.kwargs: dict[str, Any] = {}
        # modelled state machine and snapshot directory (durable: snaps, partial)
        self.fsm_hash = b""
        self.fsm_membership: Membership | None = None
        self.fsm_term = 0
        self.restored_upto = 0  # entries <= this came from a snapshot, never applied here
        self.snaps: list[SimSnap] = []  # newest last, at most 2
        self.partial: tuple[str, bytearray] | None = None
        self.threshold = 0
        self.snap_busy = False
        self.snap_index = 0  # newest local snapshot the fsm knows of
        self.timer: SnapshotTimer | None = None  # the fsm actor's snapshot timing core
        self.retry = RetryPolicy(0, 0)  # the logstore actor's retry core (per incarnation)
        # disk faults: "ok" | "failing" (the next sync fails) | "failed" | "recovered"
        self.store_state = "ok"
        self.fail_until = 0
        self.deferred: list[Msg] = []  # StoreCompact/StoreReset held by the failed logstore
        self.max_seq = 0  # highest StoreAppend seq of this incarnation
        self.void_upto = 0  # sync events at or below this seq belong to a failed epoch


class Trace(deque):
    """The run's trace: the last `maxlen` lines (shown on a failure) and a SHA-256 over every
    line ever appended (`digest`), so that two runs of one seed can be compared whole: a
    refactor of the core must leave the digest of every CI seed unchanged."""

    def __init__(self, maxlen: int = 300) -> None:
        super().__init__(maxlen=maxlen)
        self._sha = hashlib.sha256()

    def append(self, line: str) -> None:  # type: ignore[override]
        self._sha.update(line.encode())
        self._sha.update(b"\n")
        super().append(line)

    def digest(self) -> str:
        return self._sha.hexdigest()


class Sim:
    """Runs one seeded scenario. `run()` raises SimFailure on any violation."""

    def __init__(self, seed: int, cfg: SimConfig | None = None,
                 core_factory: Any = RaftCore) -> None:
        self.seed = seed
        self.cfg = cfg or SimConfig()
        self.rng = random.Random(seed)
        self.core_factory = core_factory
        self.now = 0
        self.events: list[tuple[int, int, str, Any]] = []
        self.evseq = 0
        self.trace = Trace()
        self.nodes: dict[str, SimNode] = {}
        self.by_addr: dict[str, str] = {}
        for k in range(1, self.cfg.nodes + 1):
            n = SimNode(f"n{k}", f"10.0.0.{k}:7332")
            self.nodes[n.id] = n
            self.by_addr[n.addr] = n.id
        self.groups: dict[str, int] | None = None  # partition: node -> group
        self.faults = True
        # invariant state
        self.leaders: dict[int, str] = {}
        self.entry_reg: dict[tuple[int, int], tuple[int, int, bytes]] = {}
        self.pending_reg: dict[tuple[str, int, int], list] = {}
        self.committed: dict[int, int] = {}
        self.applied: dict[int, tuple[int, int, bytes]] = {}
        self.applied_cmds: dict[tuple[str, int], int] = {}
        self.forwarded: set[tuple[str, int]] = set()  # commands sent as ForwardPropose
        self.duplicate_entries = 0
        self.ever_led: set[str] = set()
        self.acked: dict[tuple[str, int], int] = {}
        self.max_acked_index = 0
        self.rid = 0
        self.reads: dict[tuple[str, int], int] = {}  # (node, rid) -> max acked index at issue
        self.read_ok = 0
        self.steps = 0
        self.removed: set[str] = set()
        self.stats = {"crashes": 0, "partitions": 0, "truncations": 0, "leaders": 0}
        self.disk_stats = {"failures": 0, "landed": 0, "voided": 0, "recoveries": 0, "retries": 0,
                           "resumes": 0, "deferred": 0, "leader_stepdowns": 0}
        self.hash_at: dict[int, bytes] = {0: b""}
        self.snap_stats = {"taken": 0, "installed": 0, "compactions": 0, "chunks": 0,
                           "restarts_from_snapshot": 0, "partial_damaged": 0,
                           "installed_over_tail": 0}
        if self.cfg.snapshots is not None:
            lo, hi = self.cfg.snapshots
            for n in self.nodes.values():
                n.threshold = self.rng.randint(lo, hi)
            self.cfg = replace(self.cfg, opts=replace(
                self.cfg.opts, trailing_logs=(self.cfg.trailing_logs
                                              if self.cfg.trailing_logs >= 0
                                              else self.rng.randint(0, 30)),
                snapshot_chunk_bytes=self.rng.choice([48, 100, 400]),
                snapshot_retry_ticks=8, snapshot_apply_ticks=40))

    # ------------------------------------------------------------------ plumbing
    def fail(self, why: str) -> None:
        tail = "\n".join(list(self.trace)[-60:])
        raise SimFailure(f"seed={self.seed} t={self.now} ({self.now // UNITS_PER_TICK} ticks):"
                         f" {why}\n--- trace tail ---\n{tail}")

    def at(self, t: int, kind: str, payload: Any) -> None:
        self.evseq += 1
        heapq.heappush(self.events, (t, self.evseq, kind, payload))

    def start_node(self, n: SimNode) -> None:
        n.incarnation += 1
        n.next_apply = 1
        n.unsynced = []
        n.commit = n.disk.commit
        n.leader_term = 0
        n.snap_busy = False
        n.store_state, n.deferred, n.max_seq, n.void_upto = "ok", [], 0, 0
        n.timer = SnapshotTimer(n.threshold, self.cfg.snapshot_interval, last_started=self.now)
        lo, hi = self.cfg.disk_retry
        n.retry = RetryPolicy(lo, hi)
        boot = n.disk.boot()
        snap = n.snaps[-1] if n.snaps else None
        try:
            boot, reset = assemble_boot(boot, snap.meta() if snap else None)
        except BootError as e:
            self.fail(f"{n.id} cannot boot: {e}")
        if reset:
            assert snap is not None
            n.disk.reset(snap.index, snap.term)
        if snap is not None:
            self.snap_stats["restarts_from_snapshot"] += 1
            n.next_apply = snap.index + 1
            n.restored_upto = snap.index
            n.fsm_hash = snap.fsm_hash
            n.fsm_membership = snap.membership
            n.fsm_term = snap.term
            n.snap_index = snap.index
        else:
            n.fsm_hash, n.fsm_membership, n.restored_upto, n.snap_index = b"", None, 0, 0
        rng = random.Random(self.rng.getrandbits(32))
        n.core = self.core_factory(n.id, n.addr, self.cfg.opts, rng, boot, **n.kwargs)
        self.trace.append(f"{self.now} START {n.id}#{n.incarnation} term={boot.term} "
                          f"last={len(boot.entries)} commit={boot.commit}")
        # entries recovered from disk were registered when they were written
        self.route(n, n.core.startup())

    def crash(self, n: SimNode) -> None:
        self.check_log_against_registry(n)
        self.trace.append(f"{self.now} CRASH {n.id} (lost {len(n.unsynced)} unsynced writes)")
        self.stats["crashes"] += 1
        if n.partial is not None and self.rng.random() < 0.5:
            # the partial file's unsynced tail: lost, or (rarely) garbage
            sid, buf = n.partial
            self.snap_stats["partial_damaged"] += 1
            if buf and self.rng.random() < 0.2:
                k = self.rng.randrange(len(buf))
                buf[k] ^= 0xFF
            else:
                del buf[self.rng.randrange(len(buf) + 1):]
        n.core = None
        n.unsynced = []
        n.disk.crash()

    def step(self, n: SimNode, msgs: list[Msg]) -> None:
        core = n.core
        if core is None:
            return
        self.steps += 1
        for m in msgs:
            if type(m) is not Tick:
                self.trace.append(f"{self.now} {n.id} <- {_fmt(m)}")
        was_leader, was_broken = core.is_leader, bool(core.disk_error)
        try:
            out = core.step(msgs)
        except SimFailure:
            raise
        except Exception as e:  # a core exception is a bug
            self.fail(f"{n.id} raised {type(e).__name__}: {e}")
        if core.disk_error and not was_broken and was_leader:
            self.disk_stats["leader_stepdowns"] += 1
        self.route(n, out)

    def route(self, n: SimNode, out: list[Msg]) -> None:
        core = n.core
        assert core is not None
        cfg = self.cfg
        resumed = False
        for m in out:
            t = type(m)
            if t is StoreCompact or t is StoreReset:
                self.trace.append(f"{self.now} {n.id} store {_fmt(m)}")
                if t is StoreReset and n.store_state == "ok":
                    self.count_reset_over_tail(n, m)  # type: ignore[arg-type]
                if t is StoreCompact:
                    self.snap_stats["compactions"] += 1
                    if not n.snaps or m.upto > n.snaps[-1].index:  # type: ignore[attr-defined]
                        self.fail(f"{n.id} compacts to {m.upto} past its snapshot")  # type: ignore[attr-defined]
                if n.store_state in ("failed", "recovered"):
                    n.deferred.append(m)
                    self.disk_stats["deferred"] += 1
                elif n.unsynced:
                    n.unsynced.append(m)  # type: ignore[arg-type]
                else:
                    n.disk.apply_op(m)
            elif t is StoreResume:
                self.trace.append(f"{self.now} {n.id} store {_fmt(m)}")
                if n.store_state != "recovered":
                    self.fail(f"{n.id} sent StoreResume while its store is {n.store_state}")
                n.store_state = "ok"
                resumed = True
                self.disk_stats["resumes"] += 1
                for op in n.deferred:
                    n.disk.apply_op(op)
                n.deferred = []
            elif t is SnapChunk:
                self.on_chunk(n, m)  # type: ignore[arg-type]
            elif t is SnapSend:
                self.on_snap_send(n, m)  # type: ignore[arg-type]
            elif t is StoreAppend:
                self.trace.append(f"{self.now} {n.id} store {_fmt(m)}")
                if core.disk_error:
                    self.fail(f"{n.id} emitted a StoreAppend while its disk is broken")
                n.max_seq = max(n.max_seq, m.seq)  # type: ignore[attr-defined]
                if n.store_state in ("failed", "recovered"):
                    self.disk_stats["voided"] += 1  # sent before the core knew: void
                    continue
                self.check_store_append(n, m)
                if m.truncate_from:
                    self.stats["truncations"] += 1
                n.unsynced.append(m)
                when = max(n.next_sync_time, self.now + 1 + self.rng.randrange(cfg.sync_delay))
                n.next_sync_time = when
                self.at(when, "sync", (n.id, n.incarnation, m.seq))
            elif t is Apply:
                self.check_apply(n, m)
                self.maybe_snapshot(n)
            elif t is Reply:
                self.on_reply(n, m)
            else:
                if t is AppendEntries and m.entries:
                    self.register_sent(n, m)  # type: ignore[arg-type]
                elif t is ForwardPropose:
                    cmd = cbor2.loads(m.data)  # type: ignore[attr-defined]
                    self.forwarded.add((cmd["o"], cmd["r"]))
                self.check_speak(n, m)
                self.send(n, m)
        if resumed:  # the re-sent suffix must rebuild the in-memory log on the twin's disk
            self.check_log_against_registry(n)
        self.check_node(n)

    def disk_fails(self, n: SimNode, seq: int) -> None:
        """The sync of `seq` fails: a random prefix of the unsynced operations lands (each
        write is atomic), the rest of the writes are void and the store operations wait."""
        self.disk_stats["failures"] += 1
        items = n.unsynced
        k = self.rng.randint(0, len(items))
        for op in items[:k]:
            n.disk.apply_op(op)
            if type(op) is StoreAppend:
                self.disk_stats["landed"] += 1
                self.register(n.id, self.pending_reg.pop((n.id, n.incarnation, op.seq), []))
        for op in items[k:]:
            if type(op) is StoreAppend:
                self.pending_reg.pop((n.id, n.incarnation, op.seq), None)
                self.disk_stats["voided"] += 1
            else:
                n.deferred.append(op)
        n.unsynced = []
        n.disk.fault()  # the store is broken: it must be reopened
        n.store_state = "failed"
        n.void_upto = n.max_seq
        self.trace.append(f"{self.now} DISK FAILED {n.id} at seq {seq} ({k}/{len(items)} "
                          f"operations landed)")
        self.at(max(n.fail_until, self.now + 1), "disk_ok", (n.id, n.incarnation))
        n.retry.failed(self.now)
        self.at(int(n.retry.retry_at), "disk_retry", (n.id, n.incarnation))

    def disk_retry(self, n: SimNode) -> bool:
        """The logstore's retry (reopen + probe), when its backoff core says it is due.
        True when the store recovered (StoreRecovered goes to the core)."""
        if not n.retry.due(self.now):
            return False
        try:
            n.disk.store.reopen()
            n.disk.store.probe()
        except (StorageOpenError, StorageBroken, OSError):
            n.retry.attempt_failed(self.now)
            self.disk_stats["retries"] += 1
            self.at(int(n.retry.retry_at), "disk_retry", (n.id, n.incarnation))
            return False
        except StorageError as e:
            self.fail(f"{n.id}: the log store cannot be trusted after reopening: {e}")
        n.retry.recovered()
        return True

    def send(self, n: SimNode, m: Msg) -> None:
        dst = m.dst
        if dst.startswith("@"):
            dst = self.by_addr.get(dst[1:], "")
        if dst not in self.nodes:
            return
        self.trace.append(f"{self.now} {n.id} -> {dst} {_fmt(m)}")
        if self.faults:
            if self.groups is not None and self.groups[n.id] != self.groups[dst]:
                return
            if self.rng.random() < self.cfg.drop:
                return
        self.at(self.now + 1 + self.rng.randrange(self.cfg.max_delay), "msg", (dst, m))
        if self.faults and self.rng.random() < self.cfg.dup:
            self.at(self.now + 1 + self.rng.randrange(self.cfg.max_delay), "msg", (dst, m))

    # ------------------------------------------------------------------ invariants
    def check_store_append(self, n: SimNode, m: StoreAppend) -> None:
        """Remember each entry with its predecessor term; registered once it is durable."""
        core = n.core
        assert core is not None
        vals = []
        if m.entries:
            prev_t = core.log.term_at(m.entries[0][0] - 1)
            for e in m.entries:
                vals.append(((e[0], e[1]), (prev_t if prev_t is not None else -1, e[2],
                                            bytes(e[3]))))
                prev_t = e[1]
        self.pending_reg[(n.id, n.incarnation, m.seq)] = vals
        if m.term < n.disk.term and not any(type(u) is StoreAppend for u in n.unsynced):
            self.fail(f"{n.id} term went backwards on disk: {n.disk.term} -> {m.term}")

    def check_speak(self, n: SimNode, m: Msg) -> None:
        """Persist before speak, at the message level: a vote grant, a candidate's
        VoteRequest, a successful AppendResponse or a finished InstallSnapshotResponse leaves
        `n` only for state its disk (log, hard state, snapshot files) already holds."""
        t = type(m)
        d = n.disk
        if t is VoteResponse:
            if m.granted and not m.pre and not (  # type: ignore[attr-defined]
                    d.term > m.term or (d.term == m.term  # type: ignore[attr-defined]
                                        and d.vote == m.dst)):
                self.fail(f"persist before speak: {n.id} grants term {m.term} to "  # type: ignore[attr-defined]
                          f"{m.dst}, disk has term {d.term} vote {d.vote!r}")
        elif t is VoteRequest:
            if not m.pre and not (d.term > m.term or (  # type: ignore[attr-defined]
                    d.term == m.term and d.vote == n.id)):  # type: ignore[attr-defined]
                self.fail(f"persist before speak: {n.id} campaigns in term {m.term}, "  # type: ignore[attr-defined]
                          f"disk has term {d.term} vote {d.vote!r}")
        elif t is AppendResponse:
            if m.success:  # type: ignore[attr-defined]
                if d.term < m.term:  # type: ignore[attr-defined]
                    self.fail(f"persist before speak: {n.id} acks in term {m.term}, "  # type: ignore[attr-defined]
                              f"disk has term {d.term}")
                self.check_disk_holds(n, m.index, "AppendResponse")  # type: ignore[attr-defined]
        elif t is InstallSnapshotResponse:
            if m.done:  # type: ignore[attr-defined]
                self.check_disk_holds(n, m.index, "InstallSnapshotResponse")  # type: ignore[attr-defined]

    def count_reset_over_tail(self, n: SimNode, m: StoreReset) -> None:
        """A snapshot install that replaces a longer log disagreeing at its index."""
        mirror = n.disk.copy()
        for op in n.unsynced:
            mirror.apply_op(op)
        if mirror.last > m.index and m.index > mirror.start and (
                mirror.entries[m.index - mirror.start - 1][1] != m.term):
            self.snap_stats["installed_over_tail"] += 1

    def check_disk_holds(self, n: SimNode, idx: int, what: str) -> None:
        """`n`'s disk holds its in-memory log up to `idx`: the entries (same terms), or a
        snapshot file at or past `idx` (boot restores it and drops a shorter log)."""
        core = n.core
        assert core is not None
        d = n.disk
        snap = n.snaps[-1].index if n.snaps else 0
        if idx > max(d.last, snap):
            self.fail(f"persist before speak: {n.id} sends {what} for {idx}, disk holds "
                      f"{d.start}..{d.last} (snapshot {snap})")
        log = core.log
        for i in range(max(d.start, log.snap_index), min(idx, d.last) + 1):
            dt = d.start_term if i == d.start else d.entries[i - d.start - 1][1]
            if i == 0 or dt == log.term_at(i):
                continue
            if snap >= idx:
                break  # the snapshot file covers it (boot resets a log that disagrees)
            self.fail(f"persist before speak: {n.id} sends {what} for {idx}, but its disk "
                      f"has term {dt} at {i}, its log term {log.term_at(i)}")

    def register(self, who: str, vals: list) -> None:
        """Log matching, incrementally: (index, term) -> (predecessor term, kind, data).

        Entries are registered when they leave a node (AppendEntries) or become durable: an
        entry that only ever lived in the memory of a node that crashed is no entry at all
        (a bootstrap that crashed before its first sync may found a different cluster)."""
        reg = self.entry_reg
        for key, val in vals:
            old = reg.get(key)
            if old is None:
                reg[key] = val
            elif old != val:
                self.fail(f"log matching: {who} has entry {key} = {val}, elsewhere {old}")

    def register_sent(self, n: SimNode, m: AppendEntries) -> None:
        prev_t = m.prev_term
        vals = []
        for e in m.entries:
            vals.append(((e[0], e[1]), (prev_t, e[2], bytes(e[3]))))
            prev_t = e[1]
        self.register(n.id, vals)

    def check_node(self, n: SimNode) -> None:
        core = n.core
        assert core is not None
        term = core.term
        if core.is_leader and core.disk_error:
            self.fail(f"{n.id} leads term {term} with a broken disk")
        if core.is_leader:
            self.ever_led.add(n.id)
            who = self.leaders.get(term)
            if who is None:
                self.leaders[term] = n.id
                self.stats["leaders"] += 1
            elif who != n.id:
                self.fail(f"election safety: {who} and {n.id} both lead term {term}")
            if n.leader_term != term:
                n.leader_term = term
                log = core.log
                for i, t in self.committed.items():
                    if i < log.snap_index:
                        continue  # compacted: covered by the snapshot (checked by hash)
                    if log.term_at(i) != t:
                        self.fail(f"leader completeness: {n.id} leads term {term} without "
                                  f"committed entry {i} (term {t}, has {log.term_at(i)})")
        c = core.commit_index
        if c < n.commit:
            self.fail(f"{n.id} commit went backwards {n.commit} -> {c}")
        if c > n.commit:
            log = core.log
            if c > log.last_index:
                self.fail(f"{n.id} commit {c} beyond last index {log.last_index}")
            for i in range(max(n.commit + 1, log.snap_index), c + 1):
                t = log.term_at(i)
                assert t is not None
                old = self.committed.get(i)
                if old is None:
                    self.committed[i] = t
                elif old != t:
                    self.fail(f"{n.id} committed ({i},{t}) but ({i},{old}) was committed")
            n.commit = c

    def check_apply(self, n: SimNode, m: Apply) -> None:
        for e in m.entries:
            i = e[0]
            if i <= n.restored_upto and i < n.next_apply:
                continue  # covered by a restored snapshot: the state machine skips it
            if i != n.next_apply:
                self.fail(f"{n.id} applied {i}, expected {n.next_apply}")
            n.next_apply += 1
            self.fsm_step(n, e)
            if n.core is not None and i > n.core.commit_index:
                self.fail(f"{n.id} applied uncommitted {i}")
            val = (e[1], e[2], bytes(e[3]))
            old = self.applied.get(i)
            if old is None:
                self.applied[i] = val
                if e[2] == EntryKind.COMMAND:
                    cmd = cbor2.loads(e[3])
                    key = (cmd["o"], cmd["r"])
                    if key in self.applied_cmds:
                        # A request proposed again after a leadership change (a forward re-sent
                        # to the new leader, or a deposed leader's own uncommitted proposal) may
                        # sit in the log twice. The state machine applies a command once per
                        # idempotency key (DeploymentStore's dedup), so the copy is a no-op, as
                        # modelled here; identical apply order and no lost ack still hold.
                        if key not in self.forwarded and key[0] not in self.ever_led:
                            self.fail(f"command {key} applied twice ({self.applied_cmds[key]} "
                                      f"and {i}) but its origin neither forwarded it nor led")
                        self.duplicate_entries += 1
                    else:
                        self.applied_cmds[key] = i
            elif old != val:
                self.fail(f"state machine safety: {n.id} applied {val} at {i}, others {old}")
            if e[2] == EntryKind.COMMAND:
                cmd = cbor2.loads(e[3])
                if cmd["o"] == n.id:
                    key = (cmd["o"], cmd["r"])
                    if key not in self.acked:
                        self.acked[key] = i
                        self.max_acked_index = max(self.max_acked_index, i)

    def on_reply(self, n: SimNode, m: Reply) -> None:
        key = (n.id, m.rid)
        if key in self.reads:
            need = self.reads.pop(key)
            if m.ok:
                self.read_ok += 1
                if m.index < need:
                    self.fail(f"stale read on {n.id}: index {m.index} < acked {need}")

    def check_log_against_registry(self, n: SimNode) -> None:
        """The node's durable log agrees with the registry, and its in-memory log agrees
        with its disk plus the writes it announced (every change goes through StoreAppend)."""
        prev = n.disk.start_term
        for e in n.disk.entries:
            val = self.entry_reg.get((e[0], e[1]))
            if val is None or val != (prev, e[2], bytes(e[3])):
                self.fail(f"{n.id} durable entry {e[:2]} disagrees with the registry")
            prev = e[1]
        core = n.core
        if core is None or core.disk_error or n.store_state in ("failed", "recovered"):
            return  # what the core holds in memory waits for the write after the recovery
        mirror = n.disk.copy()
        for sa in n.unsynced:
            mirror.apply_op(sa)
        if ([e[:2] for e in mirror.entries] != [e[:2] for e in core.log.entries()]
                or mirror.start != core.log.snap_index):
            self.fail(f"{n.id} in-memory log differs from disk + announced writes")

    # ------------------------------------------------------------------ scenario
    def setup(self) -> None:
        cfg = self.cfg
        ids = list(self.nodes)
        if cfg.formation == "static":
            members = {i: self.nodes[i].addr for i in ids}
            for n in self.nodes.values():
                n.kwargs = {"initial_members": members}
        else:
            first = self.nodes[ids[0]]
            first.kwargs = {"bootstrap": True}
            for n in list(self.nodes.values())[1:]:
                n.kwargs = {"join": [first.addr]}
        for n in self.nodes.values():
            self.start_node(n)
        self.at(UNITS_PER_TICK, "tick", None)

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.core is not None]

    def chaos(self) -> None:
        cfg = self.cfg
        rng = self.rng
        if not self.faults:
            return
        down = [n for n in self.nodes.values() if n.core is None]
        max_down = cfg.max_down if cfg.max_down >= 0 else (cfg.nodes - 1) // 2
        if rng.random() < cfg.crash_rate and len(down) < max_down:
            n = rng.choice(self.live())
            self.crash(n)
            lo, hi = cfg.restart_after
            self.at(self.now + UNITS_PER_TICK * rng.randint(lo, hi), "restart", n.id)
        if self.groups is None and rng.random() < cfg.partition_rate:
            ids = list(self.nodes)
            rng.shuffle(ids)
            cut = rng.randint(1, len(ids) - 1)
            self.groups = {i: (0 if k < cut else 1) for k, i in enumerate(ids)}
            self.stats["partitions"] += 1
            self.trace.append(f"{self.now} PARTITION {sorted(ids[:cut])} | {sorted(ids[cut:])}")
        elif self.groups is not None and rng.random() < cfg.heal_rate:
            self.groups = None
            self.trace.append(f"{self.now} HEAL")
        if cfg.disk_fail_rate and rng.random() < cfg.disk_fail_rate:
            ok = [n for n in self.live() if n.store_state == "ok"]
            if ok:
                n = rng.choice(ok)
                n.store_state = "failing"
                lo, hi = cfg.disk_fail_for
                n.fail_until = self.now + UNITS_PER_TICK * rng.randint(lo, hi)
                self.trace.append(f"{self.now} DISK FAILING {n.id}")
        if cfg.membership_rate and rng.random() < cfg.membership_rate:
            self.membership_op()

    def current_config(self) -> Any:
        """Membership held by the live node with the highest term (None before any)."""
        best = None
        for n in self.live():
            assert n.core is not None
            st = n.core.status()
            if st.membership is not None and (best is None or st.term > best[0]):
                best = (st.term, st.membership)
        return best[1] if best else None

    def membership_op(self) -> None:
        """Ask a random live node to remove a member, re-add a removed node or transfer."""
        rng = self.rng
        live = self.live()
        mem = self.current_config()
        if not live or mem is None:
            return
        n = rng.choice(live)
        self.rid += 1
        members = mem.members()
        outside = sorted(set(self.nodes) - set(members))
        r = rng.random()
        msg: Msg
        if r < 0.3:
            msg = TransferLeadership(rid=self.rid, target=rng.choice(sorted(mem.voters)))
        elif outside and r < 0.7:
            t = self.nodes[rng.choice(outside)]
            msg = AddNode(rid=self.rid, node_id=t.id, addr=t.addr)
        elif len(mem.voters) > 2:
            msg = RemoveNode(rid=self.rid, node_id=rng.choice(sorted(members)))
        else:
            return
        self.trace.append(f"{self.now} CLIENT {n.id} {_fmt(msg)}")
        self.step(n, [msg])

    def client(self) -> None:
        cfg = self.cfg
        rng = self.rng
        live = self.live()
        if not live:
            return
        if rng.random() < cfg.propose_rate:
            n = rng.choice(live)
            props: list[Msg] = []
            for _ in range(cfg.burst):
                self.rid += 1
                data = cbor2.dumps({"o": n.id, "r": self.rid, "c": {"n": self.rid}},
                                   canonical=True)
                props.append(Propose(rid=self.rid, data=data))
            self.step(n, props)
        if rng.random() < cfg.read_rate:
            n = rng.choice(live)
            self.rid += 1
            self.reads[(n.id, self.rid)] = self.max_acked_index
            self.step(n, [ReadIndex(rid=self.rid)])

    def run_until(self, end: int, stop: Any = None) -> bool:
        while self.events and self.events[0][0] <= end:
            t = self.events[0][0]
            self.now = t
            batch: dict[str, list[Msg]] = {}
            order: list[str] = []
            ticks = False
            while self.events and self.events[0][0] == t:
                _, _, kind, payload = heapq.heappop(self.events)
                if kind == "msg":
                    dst, m = payload
                    if dst not in batch:
                        batch[dst] = []
                        order.append(dst)
                    batch[dst].append(m)
                elif kind == "sync":
                    nid, inc, seq = payload
                    n = self.nodes[nid]
                    if n.core is None or n.incarnation != inc:
                        continue
                    if n.store_state in ("failed", "recovered") or seq <= n.void_upto:
                        continue  # void: the logstore never answers these
                    if n.store_state == "failing":
                        self.disk_fails(n, seq)
                        if nid not in batch:
                            batch[nid] = []
                            order.append(nid)
                        batch[nid].append(StoreFailed(seq=seq, reason="no space left on device"))
                        continue
                    while n.unsynced and (type(n.unsynced[0]) is not StoreAppend
                                          or n.unsynced[0].seq <= seq):
                        sa = n.unsynced.pop(0)
                        n.disk.apply_op(sa)
                        if type(sa) is StoreAppend:
                            self.register(nid, self.pending_reg.pop((nid, inc, sa.seq), []))
                    if nid not in batch:
                        batch[nid] = []
                        order.append(nid)
                    batch[nid].append(StoreSynced(seq=seq))
                elif kind == "tick":
                    ticks = True
                elif kind == "local":
                    nid, inc, lm = payload
                    n = self.nodes[nid]
                    if n.core is None or n.incarnation != inc:
                        continue
                    if nid not in batch:
                        batch[nid] = []
                        order.append(nid)
                    batch[nid].append(lm)
                elif kind == "snap_write":
                    self.snap_written(*payload)
                elif kind == "disk_ok":  # the disk has room again
                    nid, inc = payload
                    n = self.nodes[nid]
                    if n.core is None or n.incarnation != inc:
                        continue
                    n.disk.mem.full = False
                elif kind == "disk_retry":
                    nid, inc = payload
                    n = self.nodes[nid]
                    if (n.core is None or n.incarnation != inc or n.store_state != "failed"
                            or not self.disk_retry(n)):
                        continue
                    n.store_state = "recovered"
                    self.disk_stats["recoveries"] += 1
                    self.trace.append(f"{self.now} DISK OK {nid}")
                    if nid not in batch:
                        batch[nid] = []
                        order.append(nid)
                    batch[nid].append(StoreRecovered(reason="no space left on device"))
                elif kind == "restart":
                    n = self.nodes[payload]
                    if n.core is None:
                        self.start_node(n)
            for nid in order:
                self.step(self.nodes[nid], batch[nid])
            if ticks:
                self.chaos()
                for n in self.live():
                    self.step(n, [Tick()])
                self.client()
                self.at(t + UNITS_PER_TICK, "tick", None)
            if stop is not None and stop():
                return True
        return False

    def heal(self) -> None:
        self.faults = False
        self.groups = None
        self.trace.append(f"{self.now} HEAL ALL")
        for n in self.nodes.values():
            if n.store_state == "failing":
                n.store_state = "ok"
            elif n.store_state == "failed":
                self.at(self.now + 1, "disk_ok", (n.id, n.incarnation))
            if n.core is None:
                self.start_node(n)

    def readd_all(self, deadline: int) -> None:
        """Liveness of add + promote: every node ends up a voter of the leader's config."""
        def all_voters() -> bool:
            lid = self.stable_leader()
            if lid is None:
                return False
            core = self.nodes[lid].core
            assert core is not None
            mem = core.status().membership
            assert mem is not None
            missing = [i for i in self.nodes if i not in mem.voters]
            if not missing:
                return True
            if self.now % (5 * UNITS_PER_TICK) == 0:
                for i in missing:
                    if i not in mem.learners:
                        self.rid += 1
                        self.step(self.nodes[lid], [AddNode(rid=self.rid, node_id=i,
                                                            addr=self.nodes[i].addr)])
            return False
        if not self.run_until(deadline, all_voters):
            self.fail("liveness: removed nodes not re-added as voters after healing")

    def members_voting(self) -> list[SimNode]:
        """Live voters of the stable leader's configuration (a removed node may never learn
        it was removed, so its own view does not count)."""
        lid = self.stable_leader()
        if lid is None:
            return self.live()
        core = self.nodes[lid].core
        assert core is not None
        mem = core.status().membership
        assert mem is not None
        return [self.nodes[v] for v in mem.voters if self.nodes[v].core is not None]

    def stable_leader(self) -> str | None:
        """A leader that every live voter of its config follows, in its term."""
        for n in self.live():
            core = n.core
            assert core is not None
            if core.is_leader:
                st = core.status()
                mem = st.membership
                assert mem is not None
                for v in mem.voters:
                    vn = self.nodes[v]
                    if vn.core is None:
                        return None
                    vs = vn.core.status()
                    if vs.leader_id != n.id or vs.term != st.term:
                        return None
                return n.id
        return None

    def run(self) -> Sim:
        cfg = self.cfg
        self.setup()
        self.run_until(cfg.ticks * UNITS_PER_TICK)
        self.heal()
        deadline = self.now + cfg.heal_ticks * UNITS_PER_TICK
        if not self.run_until(deadline, lambda: self.stable_leader() is not None):
            self.fail("liveness: no stable leader after healing")
        if cfg.membership_rate:
            self.readd_all(deadline + cfg.heal_ticks * UNITS_PER_TICK)
        # a fresh command must commit and apply on every member (a client retries a
        # proposal lost to a leadership change, as a real client would)
        saved = (cfg.propose_rate, cfg.read_rate)
        cfg.propose_rate = cfg.read_rate = 0.0
        finals: list[tuple[str, int]] = []

        def done() -> bool:
            got = [k for k in finals if k in self.acked]
            if got:
                idx = self.acked[got[0]]
                return all(n.next_apply > idx for n in self.members_voting())
            if not finals or self.now % (20 * UNITS_PER_TICK) == 0:
                lid = self.stable_leader()
                if lid is not None:
                    self.rid += 1
                    finals.append((lid, self.rid))
                    data = cbor2.dumps({"o": lid, "r": self.rid, "c": {"final": True}},
                                       canonical=True)
                    self.step(self.nodes[lid], [Propose(rid=self.rid, data=data)])
            return False

        ok = self.run_until(self.now + cfg.heal_ticks * UNITS_PER_TICK, done)
        cfg.propose_rate, cfg.read_rate = saved
        if not ok:
            self.fail("liveness: final command not applied everywhere after healing")
        leader = self.nodes[self.stable_leader() or finals[-1][0]]
        self.final_checks(leader)
        return self

    # ------------------------------------------------------------------ snapshots
    def local(self, n: SimNode, m: Msg) -> None:
        """Deliver a local message to `n`'s core later (the fsm thread answering)."""
        when = self.now + 1 + self.rng.randrange(self.cfg.fsm_delay)
        self.at(when, "local", (n.id, n.incarnation, m))

    def fsm_step(self, n: SimNode, e: list) -> None:
        """The modelled state machine applies `e`: extend the hash chain, compare."""
        i = e[0]
        h = hashlib.sha256(n.fsm_hash + cbor2.dumps([e[0], e[1], e[2], bytes(e[3])])).digest()
        n.fsm_hash = h
        n.fsm_term = e[1]
        if e[2] == EntryKind.CONFIG:
            n.fsm_membership = decode_config(e[3])
        old = self.hash_at.get(i)
        if old is None:
            self.hash_at[i] = h
        elif old != h:
            self.fail(f"state machine hash differs on {n.id} at {i}")

    def maybe_snapshot(self, n: SimNode) -> None:
        """The state-machine actor's decision (prisn.storage_policy.SnapshotTimer)."""
        if not n.threshold or n.timer is None:
            return
        applied = n.next_apply - 1
        if not n.timer.decide(applied=applied, snapshot_index=n.snap_index, busy=n.snap_busy,
                              now=self.now):
            return
        n.snap_busy = True
        snap = make_snap(applied, n.fsm_term, n.fsm_membership, n.fsm_hash)
        when = self.now + 1 + self.rng.randrange(self.cfg.fsm_delay)
        self.at(when, "snap_write", (n.id, n.incarnation, snap))

    def keep_snap(self, n: SimNode, snap: SimSnap) -> None:
        if any(s.snap_id == snap.snap_id for s in n.snaps):
            return
        n.snaps.append(snap)
        n.snaps.sort(key=lambda s: (s.index, s.term))
        del n.snaps[:-2]

    def snap_written(self, nid: str, inc: int, snap: SimSnap) -> None:
        n = self.nodes[nid]
        if n.incarnation != inc or n.core is None:
            return  # crashed while writing: the tmp file never became a snapshot
        n.snap_busy = False
        self.keep_snap(n, snap)
        n.snap_index = max(n.snap_index, snap.index)
        self.snap_stats["taken"] += 1
        self.trace.append(f"{self.now} {nid} SNAPSHOT {snap.index}")
        self.step(n, [SnapshotTaken(index=snap.index, term=snap.term, snap_id=snap.snap_id,
                                    path=f"sim:{snap.snap_id[:12]}", size=len(snap.blob))])

    def on_snap_send(self, n: SimNode, m: SnapSend) -> None:
        """The leader's replicator: read the chunk from its snapshot file, or report it gone."""
        snap = next((s for s in n.snaps if s.snap_id == m.snap_id), None)
        if snap is None:
            self.local(n, SnapSendFailed(peer=m.dst, snap_id=m.snap_id, reason="pruned"))
            return
        self.snap_stats["chunks"] += 1
        self.send(n, InstallSnapshot(
            src=n.id, dst=m.dst, cluster=m.cid, term=m.term, index=m.index,
            snap_term=m.snap_term, snap_id=m.snap_id, size=m.size, offset=m.offset,
            data=snap.blob[m.offset:m.offset + m.length]))

    def on_chunk(self, n: SimNode, m: SnapChunk) -> None:
        """The follower's state machine: write, verify, install, restore (in apply order)."""
        if n.partial is None or n.partial[0] != m.snap_id:
            n.partial = (m.snap_id, bytearray())
        buf = n.partial[1]
        if m.offset > len(buf):
            self.local(n, SnapChunkAck(snap_id=m.snap_id, offset=m.offset,
                                       next_offset=len(buf)))
            return
        del buf[m.offset:]
        buf.extend(m.data)
        if len(buf) < m.size:
            self.local(n, SnapChunkAck(snap_id=m.snap_id, offset=m.offset,
                                       next_offset=len(buf)))
            return
        n.partial = None
        snap = parse_snap(bytes(buf))
        if snap is None or snap.snap_id != m.snap_id:
            self.local(n, SnapChunkAck(snap_id=m.snap_id, offset=m.offset, next_offset=0,
                                       error="checksum"))
            return
        self.keep_snap(n, snap)
        if snap.index >= n.next_apply:
            want = self.hash_at.get(snap.index)
            if want is not None and want != snap.fsm_hash:
                self.fail(f"{n.id} installed snapshot {snap.index} with a different state "
                          f"machine hash")
            self.hash_at.setdefault(snap.index, snap.fsm_hash)
            n.fsm_hash, n.fsm_membership, n.fsm_term = snap.fsm_hash, snap.membership, snap.term
            n.next_apply = snap.index + 1
            n.restored_upto = snap.index
            self.snap_stats["installed"] += 1
            self.trace.append(f"{self.now} {n.id} INSTALLED {snap.index}")
        n.snap_index = max(n.snap_index, snap.index)
        self.local(n, SnapChunkAck(
            snap_id=m.snap_id, offset=m.offset, next_offset=len(snap.blob), installed=True,
            index=snap.index, term=snap.term,
            membership=snap.membership.to_wire() if snap.membership else {},
            path=f"sim:{snap.snap_id[:12]}", size=len(snap.blob)))

    def final_checks(self, leader: SimNode) -> None:
        core = leader.core
        assert core is not None
        for key, i in self.acked.items():
            if i <= core.log.snap_index:
                continue  # compacted: the state-machine hash checks cover it
            e = core.log.entry(i)
            if e[2] != EntryKind.COMMAND or tuple(
                    (lambda c: (c["o"], c["r"]))(cbor2.loads(e[3]))) != key:
                self.fail(f"acknowledged command {key} at {i} lost from leader log")
        for n in self.live():
            self.check_log_against_registry(n)


def _fmt(m: Msg) -> str:
    d = []
    for k in m.__dataclass_fields__:  # type: ignore[attr-defined]
        if k in ("src", "dst", "cluster"):
            continue
        v = getattr(m, k)
        if k == "entries":
            v = [e[:2] for e in v][:6]
        elif isinstance(v, bytes):
            v = len(v)
        d.append(f"{k}={v}")
    return f"{type(m).__name__}({', '.join(d)})"
