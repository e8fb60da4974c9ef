"""Ad-hoc executions (issue 15: `prisn run SCRIPT`, inline `source`): the API's command
building and validation (`build_create`), the pure helpers, and the executions table's
ad-hoc rows inside a real `DeploymentStore`: apply checks, per-namespace history bound
with deterministic eviction, artifact pins against GC, listing, and snapshot round trip."""

from __future__ import annotations

import itertools

import pytest

from actors.api.errors import PayloadTooLarge
from actors.api.executions import build_create, create_command
from actors.runner import EXTENSIONS as RUNNER_EXTENSIONS
from prisn.fsm.artifacts import GRACE_MS, ArtifactFactory
from prisn.fsm.commands import COMMAND_VERSION, CommandFactory, encode_entry, format_ts
from prisn.fsm.deployments import DeploymentStore
from prisn.fsm.executions import ExecutionTable
from prisn.fsm.validation import ValidationError
from prisn.messages import EntryKind
from prisn.workloads.adhoc import (
    EXTENSIONS,
    default_entry,
    default_name,
    infer_runtime,
    inline_artifact,
)
from prisn.workloads.artifacts import ArtifactFile, digest_of, pack, read_archive

T0 = 1_780_315_200.0
DIGEST = "ab" * 32


def build(body: object, **kw: object) -> tuple[dict, bool, bytes | None]:
    ids = (f"id{n}" for n in itertools.count(1))
    return build_create(body, namespace=None, key=None, clock=lambda: T0,
                        make_id=lambda: next(ids), **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- helpers
def test_helpers_agree_with_the_runner_and_name_things() -> None:
    assert EXTENSIONS == RUNNER_EXTENSIONS
    assert infer_runtime("a/b/job.PY") == "python3" and infer_runtime("x") is None
    assert default_entry("python3") == "main.py" and default_entry("ruby") == "main"
    assert default_name("dir/my script.v2.py") == "my-script-v2"
    assert default_name("_.py") == "run" and len(default_name("x" * 99 + ".sh")) == 63
    data, digest = inline_artifact("print(1)\n", "main.py")
    assert digest == digest_of(data) and inline_artifact("print(1)\n", "main.py")[1] == digest
    [f] = read_archive(data)
    assert (f.path, f.data, f.executable) == ("main.py", b"print(1)\n", False)


# ---------------------------------------------------------------------- build_create
def test_inline_source_becomes_an_artifact_and_the_command_names_it() -> None:
    cmd, run_async, data = build({"source": "print('hi')\n", "runtime": "python3",
                                  "async": True, "env": {"A": "1"}, "args": ["x"],
                                  "timeout": 30, "namespace": "team"})
    assert run_async and data is not None
    assert cmd == {"v": COMMAND_VERSION, "op": "execution.create", "key": "id1",
                   "ts": format_ts(T0), "id": "id2", "ns": "team",
                   "artifact": digest_of(data), "entry": "main.py", "runtime": "python3",
                   "name": "main", "env": {"A": "1"}, "args": ["x"], "timeout": 30}
    # the runtime told by the entry's extension; a name given is the execution's name
    cmd, _, data2 = build({"source": "echo hi", "entry": "hello.sh", "name": "greet"})
    assert (cmd["runtime"], cmd["entry"], cmd["name"]) == ("bash", "hello.sh", "greet")
    assert cmd["artifact"] == digest_of(data2 or b"")
    # an uploaded artifact: no bytes to put
    cmd, _, data = build({"artifact": "sha256:" + DIGEST, "entry": "tools/job.py"})
    assert data is None and (cmd["artifact"], cmd["runtime"], cmd["name"]) == (
        DIGEST, "python3", "job")
    assert "deployment_id" not in cmd
    # the deployment form is unchanged
    cmd, run_async = create_command({"name": "j"}, namespace=None, key="k1")
    assert cmd["name"] == "j" and "artifact" not in cmd and not run_async


@pytest.mark.parametrize(("body", "text"), [
    ({}, "either deployment_id/name or source"),
    ({"namespace": "x"}, "either deployment_id/name or source"),
    ({"source": "x", "artifact": DIGEST, "entry": "a.py"}, "not both"),
    ({"source": "x", "runtime": "bash", "deployment_id": "d1"}, "names no deployment"),
    ({"source": "print(1)"}, "runtime: required"),
    ({"source": "print(1)", "entry": "job"}, "runtime: required"),
    ({"source": "", "runtime": "bash"}, "source"),
    ({"source": 5, "runtime": "bash"}, "source"),
    ({"source": "x", "runtime": "bad runtime!"}, "runtime"),
    ({"source": "x", "entry": "../up.py"}, "entry"),
    ({"source": "x", "entry": "/abs.py"}, "entry"),
    ({"source": "x", "runtime": "bash", "name": "no/slash"}, "name"),
    ({"artifact": DIGEST}, "entry: required"),
    ({"artifact": "nope", "entry": "a.py"}, "artifact"),
    ({"artifact": DIGEST, "entry": "a.rb"}, "runtime: required"),
    ({"name": "j", "runtime": "bash"}, "only for an ad-hoc run"),
    ({"name": "j", "entry": "a.py"}, "only for an ad-hoc run"),
    ({"source": "x", "runtime": "bash", "timeout": 0}, "timeout"),
])
def test_bad_bodies_are_400s(body: dict, text: str) -> None:
    with pytest.raises(ValidationError) as err:
        build(body)
    assert text in err.value.message


def test_sizes_are_bounded_by_the_flags() -> None:
    body = {"source": "x" * 2000, "runtime": "bash"}
    with pytest.raises(PayloadTooLarge, match="--max-spec-bytes"):
        build(body, max_source_bytes=1999)
    with pytest.raises(PayloadTooLarge, match="--max-artifact-bytes"):
        build(body, max_artifact_bytes=2048)  # the tar adds headers and padding
    assert build(body, max_source_bytes=2000)[2] is not None


# ---------------------------------------------------------------------- the table
class Log:
    """Commands fed to a real store as consecutive entries; `now` is the proposers' clock."""

    def __init__(self) -> None:
        self.store = DeploymentStore()
        self.now = T0
        keys = (f"k{n}" for n in itertools.count(1))
        self.af = ArtifactFactory(clock=lambda: self.now, new_id=lambda: next(keys))
        self.cf = CommandFactory(clock=lambda: self.now, new_id=lambda: next(keys))
        self.keys = keys

    def run(self, cmd: dict) -> tuple[int, dict]:
        index = self.store.applied_index + 1
        result = self.store.apply(index, EntryKind.COMMAND, encode_entry("n1", index, cmd))
        assert result is not None
        return result

    def put(self, data: bytes) -> str:
        st, body = self.run(self.af.put(digest_of(data), data))
        assert st in (200, 201), body
        return body["digest"]

    def create(self, exec_id: str, digest: str, entry: str = "main.py", ns: str = "default",
               **extra: object) -> tuple[int, dict]:
        return self.run({"v": COMMAND_VERSION, "op": "execution.create", "key": next(self.keys),
                         "ts": format_ts(self.now), "id": exec_id, "ns": ns,
                         "artifact": digest, "entry": entry, "runtime": "python3",
                         "name": "main", **extra})

    def finish(self, exec_id: str, status: str = "Completed") -> None:
        for st, extra in (("Pending", {"node": "n1"}), ("Running", {}),
                          (status, {"exit_code": 0})):
            code, body = self.run({"v": COMMAND_VERSION, "op": "execution.update",
                                   "key": next(self.keys), "ts": format_ts(self.now),
                                   "id": exec_id, "status": st, "attempt": 1, **extra})
            assert code == 200, body


def script(n: int) -> bytes:
    return pack([ArtifactFile("main.py", False, f"print({n})\n".encode())])


def test_adhoc_rows_are_checked_at_apply_and_listed() -> None:
    log = Log()
    d = log.put(script(1))
    assert log.create("e0", "cd" * 32)[0] == 400  # not stored
    st, err = log.create("e0", d, entry="other.py")
    assert st == 400 and err["message"].startswith("entry:")
    st, e = log.create("e1", d, env={"A": "1"}, args=["x"], timeout=5)
    assert st == 201
    assert e["deployment_id"] is None and e["name"] == "main" and e["status"] == "Pending"
    assert (e["artifact"], e["entry"], e["runtime"]) == (d, "main.py", "python3")
    rec = log.store.execution("e1")
    assert rec is not None and (rec.env, rec.args, rec.timeout) == ({"A": "1"}, ["x"], 5)
    assert log.create("e1", d)[0] == 409  # duplicate id
    assert log.create("e2", d, ns="other")[0] == 201
    assert [i["id"] for i in log.store.executions(namespace="default")["items"]] == ["e1"]
    assert log.store.executions()["total"] == 2
    # no deployment id selects them, and the cron view never sees them
    assert log.store.executions(deployment_id="/default")["total"] == 0
    assert log.store.cron_view()[2] == {}
    assert [x.id for x in log.store.unfinished_executions()] == ["e1", "e2"]
    before = log.store.state_hash()
    for bad in ({"runtime": ""}, {"entry": "../x"}, {"artifact": "x"}, {"name": "a b"},
                {"deployment_id": "d1"}, {"extra": 1}):
        st, err = log.run({"v": COMMAND_VERSION, "op": "execution.create", "key": next(log.keys),
                           "ts": format_ts(log.now), "id": "e9", "ns": "default",
                           "artifact": d, "entry": "main.py", "runtime": "python3",
                           "name": "main", **bad})
        assert st == 400, bad
    assert log.store.executions()["total"] == 2 and log.store.state_hash() != before


def test_history_bound_per_namespace_evicts_deterministically() -> None:
    log = Log()
    d = log.put(script(1))
    for n in range(2):
        assert log.create(f"a{n}", d, history=2)[0] == 201
    # two unfinished: a third is refused (the bound counts the namespace's ad-hoc runs)
    st, err = log.create("a2", d, history=2)
    assert st == 409 and "namespace default already has 2 unfinished" in err["message"]
    assert log.create("b0", d, ns="other", history=2)[0] == 201  # another namespace
    log.finish("a0")
    assert log.create("a2", d, history=2)[0] == 201  # evicts a0, the oldest finished
    assert [i["id"] for i in log.store.executions(namespace="default")["items"]] == [
        "a2", "a1"]
    # a deployment's executions are not counted with them
    _, dep = log.run(log.cf.create({"name": "j", "type": "job", "source": "print(1)"}))
    st, _ = log.run({"v": COMMAND_VERSION, "op": "execution.create", "key": "dj",
                     "ts": format_ts(log.now), "id": "j1", "ns": "default", "name": "j",
                     "history": 2})
    assert st == 201 and log.store.executions(deployment_id=dep["id"])["total"] == 1


def test_unfinished_runs_pin_their_artifact_against_gc() -> None:
    log = Log()
    d1, d2 = log.put(script(1)), log.put(script(2))
    assert log.create("e1", d1)[0] == 201
    log.now += GRACE_MS / 1000 + 1  # both graces are over: the next command sweeps
    log.put(script(3))
    assert log.store.artifact(d1) is not None  # pinned by e1
    assert log.store.artifact(d2) is None  # nobody runs it
    log.finish("e1")  # unpinned in that entry, swept by it (grace long over)
    assert log.store.artifact(d1) is None
    # the execution stays; a new run of a collected artifact is refused (upload it again)
    assert log.store.execution("e1").status == "Completed"  # type: ignore[union-attr]
    assert log.create("e2", d1)[0] == 400


def test_snapshot_round_trip_keeps_adhoc_rows_and_pins() -> None:
    log = Log()
    d = log.put(script(1))
    assert log.create("e1", d, args=["a"])[0] == 201
    assert log.create("e2", d)[0] == 201
    log.finish("e2", "Failed")
    restored = DeploymentStore()
    restored.restore(log.store.snapshot())
    assert restored.state_hash() == log.store.state_hash()
    assert restored.executions() == log.store.executions()
    rec = restored.execution("e1")
    assert rec is not None and rec.artifact == d and rec.deployment_id is None
    section = log.store._executions.section()  # noqa: SLF001 - the persisted form
    table = ExecutionTable.from_section(section, [])
    assert table.section() == section and table.pins == {d: 1}
    # a row with no deployment must be an ad-hoc one, and an ad-hoc one has no cron time
    bad = [*section["rows"][0][:17]]
    with pytest.raises(ValueError, match="artifact"):
        ExecutionTable.from_section({**section, "rows": [bad]}, [])
    bad = [*section["rows"][0]]
    bad[7] = 5
    with pytest.raises(ValueError, match="no deployment"):
        ExecutionTable.from_section({**section, "rows": [bad]}, [])
