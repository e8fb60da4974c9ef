"""The pure artifact module (packing, digest, safety, bounds) and materialization on disk."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from prisn.workloads.artifacts import (
    ArtifactError,
    ArtifactFile,
    artifact_dir,
    check_digest,
    digest_of,
    entry_path,
    file_names,
    pack,
    pack_dir,
    pack_path,
    read_archive,
)
from prisn.workloads.materialize import clear_stale, materialize


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def _member(name: str, typ: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = typ
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def test_packing_is_deterministic_whatever_the_mtimes_and_order(tmp_path: Path) -> None:
    files = {"main.py": b"print('hi')\n", "lib/util.py": b"X = 1\n", "z/a/deep.txt": b"d"}
    a = _tree(tmp_path / "a", files)
    b = _tree(tmp_path / "b", dict(reversed(list(files.items()))))
    os.utime(a / "main.py", (1, 1))
    os.utime(b / "main.py", (2_000_000_000, 2_000_000_000))
    (a / "lib" / "util.py").chmod(0o600)  # only the executable bit is kept
    data_a, entry_a = pack_dir(a)
    data_b, entry_b = pack_dir(b)
    assert data_a == data_b and entry_a == entry_b == "main.py"
    assert digest_of(data_a) == digest_of(data_b)
    assert file_names(data_a) == ("lib/util.py", "main.py", "z/a/deep.txt")
    with tarfile.open(fileobj=io.BytesIO(data_a)) as tf:
        for m in tf:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
            assert m.mode == 0o644
    # the executable bit survives, and changes the digest
    (b / "main.py").chmod(0o755)
    data_x, _ = pack_dir(b)
    assert digest_of(data_x) != digest_of(data_a)
    assert [f.executable for f in read_archive(data_x) if f.path == "main.py"] == [True]


def test_digest_is_sha256_hex_and_checked() -> None:
    assert digest_of(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    assert check_digest("sha256:" + "a" * 64) == "a" * 64
    for bad in ("A" * 64, "a" * 63, "g" * 64, 5, None, ""):
        with pytest.raises(ArtifactError):
            check_digest(bad)


def test_pack_file_and_dir_entries(tmp_path: Path) -> None:
    f = tmp_path / "web.py"
    f.write_bytes(b"print(1)")
    data, entry = pack_path(f)
    assert entry == "web.py" and file_names(data) == ("web.py",)
    d = _tree(tmp_path / "app", {"index.js": b"1", "main.sh": b"2", "sub/x.js": b"3",
                                 "__pycache__/c.pyc": b"c", ".git/HEAD": b"h", "a.pyc": b"p"})
    data, entry = pack_path(d)
    assert entry == "index.js" and file_names(data) == ("index.js", "main.sh", "sub/x.js")
    assert pack_path(d, "sub/x.js")[1] == "sub/x.js"
    with pytest.raises(ArtifactError, match="not a file"):
        pack_path(d, "nope.js")
    with pytest.raises(ArtifactError, match="--entry"):
        pack_path(_tree(tmp_path / "noentry", {"app.rb": b"x"}))
    with pytest.raises(ArtifactError, match="neither"):
        pack_path(tmp_path / "missing")
    (d / "link").symlink_to("/etc/passwd")
    with pytest.raises(ArtifactError, match="symlink"):
        pack_path(d)


def test_pack_bounds(tmp_path: Path) -> None:
    d = _tree(tmp_path / "big", {"main.py": b"x" * 5000})
    with pytest.raises(ArtifactError, match="more than 4096 bytes"):
        pack_dir(d, limit=4096)
    with pytest.raises(ArtifactError, match="larger than"):
        pack_path(d / "main.py", limit=4096)


@pytest.mark.parametrize("members,why", [
    ([(_member("/etc/passwd"), b"x")], "absolute"),
    ([(_member("../evil.py"), b"x")], "'..'"),
    ([(_member("a/../../evil.py"), b"x")], "'..'"),
    ([(_member("a//b.py"), b"x")], "empty"),
    ([(_member("link", tarfile.SYMTYPE, linkname="/etc/passwd"), None)], "not a regular"),
    ([(_member("main.py"), b"x"), (_member("hard", tarfile.LNKTYPE, linkname="main.py"),
                                   None)], "not a regular"),
    ([(_member("dev", tarfile.CHRTYPE), None)], "not a regular"),
    ([(_member("fifo", tarfile.FIFOTYPE), None)], "not a regular"),
    ([(_member("a.py"), b"1"), (_member("a.py"), b"2")], "twice"),
    ([(_member("a"), b"1"), (_member("a/b.py"), b"2")], "both a file and a directory"),
    ([(_member("d", tarfile.DIRTYPE), None)], "no files"),
    ([(_member("back\\slash.py"), b"x")], "backslash"),
])
def test_unsafe_archives_are_refused(members: list, why: str) -> None:
    with pytest.raises(ArtifactError, match=why):
        read_archive(_tar(members))


def test_garbage_empty_and_oversize_are_refused() -> None:
    with pytest.raises(ArtifactError, match="empty"):
        read_archive(b"")
    with pytest.raises(ArtifactError, match="not a valid tar"):
        read_archive(b"\x01" * 1024)
    data = pack([ArtifactFile("main.py", False, b"x" * 100)])
    with pytest.raises(ArtifactError, match="exceeds the limit"):
        read_archive(data, limit=len(data) - 1)
    with pytest.raises(ArtifactError, match="not a valid tar|truncated"):
        read_archive(data[:600])


def test_a_plain_tar_of_dot_is_accepted(tmp_path: Path) -> None:
    """What `tar -C dir -cf x.tar .` writes: a ./ directory and ./-prefixed names."""
    raw = _tar([(_member("./", tarfile.DIRTYPE), None), (_member("./main.py"), b"print(1)"),
                (_member("./lib/", tarfile.DIRTYPE), None), (_member("./lib/u.py"), b"u")])
    assert file_names(raw) == ("lib/u.py", "main.py")


def test_layout_paths_stay_inside(tmp_path: Path) -> None:
    d = "ab" * 32
    assert artifact_dir(tmp_path, d) == tmp_path / "artifacts" / d
    assert entry_path(tmp_path, "lib/x.py") == tmp_path / "lib" / "x.py"
    for bad in ("../x", "/etc/passwd", "a/./b", ""):
        with pytest.raises(ArtifactError):
            entry_path(tmp_path, bad)
    with pytest.raises(ArtifactError):
        artifact_dir(tmp_path, "../../etc")


def test_materialize_once_verified_atomic(tmp_path: Path) -> None:
    data = pack([ArtifactFile("main.py", False, b"print(1)\n"),
                 ArtifactFile("bin/run.sh", True, b"#!/bin/sh\necho hi\n")])
    digest = digest_of(data)
    with pytest.raises(ArtifactError, match="digest mismatch"):
        materialize(tmp_path, "0" * 64, data)
    assert not (tmp_path / "artifacts" / ("0" * 64)).exists()
    out = materialize(tmp_path, digest, data)
    assert out == tmp_path / "artifacts" / digest
    assert (out / "main.py").read_bytes() == b"print(1)\n"
    assert (out / "bin" / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (out / "main.py").stat().st_mode & 0o777 == 0o644
    mtime = (out / "main.py").stat().st_mtime_ns
    assert materialize(tmp_path, digest, data) == out  # idempotent: not rewritten
    assert (out / "main.py").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == [digest]
    # a crash's leftover temporary directory is cleared at start
    (tmp_path / "artifacts" / f".tmp-{digest}-dead").mkdir()
    assert clear_stale(tmp_path) == 1
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == [digest]


def test_materialize_refuses_an_unsafe_archive_and_writes_nothing(tmp_path: Path) -> None:
    raw = _tar([(_member("../escape.py"), b"x")])
    with pytest.raises(ArtifactError):
        materialize(tmp_path / "data", digest_of(raw), raw)
    assert not (tmp_path / "escape.py").exists()
    assert not (tmp_path / "data" / "artifacts").exists() or not any(
        (tmp_path / "data" / "artifacts").iterdir())


def test_location_materializes_for_the_runner(tmp_path: Path) -> None:
    from prisn.workloads.materialize import location

    data = pack([ArtifactFile("app/main.py", False, b"print(1)\n")])
    digest = digest_of(data)
    calls: list[str] = []

    def stored(d: str) -> bytes | None:
        calls.append(d)
        return data if d == digest else None

    assert location(tmp_path, {"source": "/srv/x.py"}, stored) == ("", "/srv/x.py")
    cwd, source = location(tmp_path, {"source": "app/main.py", "artifact": digest}, stored)
    assert Path(cwd) == tmp_path / "artifacts" / digest and source == "app/main.py"
    assert (Path(cwd) / source).read_bytes() == b"print(1)\n"
    location(tmp_path, {"source": "app/main.py", "artifact": digest}, stored)
    assert calls == [digest]  # materialized once
    with pytest.raises(ArtifactError, match="not a file"):
        location(tmp_path, {"source": "nope.py", "artifact": digest}, stored)
    with pytest.raises(ArtifactError, match="not stored"):
        location(tmp_path, {"source": "main.py", "artifact": "1" * 64}, stored)
    with pytest.raises(ArtifactError):
        location(tmp_path, {"source": "../../etc/passwd", "artifact": digest}, stored)
