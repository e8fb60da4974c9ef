"""Snapshots in the pure core (Raft §7): compaction after SnapshotTaken (trailing logs, never
past the snapshot or the previous one), InstallSnapshot chunking, resume, retry, checksum
restart, stale terms, the follower's log reset, and restart from a snapshot."""

from __future__ import annotations

import random

import pytest

from prisn.messages import (
    AppendEntries,
    AppendResponse,
    Apply,
    EntryKind,
    InstallSnapshot,
    InstallSnapshotResponse,
    Msg,
    SnapChunk,
    SnapChunkAck,
    SnapSend,
    SnapSendFailed,
    SnapshotTaken,
    StoreAppend,
    StoreCompact,
    StoreReset,
    StoreSynced,
    Tick,
)
from prisn.raft.boot import BootState, Membership
from prisn.raft.core import RaftCore, RaftOptions, encode_config
from prisn.raft.progress import ProgressState
from tests.raftsim.manual import win

MEM = Membership(cluster="c1", voters={"n1": "A1", "n2": "A2", "n3": "A3"})
OPTS = RaftOptions(heartbeat_ticks=2, election_ticks=10, trailing_logs=10,
                   snapshot_chunk_bytes=100, snapshot_retry_ticks=5, snapshot_apply_ticks=30)
SID = "ab" * 32
SID2 = "cd" * 32


def _log(n: int, term: int = 1) -> list[list]:
    return [[1, 1, int(EntryKind.CONFIG), encode_config(MEM)]] + [
        [i, term, int(EntryKind.NOOP), b""] for i in range(2, n + 1)]


def of(out: list[Msg], t: type) -> list:
    return [m for m in out if isinstance(m, t)]


def leader(n: int = 100) -> RaftCore:
    """n1 leading term 2 over a log of `n` committed, applied entries (n3 never answers)."""
    core = RaftCore("n1", "A1", OPTS, random.Random(1),
                    BootState(term=1, commit=n, entries=_log(n)))
    out = core.startup()
    assert of(out, Apply)[0].entries[-1][0] == n
    win(core, ["n2"])
    # make the leader's NOOP durable and committed with n2's ack
    out = core.step([StoreSynced(seq=99)])
    last = core.log.last_index
    core.step([AppendResponse(src="n2", dst="n1", cluster="c1", term=core.term, success=True,
                              index=last)])
    assert core.commit_index == last
    return core


def taken(core: RaftCore, index: int, sid: str = SID, size: int = 250) -> list[Msg]:
    term = core.log.term_at(index) or 1
    return core.step([SnapshotTaken(src="fsm", dst="raft", index=index, term=term,
                                    snap_id=sid, path=f"/snap/{index}", size=size)])


def test_compaction_keeps_trailing_logs_and_the_previous_snapshot() -> None:
    core = leader(100)
    out = taken(core, 30)
    assert not of(out, StoreCompact) and core.log.snap_index == 0  # no previous snapshot yet
    out = taken(core, 60)
    # min(60 - trailing 10, previous snapshot 30)
    assert [m.upto for m in of(out, StoreCompact)] == [30] and core.log.snap_index == 30
    out = taken(core, 95)
    assert [m.upto for m in of(out, StoreCompact)] == [60]
    out = taken(core, 90)  # older than the newest: ignored
    assert not of(out, StoreCompact) and core.status().snapshot_index == 95
    assert core.status().log_start == 61
    # a report beyond what raft applied is refused (never compact on it)
    out = taken(core, core.log.last_index + 5)
    assert not of(out, StoreCompact) and core.status().drops.get("bad_snapshot_report") == 1


def _lagging(core: RaftCore) -> list[Msg]:
    """n3 answers a probe with 'I have nothing': it needs the snapshot."""
    return core.step([AppendResponse(src="n3", dst="n1", cluster="c1", term=core.term,
                                     success=False, index=0, hint_term=0)])


def _resp(core: RaftCore, offset: int, nxt: int, done: bool = False, index: int = 0,
          sid: str = SID) -> list[Msg]:
    return core.step([InstallSnapshotResponse(src="n3", dst="n1", cluster="c1",
                                              term=core.term, snap_id=sid, offset=offset,
                                              next_offset=nxt, done=done, index=index)])


def test_leader_streams_chunks_resumes_and_finishes() -> None:
    core = leader(100)
    taken(core, 40)
    taken(core, 80)  # compacts to 40: n3 (match 0) needs the snapshot at 80
    out = _lagging(core)
    sends = of(out, SnapSend)
    assert [(s.dst, s.offset, s.length, s.index, s.path) for s in sends] == [
        ("n3", 0, 100, 80, "/snap/80")]
    assert core.status().progress["n3"].state == "snapshot"
    assert not [m for m in of(out, AppendEntries) if m.dst == "n3" and m.entries]
    out = _resp(core, 0, 100)
    assert [(s.offset, s.length) for s in of(out, SnapSend)] == [(100, 100)]
    assert not of(_resp(core, 0, 100), SnapSend)  # a duplicate answer is ignored
    # the follower lost its tail (it restarted): it asks for 50, we resume there
    out = _resp(core, 100, 50)
    assert [(s.offset, s.length) for s in of(out, SnapSend)] == [(50, 100)]
    # no answer: the same chunk again after snapshot_retry_ticks
    sent = []
    for _ in range(OPTS.snapshot_retry_ticks):
        sent += of(core.step([Tick()]), SnapSend)
    assert [(s.offset) for s in sent] == [50]
    out = _resp(core, 50, 150)
    assert [(s.offset, s.length) for s in of(out, SnapSend)] == [(150, 100)]
    out = _resp(core, 150, 250, done=True, index=80)
    pr = core.status().progress["n3"]
    assert pr.state == "probe" and pr.match == 80 and core.status().snapshot_installs_sent == 1
    # replication continues from the snapshot point
    ae = [m for m in of(out, AppendEntries) if m.dst == "n3" and m.entries]
    assert ae and ae[0].prev_index == 80


def test_checksum_failure_restarts_from_zero_and_pruned_file_from_newest() -> None:
    core = leader(100)
    taken(core, 40)
    taken(core, 80)
    _lagging(core)
    _resp(core, 0, 100)
    out = _resp(core, 100, 0)  # the follower's checksum failed: start over
    assert [s.offset for s in of(out, SnapSend)] == [0]
    taken(core, 95, sid=SID2)  # newer snapshot; the old file may be pruned
    out = core.step([SnapSendFailed(src="repl:n3", dst="raft", peer="n3", snap_id=SID)])
    assert [(s.snap_id, s.offset, s.index) for s in of(out, SnapSend)] == [(SID2, 0, 95)]


def test_apply_timeout_is_separate_from_transfer_retry() -> None:
    core = leader(100)
    taken(core, 40)
    taken(core, 80, size=150)
    _lagging(core)
    _resp(core, 0, 100)  # the last chunk (100..150) is out: the follower verifies/restores
    retries = 0
    alive = AppendResponse(src="n2", dst="n1", cluster="c1", term=core.term, success=True,
                           index=core.log.last_index)  # n2 keeps the leader's quorum
    for _ in range(OPTS.snapshot_apply_ticks - 1):
        retries += len(of(core.step([Tick(), alive]), SnapSend))
    assert core.status().progress["n3"].state == "snapshot"  # still waiting (resends only)
    assert retries == (OPTS.snapshot_apply_ticks - 1) // OPTS.snapshot_retry_ticks
    core.step([Tick(), alive])
    assert core.status().drops.get("snapshot_apply_timeout") == 1


def follower(n: int = 10, term: int = 2) -> RaftCore:
    core = RaftCore("n3", "A3", OPTS, random.Random(3),
                    BootState(term=term, commit=n, entries=_log(n)))
    core.startup()
    return core


def _chunk(core: RaftCore, offset: int, term: int = 2, index: int = 80,
           data: bytes = b"x" * 100) -> list[Msg]:
    return core.step([InstallSnapshot(src="n1", dst="n3", cluster="c1", term=term,
                                      index=index, snap_term=2, snap_id=SID, size=250,
                                      offset=offset, data=data)])


def test_follower_stale_term_chunk_is_dropped() -> None:
    core = follower(term=3)
    out = _chunk(core, 0, term=2)
    assert not of(out, SnapChunk) and core.status().drops.get("stale_term") == 1


def test_follower_writes_through_fsm_then_resets_its_log() -> None:
    core = follower(10)
    out = _chunk(core, 0)
    assert [(c.offset, c.index, c.term, c.size) for c in of(out, SnapChunk)] == [(0, 80, 2, 250)]
    assert not of(out, InstallSnapshotResponse)  # only after the fsm wrote it
    out = core.step([SnapChunkAck(src="fsm", dst="raft", snap_id=SID, offset=0,
                                  next_offset=100)])
    assert [(r.offset, r.next_offset, r.done) for r in of(out, InstallSnapshotResponse)] == [
        (0, 100, False)]
    mem = Membership(cluster="c1", voters={"n1": "A1", "n2": "A2"}, learners={"n3": "A3"})
    out = core.step([SnapChunkAck(src="fsm", dst="raft", snap_id=SID, offset=150,
                                  next_offset=250, installed=True, index=80, term=2,
                                  membership=mem.to_wire(), path="/s", size=250)])
    assert [(r.index, r.done) for r in of(out, InstallSnapshotResponse)] == [(80, True)]
    assert [(m.index, m.term) for m in of(out, StoreReset)] == [(80, 2)]
    assert out.index(of(out, StoreReset)[0]) < out.index(of(out, StoreAppend)[0])
    st = core.status()
    assert (st.commit_index, st.applied_index, st.last_index, st.log_start) == (80, 80, 80, 81)
    assert st.membership == mem and st.snapshot_installs_received == 1
    assert not of(out, Apply)  # nothing at or below the snapshot is applied again
    out = core.step([AppendEntries(src="n1", dst="n3", cluster="c1", term=2, prev_index=80,
                                   prev_term=2, entries=[[81, 2, 1, b""]], commit=81)])
    sa = of(out, StoreAppend)
    assert sa and sa[0].entries[0][0] == 81
    # a chunk of a snapshot we already hold is acked at once
    core.step([StoreSynced(seq=sa[0].seq)])
    out = _chunk(core, 0)
    assert not of(out, SnapChunk)
    assert [(r.done, r.index) for r in of(out, InstallSnapshotResponse)] == [(True, 81)]


def test_follower_error_from_fsm_asks_for_offset_zero() -> None:
    core = follower(10)
    _chunk(core, 150, data=b"y" * 100)
    out = core.step([SnapChunkAck(src="fsm", dst="raft", snap_id=SID, offset=150,
                                  next_offset=0, error="checksum")])
    assert [(r.offset, r.next_offset, r.done) for r in of(out, InstallSnapshotResponse)] == [
        (150, 0, False)]
    assert core.status().last_index == 10  # nothing changed


def test_restart_from_snapshot_applies_only_the_tail() -> None:
    entries = [e for e in _log(60) if e[0] > 40]
    boot = BootState(term=1, commit=60, entries=entries, snapshot_index=50, snapshot_term=1,
                     snapshot_membership=MEM, log_index=40, log_term=1, snapshot_file="/s",
                     snapshot_id=SID, snapshot_size=99)
    core = RaftCore("n1", "A1", OPTS, random.Random(1), boot)
    out = core.startup()
    applied = [e[0] for a in of(out, Apply) for e in a.entries]
    assert applied == list(range(51, 61))
    st = core.status()
    assert (st.log_start, st.snapshot_index, st.membership) == (41, 50, MEM)
    assert core.log.term_at(45) == 1  # trailing entries before the snapshot are still served


def test_progress_snapshot_state_pauses_appends() -> None:
    core = leader(100)
    taken(core, 40)
    taken(core, 80)
    _lagging(core)
    for _ in range(OPTS.heartbeat_ticks * 3):
        out = core.step([Tick()])
        assert not [m for m in of(out, AppendEntries) if m.dst == "n3" and m.entries]
    # a heartbeat answer that rejects does not knock it out of SNAPSHOT
    core.step([AppendResponse(src="n3", dst="n1", cluster="c1", term=core.term,
                              success=False, index=0)])
    assert core._progress["n3"].state is ProgressState.SNAPSHOT


def test_follower_drops_malformed_snapshot_chunks() -> None:
    """A chunk whose offset, size or id is impossible never reaches the state machine (the
    fsm's receive_chunk raised ValueError from seek() for offset -2**70): dropped, counted,
    no answer, no term change."""
    core = follower(10)
    bad = [dict(offset=-2**70), dict(offset=-1), dict(offset=200, data=b"x" * 100),
           dict(size=0, data=b""), dict(size=2**41), dict(snap_id="../../etc/passwd"),
           dict(snap_id=SID.upper()), dict(index=0), dict(snap_term=3)]
    for fields in bad:
        m = dict(src="n1", dst="n3", cluster="c1", term=2, index=80, snap_term=2,
                 snap_id=SID, size=250, offset=0, data=b"x" * 100)
        m.update(fields)
        out = core.step([InstallSnapshot(**m)])  # type: ignore[arg-type]
        assert not out, (fields, out)
    st = core.status()
    assert st.drops == {"bad_snapshot_chunk": len(bad)} and st.term == 2
    assert of(_chunk(core, 0), SnapChunk)  # a well-formed chunk still goes through


@pytest.mark.parametrize("inflight", [False, True])
def test_install_over_longer_conflicting_log_resets_the_durable_mark(inflight: bool) -> None:
    """Issue 12 item 7: a follower whose log runs past the snapshot point with other terms
    resets to the snapshot; entries appended after it are acked and applied only once
    synced (the old durable mark, or a write in flight for the old tail, does not count)."""
    core = RaftCore("n3", "A3", OPTS, random.Random(3),
                    BootState(term=2, commit=5, entries=_log(30)))  # 6..30: term 1, uncommitted
    core.startup()
    if inflight:  # one more old-term entry still being written when the snapshot lands
        out = core.step([AppendEntries(src="n1", dst="n3", cluster="c1", term=2,
                                       prev_index=30, prev_term=1,
                                       entries=[[31, 1, int(EntryKind.NOOP), b""]], commit=5)])
        assert of(out, StoreAppend)
    _chunk(core, 0, index=20)
    out = core.step([SnapChunkAck(src="fsm", dst="raft", snap_id=SID, offset=0,
                                  next_offset=250, installed=True, index=20, term=2,
                                  membership=MEM.to_wire(), path="/s", size=250)])
    assert [(m.index, m.term) for m in of(out, StoreReset)] == [(20, 2)]
    assert core.status().stable_index == 20
    out = core.step([StoreSynced(seq=s.seq) for s in of(out, StoreAppend)]
                    + ([StoreSynced(seq=1)] if inflight else []))
    assert core.status().stable_index == 20  # the old tail's write makes nothing durable
    out = core.step([AppendEntries(src="n1", dst="n3", cluster="c1", term=2, prev_index=20,
                                   prev_term=2, entries=[[i, 2, int(EntryKind.NOOP), b""]
                                                         for i in range(21, 26)],
                                   commit=25)])
    sa = of(out, StoreAppend)
    assert sa and not [r for r in of(out, AppendResponse) if r.success]
    assert not of(out, Apply)  # committed, not durable: not applied yet
    out = core.step([StoreSynced(seq=sa[-1].seq)])
    assert [(r.success, r.index) for r in of(out, AppendResponse)] == [(True, 25)]
    assert [e[0] for a in of(out, Apply) for e in a.entries] == list(range(21, 26))


def test_truncating_append_and_install_in_one_step_write_what_the_store_accepts() -> None:
    """Issue 12 item 9: an AppendEntries that truncates at 6 and a snapshot install at 20 in
    the same step: the StoreReset goes first, so the StoreAppend after it must not truncate
    at or below 20 (the store refuses truncating compacted entries: a disk-error cycle)."""
    core = RaftCore("n3", "A3", OPTS, random.Random(3),
                    BootState(term=2, commit=5, entries=_log(30)))
    core.startup()
    _chunk(core, 0, index=20)
    out = core.step([
        AppendEntries(src="n1", dst="n3", cluster="c1", term=2, prev_index=5, prev_term=1,
                      entries=[[i, 2, int(EntryKind.NOOP), b""] for i in range(6, 26)],
                      commit=5),
        SnapChunkAck(src="fsm", dst="raft", snap_id=SID, offset=0, next_offset=250,
                     installed=True, index=20, term=2, membership=MEM.to_wire(), path="/s",
                     size=250)])
    reset, sa = of(out, StoreReset), of(out, StoreAppend)
    assert [(m.index, m.term) for m in reset] == [(20, 2)] and len(sa) == 1
    assert out.index(reset[0]) < out.index(sa[0])
    assert sa[0].truncate_from == 0 or sa[0].truncate_from > 20, sa[0].truncate_from
    assert [e[0] for e in sa[0].entries] == list(range(21, 26))
    out = core.step([StoreSynced(seq=sa[0].seq)])
    assert [(r.success, r.index) for r in of(out, AppendResponse)] == [(True, 25)]


# ------------------------------------------------------------------ pure parts (snapshot.py)
from prisn.raft.snapshot import (  # noqa: E402 - the pure parts, tested by table
    chunk_length,
    compaction_point,
    resume_offset,
)


@pytest.mark.parametrize("index,trailing,prev,force,want", [
    (100, 10, 0, 0, (0, False)),          # the first snapshot: the previous one is the floor
    (100, 10, 50, 0, (50, False)),        # never past the previous snapshot
    (100, 10, 95, 0, (90, False)),        # keep `trailing` entries
    (100, 200, 95, 0, (-100, False)),     # nothing to compact (the caller ignores <= start)
    (100, 10, 0, 80, (80, True)),         # a forced compaction through 80 is due
    (100, 10, 95, 80, (90, True)),        # already further than the force point
    (100, 10, 0, 100, (100, True)),
    (100, 10, 0, 120, (0, False)),        # the force point is later: wait for a newer one
    (100, 0, 100, 0, (100, False)),       # never past the snapshot itself
])
def test_compaction_point(index, trailing, prev, force, want) -> None:
    assert compaction_point(index, trailing, prev, force) == want


@pytest.mark.parametrize("chunk,size,offset,want", [
    (10, 100, 0, 10), (10, 100, 95, 5), (10, 100, 100, 0), (10, 100, 120, 0), (10, 5, 0, 5),
])
def test_chunk_length(chunk, size, offset, want) -> None:
    assert chunk_length(chunk, size, offset) == want


@pytest.mark.parametrize("nxt,size,want", [
    (0, 100, 0), (40, 100, 40), (99, 100, 99), (100, 100, 0), (-1, 100, 0), (500, 100, 0),
])
def test_resume_offset(nxt, size, want) -> None:
    assert resume_offset(nxt, size) == want
