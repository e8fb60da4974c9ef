"""What loading the log at boot leaves resident (prisn.storage.LogStorage.load)."""

from __future__ import annotations

import os
from typing import Any

from prisn.messages import EntryKind, StoreAppend
from prisn.storage import ENTRY_PREFIX, LogStorage

N = 3000  # ~3 MB of incompressible entries: well over any block the cache keeps anyway


def _fill(path: str) -> None:
    st = LogStorage(path)
    try:
        for first in range(1, N + 1, 500):
            ents: list[list[Any]] = [[i, 1, int(EntryKind.COMMAND), os.urandom(1000)]
                                     for i in range(first, first + 500)]
            st.write([StoreAppend(seq=first, term=1, vote="", commit=0, entries=ents)])
    finally:
        st.close()


def _cache_usage(st: LogStorage) -> int:
    return int(st._db.property_int_value("rocksdb.block-cache-usage"))


def test_boot_load_does_not_fill_the_block_cache(tmp_path) -> None:
    """The boot scan reads every log block once: they must not stay in RocksDB's block cache
    (8 MB of RSS at 100k entries for nothing). The log is in table files after a reopen."""
    path = str(tmp_path / "raft")
    _fill(path)
    st = LogStorage(path)
    try:
        before = _cache_usage(st)
        boot = st.load()
        assert [e[0] for e in boot.entries] == list(range(1, N + 1))
        assert _cache_usage(st) - before < 64 << 10
        # companion: the same scan through the cache does fill it (the check above can fail)
        it = st._entry_iter()
        try:
            it.seek(ENTRY_PREFIX)
            while it.valid():
                it.next()
        finally:
            del it
        assert _cache_usage(st) - before > 1 << 20
    finally:
        st.close()
