"""The replicated artifact table inside `DeploymentStore`: put, dedup, references, GC,
determinism across stores, snapshots (format 4, and format 3 from a golden file)."""

from __future__ import annotations

import hashlib
import itertools
import random
from pathlib import Path

import cbor2
import pytest

from prisn.fsm.artifacts import GRACE_MS, MAX_ARTIFACTS, ArtifactFactory
from prisn.fsm.commands import CommandFactory, encode_entry
from prisn.fsm.deployments import (
    SNAPSHOT_FORMAT_REFS,
    SNAPSHOT_FORMAT_TABLES,
    DeploymentStore,
)
from prisn.messages import EntryKind
from prisn.workloads.artifacts import ArtifactFile, digest_of, pack

GOLDEN = Path(__file__).parent / "golden"
T0 = 1_700_000_000.0


def art(n: int, entry: str = "main.py") -> tuple[bytes, str]:
    data = pack([ArtifactFile(entry, False, f"print({n})\n".encode()),
                 ArtifactFile("lib/util.py", False, b"X = 1\n")])
    return data, digest_of(data)


class Log:
    """Feeds commands to a store as consecutive entries; `now` is the proposers' clock."""

    def __init__(self, store: DeploymentStore | None = None) -> None:
        self.store = store or DeploymentStore()
        self.now = T0
        ids = (f"id{n:06d}" for n in itertools.count(1))
        self.cf = CommandFactory(clock=lambda: self.now, new_id=lambda: next(ids))
        keys = (f"ak{n}" for n in itertools.count(1))
        self.af = ArtifactFactory(clock=lambda: self.now, new_id=lambda: next(keys))
        self.entries: list[tuple[int, int, bytes]] = []

    def run(self, cmd: dict) -> tuple[int, dict]:
        index = self.store.applied_index + 1
        data = encode_entry("n1", index, cmd)
        self.entries.append((index, EntryKind.COMMAND, data))
        result = self.store.apply(index, EntryKind.COMMAND, data)
        assert result is not None
        return result

    def put(self, data: bytes | None, digest: str | None = None) -> tuple[int, dict]:
        return self.run(self.af.put(digest or digest_of(data or b""), data))

    def digests(self) -> list[str]:
        return [a["digest"] for a in self.store.artifacts(1000)[0]]


def test_put_dedup_touch_and_refusals() -> None:
    log = Log()
    data, d = art(1)
    st, body = log.put(data)
    assert st == 201 and body == {"digest": d, "size": len(data),
                                  "created_at": "2023-11-14T22:13:20.000Z"}
    log.now += 5
    assert log.put(data) == (200, body)  # same digest: stored once, first created_at
    assert log.put(None, d) == (200, body)  # a put without the bytes
    assert log.store.artifact_usage() == (1, len(data))
    assert log.put(None, "e" * 64)[0] == 404
    st, err = log.run({**log.af.put("0" * 64, data)})
    assert st == 400 and "digest mismatch" in err["message"]
    bad = b"\x01" * 700
    st, err = log.put(bad)
    assert st == 400 and "not a valid tar" in err["message"]
    st, err = log.run({**log.af.put(d, None), "data": "text"})
    assert st == 400
    assert log.digests() == [d]
    assert log.store.artifact(d).data == data


def test_deployments_reference_existing_artifacts_and_entries() -> None:
    log = Log()
    data, d = art(1)
    st, err = log.run(log.cf.create({"name": "web", "source": "main.py", "artifact": d}))
    assert st == 400 and "not stored" in err["message"] and "upload it first" in err["message"]
    log.put(data)
    st, err = log.run(log.cf.create({"name": "web", "source": "nope.py", "artifact": d}))
    assert st == 400 and "source" in err["message"] and "not a file" in err["message"]
    st, dep = log.run(log.cf.create({"name": "web", "source": "lib/util.py", "artifact": d}))
    assert st == 201 and dep["artifact"] == d
    assert log.store.artifact_info(d)["refs"] == 1
    # without artifact the field is absent (as before this feature)
    st, plain = log.run(log.cf.create({"name": "old", "source": "/srv/old.py"}))
    assert st == 201 and "artifact" not in plain
    # a patch of the source alone is checked against the same artifact
    st, err = log.run(log.cf.patch("web", {"source": "missing.py"}))
    assert st == 400 and "not a file" in err["message"]
    st, same = log.run(log.cf.patch("web", {"source": "lib/util.py"}))
    assert st == 200 and same["generation"] == 1
    st, moved = log.run(log.cf.patch("web", {"source": "main.py"}))
    assert st == 200 and moved["generation"] == 2 and moved["artifact"] == d


def test_last_reference_removed_drops_the_artifact() -> None:
    log = Log()
    (a, da), (b, db) = art(1), art(2)
    log.put(a)
    log.put(b)
    log.run(log.cf.create({"name": "x", "source": "main.py", "artifact": da}))
    log.run(log.cf.create({"name": "y", "source": "main.py", "artifact": da}))
    log.run(log.cf.delete("x"))
    assert da in log.digests()  # y still uses it
    # repointing y to b: a loses its last reference and goes in that same entry
    st, dep = log.run(log.cf.replace("y", {"source": "main.py", "artifact": db}))
    assert st == 200 and dep["artifact"] == db
    assert log.digests() == [db]
    # a patch back to "no artifact" keeps today's meaning of source (a path on the node)
    st, dep = log.run(log.cf.patch("y", {"artifact": None, "source": "/srv/y.py"}))
    assert st == 200 and "artifact" not in dep
    assert log.digests() == []
    assert log.store.artifact_usage() == (0, 0)


def test_an_unreferenced_upload_is_kept_for_the_grace_then_dropped() -> None:
    log = Log()
    data, d = art(1)
    log.put(data)
    log.now += GRACE_MS / 1000 - 1
    log.run(log.cf.create({"name": "other", "source": "x"}))
    assert log.digests() == [d]  # still within its grace
    log.put(None, d)  # a re-upload renews the grace
    log.now += GRACE_MS / 1000 - 1
    log.run(log.cf.scale("other", {"replicas": 2}))
    assert log.digests() == [d]
    log.now += 2
    log.run(log.cf.scale("other", {"replicas": 3}))  # any later command sweeps
    assert log.digests() == []
    # and a deployment can no longer name it
    st, _ = log.run(log.cf.create({"name": "late", "source": "main.py", "artifact": d}))
    assert st == 400


def test_a_re_upload_protects_an_artifact_whose_last_user_goes_meanwhile() -> None:
    """`prisn deploy` uploads (renewing the grace) then writes the deployment: a delete of the
    artifact's only other user in between must not make that write fail."""
    log = Log()
    data, d = art(1)
    log.put(data)
    log.run(log.cf.create({"name": "a", "source": "main.py", "artifact": d}))
    log.put(data)  # the second deploy's upload: 200
    log.run(log.cf.delete("a"))
    assert log.digests() == [d]
    st, _ = log.run(log.cf.create({"name": "b", "source": "main.py", "artifact": d}))
    assert st == 201
    log.run(log.cf.delete("b"))  # referenced since its put: dropped at once
    assert log.digests() == []


def test_table_bound_is_a_507() -> None:
    log = Log()
    for n in range(MAX_ARTIFACTS):
        assert log.put(art(n)[0])[0] == 201
    st, err = log.put(art(MAX_ARTIFACTS)[0])
    assert st == 507 and "limit" in err["message"]
    # once the graces end, the next put sweeps first and fits
    log.now += GRACE_MS / 1000 + 1
    assert log.put(art(MAX_ARTIFACTS)[0])[0] == 201
    assert log.store.artifact_usage()[0] == 1


def _workload(log: Log, rng: random.Random, n: int) -> None:
    blobs = [art(i) for i in range(6)]
    names = [f"d{i}" for i in range(5)]
    for _ in range(n):
        log.now += rng.choice([0.5, 1, 30, GRACE_MS / 2000])
        data, d = rng.choice(blobs)
        name = rng.choice(names)
        r = rng.random()
        if r < 0.3:
            log.put(data if rng.random() < 0.7 else None, d)
        elif r < 0.55:
            log.run(log.cf.create({"name": name, "source": "main.py", "artifact": d}))
        elif r < 0.75:
            log.run(log.cf.replace(name, {"source": rng.choice(["main.py", "lib/util.py"]),
                                          "artifact": d}))
        elif r < 0.9:
            log.run(log.cf.delete(name))
        else:
            log.run(log.cf.patch(name, {"artifact": None, "source": "/srv/x"}))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_gc_is_deterministic_and_snapshots_round_trip(seed: int) -> None:
    log = Log(DeploymentStore(dedup_capacity=30))
    _workload(log, random.Random(seed), 400)
    replica = DeploymentStore(dedup_capacity=30)
    for index, kind, data in log.entries:
        replica.apply(index, kind, data)
    assert replica.state_hash() == log.store.state_hash()
    assert replica.artifacts(1000) == log.store.artifacts(1000)
    # every stored deployment's artifact is stored, and refs are exactly the users
    deps, _ = log.store.list(limit=1000)
    users: dict[str, int] = {}
    for dep in deps:
        if "artifact" in dep:
            users[dep["artifact"]] = users.get(dep["artifact"], 0) + 1
    infos = {a["digest"]: a["refs"] for a in log.store.artifacts(1000)[0]}
    assert {d: n for d, n in infos.items() if n} == users
    snap = log.store.snapshot()
    fmt = cbor2.loads(snap)["format"]
    assert fmt == (SNAPSHOT_FORMAT_TABLES if infos else SNAPSHOT_FORMAT_REFS)
    other = DeploymentStore(dedup_capacity=30)
    other.restore(snap)
    assert other.snapshot() == snap and other.state_hash() == log.store.state_hash()
    assert other.artifacts(1000) == log.store.artifacts(1000)
    done = len(log.entries)
    _workload(log, random.Random(seed + 100), 200)
    for index, kind, data in log.entries[done:]:
        other.apply(index, kind, data)
    assert other.state_hash() == log.store.state_hash()


def test_snapshot_with_artifacts_is_format_4_and_without_is_format_3() -> None:
    log = Log()
    data, d = art(1)
    log.run(log.cf.create({"name": "plain", "source": "x"}))
    assert cbor2.loads(log.store.snapshot())["format"] == SNAPSHOT_FORMAT_REFS
    log.put(data)
    log.run(log.cf.create({"name": "web", "source": "main.py", "artifact": d}))
    snap = cbor2.loads(log.store.snapshot())
    assert snap["format"] == SNAPSHOT_FORMAT_TABLES
    assert [r["digest"] for r in snap["tables"]["artifacts"]] == [d]
    assert snap["tables"]["artifacts"][0]["data"] == data


@pytest.mark.parametrize("mutate", [
    lambda s: s["tables"]["artifacts"][0].update(data=b"x" * 10),  # bytes not the digest
    lambda s: s["tables"].update(artifacts=[]),  # a deployment names a missing artifact
    lambda s: s["tables"].update(other=[]),  # unknown table
    lambda s: s.update(tables={}),  # format 4 with no table
    lambda s: s["tables"]["artifacts"][0].update(grace_until=-1),
    lambda s: s["tables"]["artifacts"].append(dict(s["tables"]["artifacts"][0])),  # duplicate
    lambda s: s["deployments"][0].update(source="nope.py"),  # entry not in the artifact
    lambda s: s["deployments"][0].update(artifact="XYZ"),
])
def test_restore_refuses_bad_artifact_state_and_keeps_state(mutate) -> None:  # noqa: ANN001
    log = Log()
    data, d = art(1)
    log.put(data)
    log.run(log.cf.create({"name": "web", "source": "main.py", "artifact": d}))
    snap = cbor2.loads(log.store.snapshot())
    mutate(snap)
    h = log.store.state_hash()
    with pytest.raises(ValueError):
        log.store.restore(cbor2.dumps(snap, canonical=True))
    assert log.store.state_hash() == h


def test_previous_format_3_golden_snapshot_still_loads() -> None:
    """tests/unit/golden/snapshot_format3.cbor was written by the code before artifacts
    (format 3): it restores, and is written back byte for byte (no artifacts: format 3)."""
    blob = (GOLDEN / "snapshot_format3.cbor").read_bytes()
    assert hashlib.sha256(blob).hexdigest() == (
        "a0b2969eba269b594ac5b704a4c779f6a1aeb0e7fb6f1ae6c05ebc5b8ee46d7d")
    store = DeploymentStore()
    store.restore(blob)
    assert cbor2.loads(blob)["format"] == SNAPSHOT_FORMAT_REFS
    assert store.snapshot() == blob
    assert store.state_hash() == (
        "a72b29e0dede7e03f2ffccc0e51ad7a6491f2e61920fcd16d4da763038b7faa4")
    web = store.get("default", "web")
    assert web is not None and web["replicas"] == 2 and "artifact" not in web
    assert store.artifacts() == ([], 0)


def test_garbage_artifact_commands_never_fail_a_node() -> None:
    """Any artifact.put the log may hold is answered with a status apply chose on purpose
    (never a 500 from a crash), and refused ones change nothing."""
    rng = random.Random(14)
    data, d = art(1)
    values: list[object] = [None, 0, -1, True, "", "x", "sha256:" + d, d, d.upper(), "0" * 64,
                            b"", b"\x00" * 512, data, data[:700], [], {}, 1.5, "2023-11-14",
                            "2023-11-14T22:13:20.000Z", "9999-99-99T99:99:99.999Z"]
    log = Log()
    for _ in range(600):
        cmd = log.af.put(d, data)
        for field in ("digest", "data", "ts", "v"):
            if rng.random() < 0.4:
                if rng.random() < 0.2:
                    cmd.pop(field, None)
                else:
                    cmd[field] = rng.choice(values)
        before = log.store.artifacts(10)
        st, body = log.run(cmd)
        assert st in (200, 201, 400, 404, 413, 507), (st, body, cmd.keys())
        if st >= 400:
            assert log.store.artifacts(10) == before
            assert body["error"] and body["message"]
