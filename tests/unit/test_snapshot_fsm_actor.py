"""The state-machine actor's snapshot work: threshold snapshots written by its writer thread
(apply is not blocked; raft hears `snap.taken` with the membership in force), and chunked
installs (write, verify, rename, restore, then `installed`), without a real raft."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import cbor2
import zmq

from actors.statemachine import StateMachineActor
from prisn.fsm.commands import CommandFactory, encode_entry
from prisn.fsm.deployments import DeploymentStore
from prisn.messages import Apply, EntryKind, SnapChunk, SnapChunkAck, SnapshotTaken
from prisn.raft.boot import Membership
from prisn.raft.core import encode_config
from prisn.snapshots import SnapshotStore, encode_snapshot, read_snapshot
from transport.codec import decode
from transport.fake import FakeOutbox
from transport.mailbox import bind_inbox

MEM = Membership(cluster="c", voters={"n1": "a:1"})
_ids = itertools.count()


def _entries(lo: int, hi: int) -> list[list]:
    cf = CommandFactory()
    out: list[list] = [[1, 1, int(EntryKind.CONFIG), encode_config(MEM)]] if lo == 1 else []
    for i in range(max(lo, 2), hi + 1):
        cmd = cf.create({"name": f"d{i}", "source": "x"})
        out.append([i, 1, int(EntryKind.COMMAND), encode_entry("n9", i, cmd)])
    return out


def test_threshold_snapshot_goes_through_the_writer_thread(tmp_path: Path) -> None:
    ctx = zmq.Context()
    node = f"snapfsm-{os.getpid()}-{next(_ids)}"
    raft_inbox = bind_inbox(ctx, node, "raft")
    api_inbox = bind_inbox(ctx, node, "api")
    actor = StateMachineActor(ctx, node, DeploymentStore(), snapshots=SnapshotStore(tmp_path),
                              threshold=10)
    actor.start()
    try:
        assert actor.started.wait(5)
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(f"inproc://{node}/fsm")
        from transport.codec import encode
        push.send(encode(Apply(entries=_entries(1, 25))))
        assert raft_inbox.poll(10_000), "no snap.taken within 10 s"
        m = decode(raft_inbox.recv())
        assert isinstance(m, SnapshotTaken) and m.index == 25 and m.term == 1
        meta, data = read_snapshot(m.path)
        assert meta.membership == MEM and meta.checksum == m.snap_id and meta.size == m.size
        restored = DeploymentStore()
        restored.restore(data)
        assert restored.count() == 24 and restored.applied_index == 25
        assert actor.snapshot_index == 25 and actor.snapshots_taken == 1
        push.close(0)
    finally:
        actor.stop()
        actor.join(10)
        raft_inbox.close(0)
        api_inbox.close(0)
        ctx.term()


def test_chunked_install_restores_then_reports(tmp_path: Path) -> None:
    src = DeploymentStore()
    for e in _entries(1, 30):
        src.apply(e[0], e[2], e[3])
    blob = encode_snapshot(30, 2, MEM, src.snapshot())
    sid = blob[-32:].hex()
    store = DeploymentStore()
    actor = StateMachineActor(zmq.Context.instance(), "fsm-rx", store,
                              snapshots=SnapshotStore(tmp_path), threshold=1000)
    out = FakeOutbox()
    actor.outbox = out  # type: ignore[assignment]
    half = len(blob) // 2

    def chunk(off: int, data: bytes) -> None:
        actor.on_messages([SnapChunk(snap_id=sid, index=30, term=2, size=len(blob), offset=off,
                                     data=data)])

    chunk(0, blob[:half])
    chunk(half + 10, blob[half + 10:])  # a gap: ask again from `half`
    acks = [m for m in out.to("raft") if isinstance(m, SnapChunkAck)]
    assert [(a.next_offset, a.installed) for a in acks] == [(half, False), (half, False)]
    assert store.applied_index == 0
    chunk(half, blob[half:])
    ack = out.to("raft")[-1]
    assert isinstance(ack, SnapChunkAck) and ack.installed and ack.index == 30
    assert Membership.from_wire(ack.membership) == MEM
    assert store.applied_index == 30 and store.state_hash() == src.state_hash()
    assert out.to("api")[-1].index == 30  # the API learns the new applied index
    # later entries continue on top; entries at or below the snapshot are skipped
    actor.on_messages([Apply(entries=_entries(1, 31)[-2:])])
    assert store.applied_index == 31


def test_corrupt_install_is_refused_and_state_kept(tmp_path: Path) -> None:
    blob = bytearray(encode_snapshot(5, 1, MEM, DeploymentStore().snapshot()))
    sid = bytes(blob[-32:]).hex()
    blob[20] ^= 1
    store = DeploymentStore()
    actor = StateMachineActor(zmq.Context.instance(), "fsm-rx2", store,
                              snapshots=SnapshotStore(tmp_path))
    out = FakeOutbox()
    actor.outbox = out  # type: ignore[assignment]
    actor.on_messages([SnapChunk(snap_id=sid, index=5, term=1, size=len(blob), offset=0,
                                 data=bytes(blob))])
    ack = out.to("raft")[-1]
    assert isinstance(ack, SnapChunkAck) and not ack.installed and ack.next_offset == 0
    assert ack.error and store.applied_index == 0
    assert not list(tmp_path.glob("snapshot-*"))


def test_install_of_a_state_the_store_refuses_changes_nothing(tmp_path: Path) -> None:
    """Found by fuzzing: a received snapshot with `applied: inf` made restore raise
    OverflowError (the actor failed, the node exited) after the file had been renamed into
    snapshots/ (so the next boot failed too). Now the state is checked before the rename: the
    leader hears an error (start over from 0), the store and the snapshot files are as they
    were, and the actor keeps applying."""
    snaps = SnapshotStore(tmp_path)
    snaps.write(3, 1, MEM, DeploymentStore().snapshot())
    before = sorted(p.name for p in tmp_path.iterdir())
    bad_state = cbor2.loads(DeploymentStore().snapshot())
    bad_state["applied"] = float("inf")
    blob = encode_snapshot(40, 2, MEM, cbor2.dumps(bad_state))
    store = DeploymentStore()
    actor = StateMachineActor(zmq.Context.instance(), "fsm-rx3", store, snapshots=snaps)
    out = FakeOutbox()
    actor.outbox = out  # type: ignore[assignment]
    actor.on_messages([Apply(entries=_entries(1, 5))])
    h = store.state_hash()
    actor.on_messages([SnapChunk(snap_id=blob[-32:].hex(), index=40, term=2, size=len(blob),
                                 offset=0, data=blob)])
    ack = out.to("raft")[-1]
    assert isinstance(ack, SnapChunkAck) and not ack.installed and ack.next_offset == 0
    assert "refused" in ack.error and "applied" in ack.error
    assert store.state_hash() == h and store.applied_index == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no new file, no pruning
    assert actor.installs_received == 0
    actor.on_messages([Apply(entries=_entries(1, 7)[-2:])])
    assert store.applied_index == 7


def test_capture_is_consistent_while_entries_apply() -> None:
    """`capture` (the online backup, any thread) sees index, term, membership and state of
    one applied index, while this thread applies entries whose term and membership change
    with every index (issue 16 item 1)."""
    import threading

    store = DeploymentStore()
    actor = StateMachineActor(zmq.Context.instance(), "fsm-capture", store, threshold=10**9)
    actor.outbox = FakeOutbox()  # type: ignore[assignment]
    cf = CommandFactory()
    n = 1500
    stop = threading.Event()
    seen: list[tuple[int, int, str, int]] = []
    errors: list[BaseException] = []

    def capture() -> None:
        try:
            while not stop.is_set():
                index, term, mem, encode = actor.capture()
                applied = cbor2.loads(encode())["applied"]
                seen.append((index, term, mem.cluster if mem else "", applied))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=capture)
    t.start()
    try:
        for i in range(1, n + 1):
            if i % 2:  # odd: a configuration naming its index; even: a command
                e = [i, i, int(EntryKind.CONFIG), encode_config(
                    Membership(cluster=f"c{i}", voters={"n1": "a:1"}))]
            else:
                e = [i, i, int(EntryKind.COMMAND),
                     encode_entry("n9", i, cf.create({"name": f"d{i}", "source": "x"}))]
            actor.on_messages([Apply(entries=[e])])
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors
    assert len(seen) > 0
    for index, term, cluster, applied in seen:
        assert applied == index and (index == 0 or term == index), (index, term, applied)
        want = "" if index == 0 else f"c{index if index % 2 else index - 1}"
        assert cluster == want, (index, cluster)
