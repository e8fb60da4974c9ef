"""Artifacts: the code a deployment runs, as one content-addressed archive (pure).

Format: a plain (uncompressed) POSIX tar holding regular files only. `pack_file` /
`pack_dir` write the canonical form: members sorted by path, each with mtime 0, uid and gid
0, empty owner names, mode 0644 or 0755 (the executable bit is the only permission kept),
no directory entries (directories are implied by paths), PAX format (long or non-ASCII
names get a PAX header). The same files therefore always pack to the same bytes, and so to
the same digest (dedup). Any tar that `read_archive` accepts can be uploaded, canonical or
not: the digest is the SHA-256 (hex) of the bytes as uploaded.

`read_archive` is the safety gate, run by the API before proposing and again by the state
machine at apply (the log is the truth): only regular files, no absolute paths, no ``..``,
``.`` or empty segments, no NUL or backslash, no duplicates, no file that is also a
directory of another, no links or devices of any kind (so nothing can point outside the
artifact), at most `MAX_FILES` files, `MAX_PATH` characters per path, `MAX_DEPTH` segments.

No I/O besides the packing helpers (which read the files they are given) and no clock:
everything else is safe on any thread and deterministic.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MiB = 1 << 20
DEFAULT_MAX_ARTIFACT_BYTES = 8 * MiB  # --max-artifact-bytes default
# The largest artifact the cluster can carry at all: one log entry must fit in a peer frame
# (transport.codec.DEFAULT_MAX_BYTES, 16 MiB) with its envelope. The flag cannot exceed it,
# and `apply` refuses anything larger whatever an API admitted.
HARD_MAX_ARTIFACT_BYTES = 12 * MiB
MAX_FILES = 10_000
MAX_PATH = 1024
MAX_DEPTH = 64
DIGEST_LEN = 64
ENTRY_CANDIDATES: tuple[str, ...] = ("main.py", "index.js", "main.sh")  # a directory's entry
SKIPPED_NAMES = frozenset({".git", "__pycache__", ".hg", ".svn", ".DS_Store"})  # pack_dir

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)


class ArtifactError(ValueError):
    """An archive, digest or path that is refused; the message says why (a 400)."""


@dataclass(frozen=True, slots=True)
class ArtifactFile:
    """One file of an archive: its relative POSIX path, executable bit, and bytes."""

    path: str
    executable: bool
    data: bytes


def digest_of(data: bytes) -> str:
    """The artifact address: SHA-256 of the archive bytes, 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


def is_digest(value: object) -> bool:
    return isinstance(value, str) and _DIGEST_RE.fullmatch(value) is not None


def check_digest(value: object, field: str = "digest") -> str:
    """`value` if it is a digest (64 lowercase hex digits), else ArtifactError. An optional
    ``sha256:`` prefix is accepted and removed."""
    if isinstance(value, str) and value.startswith("sha256:"):
        value = value[len("sha256:"):]
    if not is_digest(value):
        raise ArtifactError(f"{field}: must be a SHA-256 digest (64 lowercase hex digits)")
    return value  # type: ignore[return-value]


def check_size(size: int, limit: int) -> None:
    """ArtifactError unless 0 < size <= limit."""
    if size <= 0:
        raise ArtifactError("artifact is empty")
    if size > limit:
        raise ArtifactError(f"artifact of {size} bytes exceeds the limit of {limit} bytes")


def check_path(path: object, field: str = "path") -> str:
    """A safe relative POSIX path: no leading ``/``, no ``.``/``..``/empty segment, no NUL or
    backslash, at most `MAX_PATH` characters and `MAX_DEPTH` segments."""
    if not isinstance(path, str) or not path:
        raise ArtifactError(f"{field}: must be a non-empty relative path")
    if len(path) > MAX_PATH:
        raise ArtifactError(f"{field}: longer than {MAX_PATH} characters")
    if "\x00" in path or "\\" in path:
        raise ArtifactError(f"{field} {path[:80]!r}: must not hold NUL or backslash")
    if path.startswith("/"):
        raise ArtifactError(f"{field} {path[:80]!r}: must be relative, not absolute")
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        raise ArtifactError(f"{field} {path[:80]!r}: deeper than {MAX_DEPTH} directories")
    for part in parts:
        if part in ("", ".", ".."):
            raise ArtifactError(f"{field} {path[:80]!r}: must not hold empty, '.' or '..' "
                                "segments")
    return path


# ---------------------------------------------------------------------- reading
def read_archive(data: bytes, limit: int = HARD_MAX_ARTIFACT_BYTES) -> list[ArtifactFile]:
    """The files of an archive, sorted by path; ArtifactError for anything unsafe or not a
    plain tar (see the module docstring). Pure; any thread."""
    check_size(len(data), limit)
    files: list[ArtifactFile] = []
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for member in tf:
                if len(files) >= MAX_FILES:
                    raise ArtifactError(f"artifact holds more than {MAX_FILES} files")
                name = member.name
                while name.startswith("./"):  # `tar -C dir -cf x.tar .` writes ./main.py
                    name = name[2:]
                if member.isdir():
                    if name.rstrip("/") not in ("", "."):
                        check_path(name.rstrip("/"), "directory")
                    continue
                if member.type not in _FILE_TYPES:
                    raise ArtifactError(f"member {name[:80]!r} is not a regular file "
                                        "(links, devices and FIFOs are refused)")
                check_path(name, "file")
                if name in seen:
                    raise ArtifactError(f"file {name[:80]!r} appears twice")
                seen.add(name)
                fobj = tf.extractfile(member)
                body = fobj.read() if fobj is not None else b""
                if len(body) != member.size:
                    raise ArtifactError(f"file {name[:80]!r} is truncated")
                files.append(ArtifactFile(name, bool(member.mode & 0o111), body))
    except ArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001 - tarfile raises many types on garbage
        raise ArtifactError(f"artifact is not a valid tar archive: {exc}") from None
    if not files:
        raise ArtifactError("artifact holds no files")
    for f in files:  # a file must not also be a directory of another file
        parent = PurePosixPath(f.path).parent
        while str(parent) != ".":
            if str(parent) in seen:
                raise ArtifactError(f"{str(parent)[:80]!r} is both a file and a directory")
            parent = parent.parent
    files.sort(key=lambda f: f.path)
    return files


def file_names(data: bytes, limit: int = HARD_MAX_ARTIFACT_BYTES) -> tuple[str, ...]:
    """The sorted paths of an archive's files (`read_archive`'s checks)."""
    return tuple(f.path for f in read_archive(data, limit))


# ---------------------------------------------------------------------- writing
def pack(files: Iterable[ArtifactFile]) -> bytes:
    """The canonical archive of `files` (sorted by path; see the module docstring)."""
    items = sorted(files, key=lambda f: f.path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for f in items:
            check_path(f.path, "file")
            info = tarfile.TarInfo(f.path)
            info.size = len(f.data)
            info.mode = 0o755 if f.executable else 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tf.addfile(info, io.BytesIO(f.data))
    return buf.getvalue()


def _read_file(path: Path) -> ArtifactFile:
    st = path.stat()
    return ArtifactFile(path.name, bool(st.st_mode & 0o111), path.read_bytes())


def pack_file(path: str | os.PathLike[str]) -> tuple[bytes, str]:
    """(archive, entry) of one file: the archive holds it under its base name."""
    p = Path(path)
    f = _read_file(p)
    return pack([f]), f.path


def pack_dir(path: str | os.PathLike[str], entry: str | None = None,
             limit: int = HARD_MAX_ARTIFACT_BYTES) -> tuple[bytes, str]:
    """(archive, entry) of a directory's regular files, recursively (`SKIPPED_NAMES` and
    ``*.pyc`` left out). A symlink is an ArtifactError (an artifact holds files only). The
    entry is `entry` (a path relative to the directory that must be one of its files), else
    the first of `ENTRY_CANDIDATES` present. Stops reading once `limit` bytes are passed."""
    root = Path(path)
    files: list[ArtifactFile] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_NAMES)
        for d in dirnames:
            if (Path(dirpath) / d).is_symlink():
                raise ArtifactError(f"{Path(dirpath) / d} is a symlink: an artifact holds "
                                    "regular files only")
        for name in sorted(filenames):
            if name in SKIPPED_NAMES or name.endswith(".pyc"):
                continue
            full = Path(dirpath) / name
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise ArtifactError(f"{full} is a symlink: an artifact holds regular files "
                                    "only")
            if not stat.S_ISREG(st.st_mode):
                continue  # sockets, FIFOs: never code
            rel = full.relative_to(root).as_posix()
            total += st.st_size
            if total > limit:
                raise ArtifactError(f"{root} holds more than {limit} bytes of files")
            files.append(ArtifactFile(rel, bool(st.st_mode & 0o111), full.read_bytes()))
            if len(files) > MAX_FILES:
                raise ArtifactError(f"{root} holds more than {MAX_FILES} files")
    if not files:
        raise ArtifactError(f"{root} holds no files")
    names = {f.path for f in files}
    if entry is not None:
        entry = check_path(PurePosixPath(entry).as_posix(), "entry")
        if entry not in names:
            raise ArtifactError(f"entry {entry!r} is not a file in {root}")
    else:
        entry = next((c for c in ENTRY_CANDIDATES if c in names), None)
        if entry is None:
            raise ArtifactError(f"{root} has none of {', '.join(ENTRY_CANDIDATES)}: name the "
                                "entry file with --entry")
    return pack(files), entry


def pack_path(path: str | os.PathLike[str], entry: str | None = None,
              limit: int = HARD_MAX_ARTIFACT_BYTES) -> tuple[bytes, str]:
    """`pack_file` or `pack_dir`, by what `path` is; ArtifactError if it is neither."""
    p = Path(path)
    if p.is_dir():
        return pack_dir(p, entry, limit)
    if p.is_file():
        if entry is not None and entry != p.name:
            raise ArtifactError(f"--entry {entry!r} given for a single file {p.name!r}")
        if p.stat().st_size > limit:
            raise ArtifactError(f"{p} is larger than {limit} bytes")
        return pack_file(p)
    raise ArtifactError(f"{p} is neither a file nor a directory")


# ---------------------------------------------------------------------- layout
def artifact_dir(data_dir: str | os.PathLike[str], digest: str) -> Path:
    """Where a node materializes an artifact: ``<data-dir>/artifacts/<digest>/``."""
    return Path(data_dir) / "artifacts" / check_digest(digest)


def entry_path(root: str | os.PathLike[str], source: str) -> Path:
    """The file `source` names inside a materialized artifact at `root` (checked to stay
    inside it: `check_path`)."""
    return Path(root) / check_path(source, "source")
