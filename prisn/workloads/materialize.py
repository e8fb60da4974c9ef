"""Materialize an artifact on this node's disk, once (I/O; the runner calls it).

`materialize(data_dir, digest, data)` leaves the artifact's files under
``<data-dir>/artifacts/<digest>/`` (`prisn.workloads.artifacts.artifact_dir`) and returns that
directory. Invariants:
- Verified: the bytes must hash to `digest` and pass `read_archive` (ArtifactError otherwise,
  nothing written).
- Atomic: files are written into a fresh temporary directory next to the target, fsynced,
  and the directory is renamed into place; a crash leaves at most a ``.tmp-*`` directory,
  which `clear_stale` (called once at start, before any `materialize`) removes. A present
  target directory is therefore complete.
- Idempotent: a present target is returned as is (no rewrite); two racing callers both end
  with the same complete directory (the loser's rename fails and its copy is removed).
Files are written 0644 (0755 when executable) and directories 0755; nothing is ever written
outside the target (every path passed `check_path`). Any thread; blocking disk I/O, so call it
off any event loop.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prisn.workloads.artifacts import (
    HARD_MAX_ARTIFACT_BYTES,
    ArtifactError,
    artifact_dir,
    check_digest,
    digest_of,
    entry_path,
    read_archive,
)

TMP_PREFIX = ".tmp-"


def materialize(data_dir: str | os.PathLike[str], digest: str, data: bytes) -> Path:
    """The directory holding the artifact's files, written now if absent (see module doc)."""
    digest = check_digest(digest)
    target = artifact_dir(data_dir, digest)
    if target.is_dir():
        return target
    if digest_of(data) != digest:
        raise ArtifactError(f"digest mismatch: the bytes' SHA-256 is not {digest}")
    files = read_archive(data, HARD_MAX_ARTIFACT_BYTES)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f"{TMP_PREFIX}{digest}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir(mode=0o755)
    try:
        for f in files:
            path = tmp / f.path
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         0o755 if f.executable else 0o644)
            try:
                view = memoryview(f.data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(path, 0o755 if f.executable else 0o644)  # umask-proof
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another caller won the race
            return target
        dfd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def clear_stale(data_dir: str | os.PathLike[str]) -> int:
    """Remove the temporary directories interrupted calls left (at start, before any
    `materialize` runs: it would remove a racing call's work in progress). How many."""
    parent = Path(data_dir) / "artifacts"
    n = 0
    if parent.is_dir():
        for entry in parent.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(entry, ignore_errors=True)
            n += 1
    return n


def remove(data_dir: str | os.PathLike[str], digest: str) -> None:
    """Delete a materialized artifact (e.g. once the table no longer holds it and nothing
    runs from it; the caller decides). Absent is fine."""
    shutil.rmtree(artifact_dir(data_dir, digest), ignore_errors=True)


def location(data_dir: str | os.PathLike[str], deployment: Mapping[str, Any],
             artifact_bytes: Callable[[str], bytes | None]) -> tuple[str, str]:
    """(cwd, source) to run `deployment` from, for the runner's `InstanceSpec`: for one that
    names an artifact, its materialized directory (written now if absent) and the entry file
    inside it, checked to exist there; else ("", source): `source` keeps its old meaning.
    `artifact_bytes(digest)` gives the stored bytes (e.g. ``store.artifact(d).data``) or None;
    ArtifactError when the artifact is not stored here or lacks the entry."""
    source = str(deployment.get("source") or "")
    digest = deployment.get("artifact")
    if not digest:
        return "", source
    digest = check_digest(digest)
    root = artifact_dir(data_dir, digest)
    if not root.is_dir():
        data = artifact_bytes(digest)
        if data is None:
            raise ArtifactError(f"artifact {digest} is not stored on this node")
        root = materialize(data_dir, digest, data)
    entry = entry_path(root, source)
    if not entry.is_file():
        raise ArtifactError(f"entry {source!r} is not a file in artifact {digest[:12]}")
    return str(root), source
