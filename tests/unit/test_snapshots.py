"""Snapshot files (`prisn.snapshots`): format round trip, refusal of damaged files, atomic
write and pruning, chunked receive with resume, and boot assembly with the log store."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import cbor2
import pytest

from prisn.raft.boot import BootState, Membership
from prisn.snapshots import (
    FORMAT,
    MAGIC,
    BootError,
    SnapshotError,
    SnapshotStore,
    assemble_boot,
    encode_snapshot,
    read_snapshot,
)
from prisn.storage import LogStorage

MEM = Membership(cluster="c1", voters={"n1": "a:1", "n2": "a:2"}, learners={"n3": "a:3"})


def test_round_trip(tmp_path: Path) -> None:
    st = SnapshotStore(tmp_path / "s")
    meta = st.write(42, 3, MEM, b"state-bytes")
    got, data = read_snapshot(meta.path)
    assert got == meta and data == b"state-bytes"
    assert (got.index, got.term, got.membership) == (42, 3, MEM)
    raw = Path(meta.path).read_bytes()
    assert raw.startswith(MAGIC) and raw == encode_snapshot(42, 3, MEM, b"state-bytes")
    assert meta.checksum == hashlib.sha256(raw[:-32]).hexdigest() == raw[-32:].hex()
    assert meta.size == len(raw)


def test_golden_header() -> None:
    """The persisted format must not change by accident (bump FORMAT if it must)."""
    blob = encode_snapshot(7, 2, None, b"")
    assert FORMAT == 1
    assert blob.hex() == (
        "505249534e534e500000000100000024a4647465726d0265696e646578076864"
        "6174615f6c656e006a6d656d62657273686970f6a93cac90f74e7c43705ab0cd"
        "e9b24ff59d8e0d8a90a4cdd64d5427972ceec423")


@pytest.mark.parametrize("damage", ["truncate", "flip", "pad", "magic", "format", "empty"])
def test_damaged_file_refused(tmp_path: Path, damage: str) -> None:
    st = SnapshotStore(tmp_path)
    meta = st.write(10, 1, MEM, os.urandom(5000))
    p = Path(meta.path)
    raw = bytearray(p.read_bytes())
    if damage == "truncate":
        raw = raw[:len(raw) // 2]
    elif damage == "flip":
        raw[len(raw) // 2] ^= 1
    elif damage == "pad":
        raw += b"\0"
    elif damage == "magic":
        raw[0] ^= 0xFF
    elif damage == "format":
        raw[len(MAGIC) + 3] = 9
    else:
        raw = bytearray()
    p.write_bytes(bytes(raw))
    with pytest.raises(SnapshotError):
        read_snapshot(p)


def test_latest_falls_back_past_corrupt_and_keeps_two(tmp_path: Path, caplog) -> None:
    st = SnapshotStore(tmp_path)
    st.write(10, 1, MEM, b"a")
    m20 = st.write(20, 1, MEM, b"b")
    m30 = st.write(30, 2, MEM, b"c")
    assert [i for i, _t, _p in st.names()] == [30, 20]  # pruned to the latest two
    latest = st.latest()
    assert latest is not None and latest[0] == m30 and latest[1] == b"c"
    Path(m30.path).write_bytes(Path(m30.path).read_bytes()[:-1])  # torn newest file
    fallback = st.latest()
    assert fallback is not None and fallback[0] == m20 and fallback[1] == b"b"
    assert "ignoring snapshot" in caplog.text


def test_atomic_write_leaves_no_partial_name(tmp_path: Path) -> None:
    st = SnapshotStore(tmp_path)
    (tmp_path / ".tmp-snapshot-crashed").write_bytes(b"half")  # a crash mid-write
    st2 = SnapshotStore(tmp_path)  # opening removes it; it never was a snapshot
    assert not list(tmp_path.glob(".tmp-*"))
    assert st2.latest() is None
    st.write(5, 1, None, b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["snapshot-00000000000000000005-"
                                                     "00000000000000000001.snap"]


def test_receive_in_chunks_with_resume_and_duplicates(tmp_path: Path) -> None:
    blob = encode_snapshot(99, 4, MEM, os.urandom(10_000))
    sid = blob[-32:].hex()
    rx = SnapshotStore(tmp_path / "rx")
    assert rx.receive_chunk(sid, 0, blob[:3000]) == 3000
    assert rx.receive_chunk(sid, 6000, blob[6000:9000]) == 3000  # gap: resume at 3000
    assert rx.receive_chunk(sid, 0, blob[:3000]) == 3000  # duplicate: harmless
    # a "restart": a new store object over the same dir keeps the partial file
    rx = SnapshotStore(tmp_path / "rx")
    assert rx.partial_size(sid) == 3000
    assert rx.receive_chunk(sid, 3000, blob[3000:]) == len(blob)
    meta = rx.finish_receive(sid)
    assert (meta.index, meta.term, meta.checksum) == (99, 4, sid)
    assert rx.latest() is not None and rx.latest()[0].index == 99  # type: ignore[index]
    assert not list((tmp_path / "rx").glob("recv-*"))


def test_receive_checksum_mismatch_refused(tmp_path: Path) -> None:
    blob = bytearray(encode_snapshot(5, 1, None, b"y" * 100))
    sid = bytes(blob[-32:]).hex()
    blob[40] ^= 1
    rx = SnapshotStore(tmp_path)
    rx.receive_chunk(sid, 0, bytes(blob))
    with pytest.raises(SnapshotError):
        rx.finish_receive(sid)
    assert rx.latest() is None and rx.partial_size(sid) == 0  # start over from 0


def test_new_snapshot_id_drops_old_partial(tmp_path: Path) -> None:
    a = encode_snapshot(5, 1, None, b"a" * 50)
    b = encode_snapshot(9, 1, None, b"b" * 50)
    rx = SnapshotStore(tmp_path)
    rx.receive_chunk(a[-32:].hex(), 0, a[:20])
    assert rx.receive_chunk(b[-32:].hex(), 20, b[20:]) == 0  # unknown id: from 0
    assert rx.partial_size(a[-32:].hex()) == 0



def _sealed(header: object, data: bytes = b"") -> bytes:
    """A file with this header object and a valid checksum (parsing reaches the header)."""
    hdr = cbor2.dumps(header)
    head = MAGIC + struct.pack(">II", FORMAT, len(hdr)) + hdr
    return head + data + hashlib.sha256(head + data).digest()


@pytest.mark.parametrize("header", [
    {"index": 1.0, "term": 1, "membership": None, "data_len": 0},
    {"index": True, "term": 1, "membership": None, "data_len": 0},
    {"index": 1, "term": "1", "membership": None, "data_len": 0},
    {"index": 1, "term": 1, "membership": None, "data_len": 0, "extra": 1},
    {"index": 1, "term": 1, "membership": {"cluster": "c", "voters": 5, "learners": {}},
     "data_len": 0},
    {"index": 1, "term": 1, "membership": {"cluster": "c", "voters": {"n1": 7},
                                           "learners": {}}, "data_len": 0},
    [1, 1, None, 0],
], ids=["float", "bool", "str", "extra-key", "voters-int", "address-int", "list"])
def test_header_types_checked_strictly(tmp_path: Path, header: object) -> None:
    """Header values of the wrong type (a float index was silently int()ed, a bad
    membership map was accepted) are a SnapshotError, like any other damage."""
    p = tmp_path / "snapshot-x.snap"
    p.write_bytes(_sealed(header))
    with pytest.raises(SnapshotError, match="header"):
        read_snapshot(p)


@pytest.mark.parametrize("offset,data", [(-2**70, b"x"), (-1, b"x"), (2**41, b"x"),
                                         (True, b"x"), (1.0, b"x"), (0, "text")])
def test_receive_chunk_refuses_bad_offsets_and_changes_nothing(tmp_path: Path, offset: object,
                                                               data: object) -> None:
    """Found by fuzzing: offset -2**70 raised ValueError from seek(), which the fsm actor does
    not catch. Every impossible offset or chunk is a SnapshotError, and no file is touched
    (not even another id's partial file)."""
    rx = SnapshotStore(tmp_path)
    other = "ab" * 32
    rx.receive_chunk(other, 0, b"partial")
    with pytest.raises(SnapshotError):
        rx.receive_chunk("cd" * 32, offset, data)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"recv-{other}.part"]
    with pytest.raises(SnapshotError):
        rx.finish_receive("../" + other)


def test_finish_receive_check_refusal_leaves_no_snapshot(tmp_path: Path) -> None:
    """A received file the state machine refuses (`check` raises) is deleted before it
    becomes a snapshot file: the older snapshots are all kept (no pruning happened)."""
    st = SnapshotStore(tmp_path)
    st.write(10, 1, MEM, b"a")
    st.write(20, 1, MEM, b"b")
    blob = encode_snapshot(30, 2, MEM, b"bad state")
    sid = blob[-32:].hex()
    st.receive_chunk(sid, 0, blob)
    seen: list[tuple[int, bytes]] = []

    def refuse(meta, data: bytes) -> None:  # type: ignore[no-untyped-def]
        seen.append((meta.index, data))
        raise ValueError("invalid snapshot: applied must be an integer")

    with pytest.raises(SnapshotError, match="applied must be an integer"):
        st.finish_receive(sid, check=refuse)
    assert seen == [(30, b"bad state")]
    assert [i for i, _t, _p in st.names()] == [20, 10] and st.partial_size(sid) == 0
    st.receive_chunk(sid, 0, blob)
    assert st.finish_receive(sid, check=lambda meta, data: None).index == 30


def test_latest_with_accept_falls_back_past_a_refused_state(tmp_path: Path, caplog) -> None:
    """Boot: a newest file that verifies but whose state the store refuses is logged by name
    and skipped; the previous snapshot is used (no traceback, no crash loop)."""
    st = SnapshotStore(tmp_path)
    m20 = st.write(20, 1, MEM, b"good")
    m30 = st.write(30, 2, MEM, b"bad")

    def accept(meta, data: bytes) -> None:  # type: ignore[no-untyped-def]
        if data == b"bad":
            raise ValueError("invalid snapshot: applied must be an integer")

    got = st.latest(accept=accept)
    assert got is not None and got[0] == m20 and got[1] == b"good"
    assert Path(m30.path).name in caplog.text and "refused" in caplog.text

    def refuse_all(meta, data: bytes) -> None:  # type: ignore[no-untyped-def]
        raise ValueError("no")

    assert st.latest(accept=refuse_all) is None


# ---------------------------------------------------------------------- boot assembly
def _entries(lo: int, hi: int, term: int = 1) -> list[list]:
    return [[i, term, 0, b""] for i in range(lo, hi + 1)]


def _meta(tmp_path: Path, index: int, term: int):
    return SnapshotStore(tmp_path).write(index, term, MEM, b"s")


def test_boot_keeps_tail_after_matching_snapshot(tmp_path: Path) -> None:
    stored = BootState(term=3, vote="n1", commit=40, entries=_entries(11, 50),
                       snapshot_index=10, snapshot_term=1)
    boot, reset = assemble_boot(stored, _meta(tmp_path, 30, 1))
    assert not reset
    assert (boot.snapshot_index, boot.log_start, boot.commit) == (30, (10, 1), 40)
    assert boot.entries[0][0] == 11 and boot.snapshot_membership == MEM


def test_boot_discards_conflicting_or_short_log(tmp_path: Path) -> None:
    stored = BootState(term=3, commit=5, entries=_entries(1, 20, term=1))
    boot, reset = assemble_boot(stored, _meta(tmp_path, 20, 2))  # term differs at 20
    assert reset and boot.entries == [] and boot.log_start == (20, 2) and boot.commit == 20
    boot, reset = assemble_boot(stored, _meta(tmp_path / "b", 60, 2))  # beyond the log
    assert reset and boot.log_start == (60, 2)


def test_boot_without_snapshot_and_gaps(tmp_path: Path) -> None:
    stored = BootState(term=1, commit=3, entries=_entries(1, 3))
    boot, reset = assemble_boot(stored, None)
    assert not reset and boot.snapshot_index == 0 and len(boot.entries) == 3
    with pytest.raises(BootError):
        assemble_boot(BootState(entries=_entries(11, 12), snapshot_index=10,
                                snapshot_term=1), None)
    with pytest.raises(BootError):
        assemble_boot(BootState(entries=_entries(11, 12), snapshot_index=10,
                                snapshot_term=1), _meta(tmp_path, 5, 1))


def test_storage_reset_to(tmp_path: Path) -> None:
    from prisn.messages import StoreAppend
    s = LogStorage(str(tmp_path / "db"))
    try:
        s.write([StoreAppend(seq=1, term=2, vote="", commit=0,
                             entries=[[i, 1 if i < 8 else 2, 0, b""] for i in range(1, 11)])])
        assert s.reset_to(9, 2) is True  # matching: keep the tail
        b = s.load()
        assert (b.snapshot_index, b.snapshot_term) == (9, 2) and [e[0] for e in b.entries] == [10]
        assert s.reset_to(15, 3) is False  # beyond: drop everything
        b = s.load()
        assert (b.snapshot_index, b.snapshot_term, b.entries) == (15, 3, [])
        assert s.reset_to(12, 3) is True  # below the compaction point: no-op
        s.write([StoreAppend(seq=2, term=3, vote="", commit=0, entries=[[16, 3, 0, b"z"]])])
        assert [e[0] for e in s.load().entries] == [16]
    finally:
        s.close()
