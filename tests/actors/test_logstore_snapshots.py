"""The logstore actor with snapshot operations: StoreCompact/StoreReset keep their place in
the message order relative to StoreAppend (group commit still answers the appends), and a
failing compaction is a StoreFailed (no thread: FakeOutbox)."""

from __future__ import annotations

from pathlib import Path

import zmq

from actors.logstore import LogStoreActor
from prisn.messages import StoreAppend, StoreCompact, StoreFailed, StoreReset, StoreSynced
from prisn.storage import LogStorage
from transport.fake import FakeOutbox


def _sa(seq: int, lo: int, hi: int, term: int = 1) -> StoreAppend:
    return StoreAppend(seq=seq, term=term, vote="", commit=0,
                       entries=[[i, term, 0, b""] for i in range(lo, hi + 1)])


def _rig(tmp_path: Path) -> tuple[LogStoreActor, FakeOutbox, LogStorage]:
    st = LogStorage(str(tmp_path / "db"))
    actor = LogStoreActor(st, zmq.Context.instance(), "ls-snap")
    out = FakeOutbox()
    actor.outbox = out  # type: ignore[assignment]
    return actor, out, st


def test_compact_and_reset_keep_message_order(tmp_path: Path) -> None:
    actor, out, st = _rig(tmp_path)
    try:
        # appends 1..10, compact to 5, append 11..12: the compaction needs the first write
        actor.on_messages([_sa(1, 1, 10), StoreCompact(upto=5), _sa(2, 11, 12)])
        assert [m.seq for m in out.to("raft") if isinstance(m, StoreSynced)] == [1, 2]
        b = st.load()
        assert b.snapshot_index == 5 and [e[0] for e in b.entries] == list(range(6, 13))
        assert actor.compacted_to == 5 and actor.compactions == 1
        # an installed snapshot beyond the log: everything goes, appends continue after it
        actor.on_messages([StoreReset(index=40, term=3), _sa(3, 41, 41, term=3)])
        b = st.load()
        assert (b.snapshot_index, b.snapshot_term) == (40, 3)
        assert [e[0] for e in b.entries] == [41]
    finally:
        st.close()


def test_failed_compaction_is_a_store_failure(tmp_path: Path) -> None:
    actor, out, st = _rig(tmp_path)
    try:
        actor.on_messages([_sa(1, 1, 3), StoreCompact(upto=9)])  # beyond the log
        failed = [m for m in out.to("raft") if isinstance(m, StoreFailed)]
        assert failed and failed[0].seq == 1 and actor.failed
        actor.on_messages([_sa(2, 4, 4)])  # sticky: later appends fail without writing
        assert isinstance(out.to("raft")[-1], StoreFailed)
        assert st.load().entries[-1][0] == 3
    finally:
        st.close()
