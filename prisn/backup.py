"""Online backup files and `prisn snapshot restore` (pure file work, no server needed).

A backup is exactly a snapshot file (`prisn.snapshots`, FORMAT 1):

    MAGIC "PRISNSNP" | format (u32 BE) | header length (u32 BE)
    | header: canonical CBOR {"index", "term", "membership", "data_len"}
    | state (data_len bytes, `DeploymentStore.snapshot()` CBOR) | SHA-256 of all before (32)

so the magic and format number identify it, the header gives index, term and the exact
length (a truncated or padded file is refused before the checksum is even computed), and the
trailer detects any corrupted byte. The server streams it from `GET /api/v1/cluster/snapshot`
with the same values in ``X-Prisn-Snapshot-Index``, ``-Term`` and ``-Sha256`` headers.

Restore (like `etcdutl snapshot restore`): verify the file completely, parse the state as the
state machine would, then build the new data directory under a temporary sibling name and
rename it into place, so a refused file or a crash writes nothing at `--data-dir`. The new
directory holds the snapshot with a NEW membership (a fresh cluster id, one voter: the given
node id at the given raft address) and a log store whose hard state has the snapshot's term
and whose log starts right after the snapshot: started with `prisn server`, the node elects
itself and serves the restored state; other (empty) nodes then join it with `--peers`.

Threading: everything runs on the caller's thread (the CLI's main thread; the API's encoder
runs `backup_head` in an executor thread).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from prisn.fsm.deployments import DeploymentStore
from prisn.messages import StoreAppend
from prisn.raft.boot import Membership
from prisn.snapshots import (
    SnapshotError,
    SnapshotMeta,
    SnapshotStore,
    encode_header,
    fsync_dir,
    read_snapshot,
)
from prisn.storage import LogStorage, StorageError

__all__ = ["RestoreError", "Restored", "backup_head", "restore", "verify"]


class RestoreError(Exception):
    """A backup that cannot be restored, or a target that must not be touched (one line)."""


@dataclass(frozen=True)
class Restored:
    """What `verify` / `restore` found in a backup file."""

    meta: SnapshotMeta
    deployments: int
    state_hash: str
    cluster: str = ""  # the new cluster id (restore only)


def backup_head(index: int, term: int, membership: Membership | None,
                data: bytes) -> tuple[bytes, bytes]:
    """(prefix + header, SHA-256 trailer) of the backup file of `data` (any thread)."""
    head = encode_header(index, term, membership, len(data))
    h = hashlib.sha256(head)
    h.update(data)
    return head, h.digest()


def verify(path: str | Path) -> tuple[Restored, bytes]:
    """Check a backup file completely (format, length, checksum, and that the state machine
    accepts its state): (what it holds, the state bytes). `RestoreError` otherwise."""
    try:
        meta, data = read_snapshot(path)
    except SnapshotError as e:
        raise RestoreError(f"{path}: {e}") from None
    if meta.index < 1:
        raise RestoreError(f"{path}: a snapshot at index 0 holds nothing to restore")
    store = DeploymentStore()
    try:
        store.restore(data)
    except ValueError as e:
        raise RestoreError(f"{path}: the state machine refuses its state: {e}") from None
    if store.applied_index != meta.index:
        raise RestoreError(f"{path}: the state is at index {store.applied_index}, the header "
                           f"says {meta.index}")
    return Restored(meta, store.count(), store.state_hash()), data


def _target_usable(target: Path) -> None:
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise RestoreError(f"--data-dir {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()):
        raise RestoreError(f"--data-dir {target} exists and is not empty; restore only into "
                           "a new directory")


def restore(path: str | Path, data_dir: str | Path, node_id: str, raft_addr: str) -> Restored:
    """Seed a new one-node cluster's data directory from the backup at `path` (module doc).

    Nothing is written at `data_dir` unless the whole restore succeeds; `RestoreError` (one
    line) for a bad file or an unusable target."""
    target = Path(data_dir)
    _target_usable(target)  # before the (long) verification: fail fast
    found, data = verify(path)
    meta = found.meta
    _target_usable(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{target.name}.restore-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    membership = Membership(cluster=secrets.token_hex(8), voters={node_id: raft_addr})
    old_umask = os.umask(0o077)  # as the server: data dir 0700, files 0600
    try:
        tmp.mkdir()
        SnapshotStore(tmp / "snapshots").write(meta.index, meta.term, membership, data)
        del data
        logs = LogStorage(str(tmp / "raft"))
        try:
            logs.reset_to(meta.index, meta.term)
            logs.write([StoreAppend(src="restore", dst="logstore", seq=1, term=meta.term,
                                    vote="", commit=meta.index)])
        finally:
            logs.close()
        fsync_dir(tmp)
        os.rename(tmp, target)  # replaces an empty directory atomically
        fsync_dir(parent)
    except (OSError, StorageError, SnapshotError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RestoreError(f"cannot write --data-dir {target}: {e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.umask(old_umask)
    return Restored(meta, found.deployments, found.state_hash, membership.cluster)
