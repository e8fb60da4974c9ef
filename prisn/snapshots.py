"""Snapshot files: the format, the directory of a node's snapshots, and boot-state assembly.

A snapshot file holds the state machine's bytes (`DeploymentStore.snapshot()` format) plus the
membership in force at the snapshot index, the index and its term. Layout (FORMAT = 1):

    MAGIC (8 bytes "PRISNSNP") | format (u32 BE) | header length (u32 BE)
    | header: canonical CBOR {"index", "term", "membership": wire map or None, "data_len"}
    | data (data_len bytes) | SHA-256 of every byte before it (32 bytes)

The SHA-256 trailer is the snapshot's checksum and its id on the wire (`snap_id`, hex): two
files with the same id are byte-identical, which is what makes an interrupted InstallSnapshot
resumable (a chunk at the same offset of the same id is always the same bytes).

Directory `<data-dir>/snapshots/`:
- ``snapshot-<index:020d>-<term:020d>.snap``: complete, verified snapshots; the latest
  `KEEP` (by index) are kept, older ones are deleted after each new one.
- ``.tmp-*``: a local snapshot being written (deleted at open: never complete).
- ``recv-<snap_id>.part``: an InstallSnapshot being received (kept across restarts so that a
  transfer can resume; at most one at a time).

Invariants:
- A ``snapshot-*.snap`` name only ever appears by `os.replace` of a fully written, fsynced file,
  followed by an fsync of the directory: a crash leaves either the old set or the new one.
- A file whose magic, format, lengths or checksum do not verify, or whose header values are
  not of their exact types, is ignored (logged) and never deleted by reading code: the
  previous snapshot is used instead (at boot also one whose state the state machine refuses:
  `latest(accept=...)`).
- A received snapshot becomes a ``snapshot-*.snap`` file only after it verified and, with
  `finish_receive(check=...)`, after the state machine accepted its state; received chunks
  are bounded (offset and end within `MAX_SNAPSHOT_SIZE`), anything else is a SnapshotError.

Threading: `SnapshotStore` methods may be called from the fsm actor's thread and its snapshot
writer thread (an internal lock serialises directory changes); replicators only open finished
files by path for reading (an unlinked file stays readable while open).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import cbor2

from prisn.raft.boot import BootState, Membership
from prisn.raft.core import MAX_SNAPSHOT_SIZE, membership_from_wire

log = logging.getLogger("prisn.snapshots")

MAGIC = b"PRISNSNP"
FORMAT = 1
KEEP = 2
CHECKSUM_LEN = 32
_FIXED = struct.Struct(">II")  # format, header length
PREFIX_LEN = len(MAGIC) + _FIXED.size
MAX_HEADER = 1 << 20
_NAME = re.compile(r"^snapshot-(\d{20})-(\d{20})\.snap$")
_PART = re.compile(r"^recv-([0-9a-f]{64})\.part$")
_HEADER_KEYS = frozenset({"index", "term", "membership", "data_len"})


class SnapshotError(Exception):
    """A snapshot file that cannot be used (truncated, corrupt, unknown format)."""


@dataclass(frozen=True)
class SnapshotMeta:
    """A verified snapshot file: what it covers and where it is."""

    index: int
    term: int
    membership: Membership | None
    path: str
    size: int  # bytes of the whole file
    checksum: str  # hex SHA-256 trailer; also the id used on the wire


def _no_tags(_decoder: Any, tag: Any) -> Any:
    raise SnapshotError(f"CBOR tag {tag.tag} in a snapshot header")


def encode_header(index: int, term: int, membership: Membership | None, data_len: int) -> bytes:
    """Magic, format, header length and the canonical CBOR header."""
    hdr = cbor2.dumps({"index": index, "term": term,
                       "membership": membership.to_wire() if membership else None,
                       "data_len": data_len}, canonical=True)
    return MAGIC + _FIXED.pack(FORMAT, len(hdr)) + hdr


def encode_snapshot(index: int, term: int, membership: Membership | None, data: bytes) -> bytes:
    """The complete file bytes (tests and the simulator; `SnapshotStore.write` streams)."""
    head = encode_header(index, term, membership, len(data))
    h = hashlib.sha256(head)
    h.update(data)
    return head + data + h.digest()


def _parse_prefix(f: BinaryIO, size: int) -> tuple[int, int, Membership | None, int, bytes]:
    """(index, term, membership, data_len, raw header bytes incl. prefix); checks lengths."""
    prefix = f.read(PREFIX_LEN)
    if len(prefix) != PREFIX_LEN or prefix[:len(MAGIC)] != MAGIC:
        raise SnapshotError("not a prisn snapshot (bad magic or truncated)")
    fmt, hlen = _FIXED.unpack(prefix[len(MAGIC):])
    if fmt != FORMAT:
        raise SnapshotError(f"snapshot format {fmt}; this build reads only {FORMAT}")
    if hlen > MAX_HEADER:
        raise SnapshotError(f"snapshot header of {hlen} bytes is too large")
    raw = f.read(hlen)
    if len(raw) != hlen:
        raise SnapshotError("truncated snapshot header")
    try:
        h = cbor2.loads(raw, tag_hook=_no_tags)
    except SnapshotError:
        raise
    except Exception as e:  # cbor2 raises several types on garbage
        raise SnapshotError(f"bad snapshot header: {e!r}") from None
    if type(h) is not dict or set(h) != _HEADER_KEYS:
        raise SnapshotError("bad snapshot header: not a map of index, term, membership, "
                            "data_len")
    index, term, data_len = h["index"], h["term"], h["data_len"]
    if not all(type(v) is int for v in (index, term, data_len)):
        raise SnapshotError("bad snapshot header: index, term and data_len must be integers")
    if index < 0 or term < 0 or data_len < 0:
        raise SnapshotError("negative number in the snapshot header")
    mw = h["membership"]
    try:
        membership = membership_from_wire(mw) if mw is not None else None
    except ValueError as e:
        raise SnapshotError(f"bad snapshot header: membership: {e}") from None
    if PREFIX_LEN + hlen + data_len + CHECKSUM_LEN != size:
        raise SnapshotError(f"snapshot size {size} does not match its header "
                            f"(data {data_len} bytes): truncated or padded")
    return index, term, membership, data_len, prefix + raw


def read_snapshot(path: str | Path, *, want_data: bool = True) -> tuple[SnapshotMeta, bytes]:
    """Verify the file at `path` completely; (meta, data) or `SnapshotError`.

    With `want_data` False the data is still read and checksummed, but not returned (b"")."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            index, term, membership, data_len, head = _parse_prefix(f, size)
            h = hashlib.sha256(head)
            chunks: list[bytes] = []
            left = data_len
            while left:
                b = f.read(min(left, 4 << 20))
                if not b:
                    raise SnapshotError("truncated snapshot data")
                h.update(b)
                if want_data:
                    chunks.append(b)
                left -= len(b)
            trailer = f.read(CHECKSUM_LEN)
    except OSError as e:
        raise SnapshotError(f"cannot read {path}: {e}") from None
    if trailer != h.digest():
        raise SnapshotError("snapshot checksum mismatch")
    meta = SnapshotMeta(index=index, term=term, membership=membership, path=path, size=size,
                        checksum=trailer.hex())
    return meta, b"".join(chunks)


def fsync_dir(path: str | Path) -> None:
    fd = os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def snapshot_name(index: int, term: int) -> str:
    return f"snapshot-{index:020d}-{term:020d}.snap"


class SnapshotStore:
    """The `snapshots/` directory of one node (see module doc for the invariants)."""

    def __init__(self, path: str | Path, keep: int = KEEP) -> None:
        self.dir = Path(path)
        self.keep = max(1, keep)
        self._lock = threading.Lock()
        self.dir.mkdir(parents=True, exist_ok=True)
        for p in self.dir.glob(".tmp-*"):
            p.unlink(missing_ok=True)  # an interrupted local snapshot: never complete

    # ------------------------------------------------------------------ local snapshots
    def write(self, index: int, term: int, membership: Membership | None,
              data: bytes) -> SnapshotMeta:
        """Write atomically (tmp + fsync + rename + dir fsync), prune to `keep`; the meta."""
        tmp, size, digest = self.write_tmp(index, term, membership, data)
        return self.publish_tmp(tmp, index, term, membership, size, digest)

    def write_tmp(self, index: int, term: int, membership: Membership | None,
                  data: bytes) -> tuple[Path, int, str]:
        """Write and fsync the complete file under a temporary name: (path, size, checksum).

        Touches no lock and no shared state, so a forked child may run it."""
        name = snapshot_name(index, term)
        tmp = self.dir / f".tmp-{name}-{os.getpid()}-{threading.get_ident()}"
        head = encode_header(index, term, membership, len(data))
        h = hashlib.sha256(head)
        h.update(data)
        digest = h.digest()
        with open(tmp, "wb") as f:
            f.write(head)
            f.write(data)
            f.write(digest)
            f.flush()
            os.fsync(f.fileno())
        return tmp, len(head) + len(data) + CHECKSUM_LEN, digest.hex()

    def publish_tmp(self, tmp: Path, index: int, term: int, membership: Membership | None,
                    size: int, checksum: str) -> SnapshotMeta:
        """Rename a `write_tmp` file into place (atomic, directory fsynced) and prune."""
        final = self.dir / snapshot_name(index, term)
        with self._lock:
            os.replace(tmp, final)
            fsync_dir(self.dir)
            self._prune_locked()
        return SnapshotMeta(index=index, term=term, membership=membership, path=str(final),
                            size=size, checksum=checksum)

    def names(self) -> list[tuple[int, int, Path]]:
        """(index, term, path) of every complete-looking file, newest (highest index) first."""
        out = []
        for p in self.dir.iterdir():
            m = _NAME.match(p.name)
            if m:
                out.append((int(m.group(1)), int(m.group(2)), p))
        out.sort(key=lambda x: (x[0], x[1]), reverse=True)
        return out

    def _prune_locked(self) -> None:
        for _i, _t, p in self.names()[self.keep:]:
            p.unlink(missing_ok=True)

    def latest(self, *, want_data: bool = True,
               accept: Callable[[SnapshotMeta, bytes], None] | None = None,
               ) -> tuple[SnapshotMeta, bytes] | None:
        """The newest snapshot that verifies, with its data; corrupt files are logged and
        skipped (the previous one is used). None when there is none.

        `accept(meta, data)`, when given, is the state machine's restore: a file it refuses
        (ValueError or SnapshotError) is logged with its name and skipped like a corrupt one,
        so a snapshot that verifies but cannot be restored never stops a boot by itself (if
        the log does not reach back to the previous one, `assemble_boot` says so)."""
        for index, _term, p in self.names():
            try:
                meta, data = read_snapshot(p, want_data=want_data or accept is not None)
            except SnapshotError as e:
                log.error("ignoring snapshot %s: %s", p.name, e)
                continue
            if meta.index != index:
                log.error("ignoring snapshot %s: header says index %d", p.name, meta.index)
                continue
            if accept is not None:
                try:
                    accept(meta, data)
                except (ValueError, SnapshotError) as e:
                    log.error("ignoring snapshot %s: the state machine refused it: %s",
                              p.name, e)
                    continue
            return meta, data if want_data else b""
        return None

    # ------------------------------------------------------------------ receiving
    def part_path(self, snap_id: str) -> Path:
        return self.dir / f"recv-{snap_id}.part"

    def receive_chunk(self, snap_id: str, offset: int, data: bytes) -> int:
        """Write `data` at `offset` of the partial file for `snap_id`; the next offset needed.

        A new id drops every other partial file. A chunk beyond the end is not written (the
        answer is the current size, where the sender resumes); a chunk at or before the end
        overwrites from there (same id, same bytes, so a duplicate is harmless)."""
        if type(snap_id) is not str or not re.fullmatch(r"[0-9a-f]{64}", snap_id):
            raise SnapshotError(f"bad snapshot id {snap_id!r:.80}")
        if type(offset) is not int or not 0 <= offset <= MAX_SNAPSHOT_SIZE:
            raise SnapshotError(f"bad chunk offset {offset!r:.40} (0..{MAX_SNAPSHOT_SIZE})")
        if type(data) is not bytes or offset + len(data) > MAX_SNAPSHOT_SIZE:
            raise SnapshotError(f"bad chunk: not bytes, or past {MAX_SNAPSHOT_SIZE} bytes")
        part = self.part_path(snap_id)
        for p in self.dir.glob("recv-*.part"):
            if p != part:
                p.unlink(missing_ok=True)
        size = part.stat().st_size if part.exists() else 0
        if offset > size:
            return size
        with open(part, "r+b" if part.exists() else "wb") as f:
            f.seek(offset)
            f.write(data)
            f.truncate()
            return f.tell()

    def finish_receive(self, snap_id: str,
                       check: Callable[[SnapshotMeta, bytes], None] | None = None,
                       ) -> SnapshotMeta:
        """Verify the complete partial file for `snap_id` and install it atomically.

        `check(meta, data)`, when given, runs after the verification and before the rename
        (meta.path is still the partial file): the state machine parses the state there, so
        that a snapshot it would refuse never becomes a ``snapshot-*.snap`` file.
        On a checksum, format or check failure (SnapshotError, or ValueError from `check`)
        the partial file is deleted and `SnapshotError` raised (the sender must start again
        from 0); nothing else changed."""
        if type(snap_id) is not str or not re.fullmatch(r"[0-9a-f]{64}", snap_id):
            raise SnapshotError(f"bad snapshot id {snap_id!r:.80}")
        part = self.part_path(snap_id)
        try:
            with open(part, "r+b") as f:
                os.fsync(f.fileno())
            meta, data = read_snapshot(part, want_data=check is not None)
            if meta.checksum != snap_id:
                raise SnapshotError("received snapshot does not match its id")
            if check is not None:
                check(meta, data)
                del data
        except (SnapshotError, OSError, ValueError) as e:
            part.unlink(missing_ok=True)
            raise SnapshotError(f"received snapshot {snap_id[:12]} refused: {e}") from None
        final = self.dir / snapshot_name(meta.index, meta.term)
        with self._lock:
            os.replace(part, final)
            fsync_dir(self.dir)
            self._prune_locked()
        return SnapshotMeta(index=meta.index, term=meta.term, membership=meta.membership,
                            path=str(final), size=meta.size, checksum=meta.checksum)

    def partial_size(self, snap_id: str) -> int:
        p = self.part_path(snap_id)
        return p.stat().st_size if p.exists() else 0


# ---------------------------------------------------------------------- boot assembly
class BootError(Exception):
    """The durable log and the snapshots do not fit together (a gap)."""


def assemble_boot(stored: BootState, snap: SnapshotMeta | None) -> tuple[BootState, bool]:
    """Combine what the log store loaded with the newest valid snapshot. Pure.

    `stored.snapshot_index/term` is the log's compaction point C (entries start at C + 1).
    Returns (boot state for the core, whether the stored log must be reset to the snapshot
    point, i.e. every entry dropped and the compaction point set to the snapshot's).
    Rules (Raft §7): with a snapshot S (index >= C), the log entries after S are kept when the
    log holds S's index with S's term; otherwise the whole log is discarded (it conflicts
    with, or ends before, committed state). A compacted log without a snapshot covering the
    compaction point cannot be used: `BootError`.
    """
    c_index, c_term = stored.snapshot_index, stored.snapshot_term
    if snap is None:
        if c_index:
            raise BootError(f"the log is compacted to {c_index} but no valid snapshot exists")
        return BootState(term=stored.term, vote=stored.vote, commit=stored.commit,
                         entries=stored.entries), False
    if snap.index < c_index:
        raise BootError(f"the newest valid snapshot ({snap.index}) is older than the log's "
                        f"compaction point ({c_index}): wipe this node and let it rejoin")
    if snap.index == c_index:
        t = c_term
    elif stored.entries and stored.entries[0][0] <= snap.index <= stored.entries[-1][0]:
        t = stored.entries[snap.index - stored.entries[0][0]][1]
    else:
        t = None
    commit = max(stored.commit, snap.index)
    common: dict[str, Any] = dict(term=stored.term, vote=stored.vote, commit=commit,
                  snapshot_index=snap.index, snapshot_term=snap.term,
                  snapshot_membership=snap.membership, snapshot_file=snap.path,
                  snapshot_id=snap.checksum, snapshot_size=snap.size)
    if t == snap.term:
        return BootState(entries=stored.entries, log_index=c_index, log_term=c_term,
                         **common), False
    return BootState(entries=[], log_index=snap.index, log_term=snap.term, **common), True
