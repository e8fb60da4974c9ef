"""The workload shells' decisions, stepped by hand with a fake Raft status, a real store and
a recording propose path (no threads started): the node-side controller fences without
quorum contact and unfences only once caught up, sends the full desired list, coalesces
and rate-bounds status reports, proposes node metadata; the scheduler shell runs rounds only
while leading, one in flight, and counts members it has not heard from as down."""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from typing import Any

import pytest
import zmq

import actors.scheduler as sched_mod
import actors.workloads as wl_mod
from actors.scheduler import SchedulerActor
from actors.workloads import WorkloadsActor, parse_instance_id
from prisn.fsm.placements import batch_command
from prisn.fsm.tokens import ts_millis
from prisn.messages import Role
from prisn.raft.boot import Membership
from prisn.workloads.model import Slot
from prisn.workloads.scheduler import Place
from tests.feeder import Feeder

TS = "2025-01-01T00:00:00.000Z"


@dataclass
class Peer:
    last_contact_ticks: int


@dataclass
class Status:
    role: Role = Role.FOLLOWER
    term: int = 1
    quorum_ok: bool = True
    commit_index: int = 0
    membership: Any = None
    progress: dict = field(default_factory=dict)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Proposals:
    def __init__(self) -> None:
        self.cmds: list[dict] = []
        self.futs: list[concurrent.futures.Future] = []

    def __call__(self, cmd: dict, timeout: float) -> concurrent.futures.Future:
        self.cmds.append(cmd)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self.futs.append(fut)
        return fut


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(wl_mod.time, "monotonic", c)
    monkeypatch.setattr(sched_mod.time, "monotonic", c)
    return c


def controller(f: Feeder, st: Status, props: Proposals, **kw: Any) -> tuple[WorkloadsActor, list]:
    a = WorkloadsActor(zmq.Context.instance(), "n1", f.store, raft_status=lambda: st,
                       submit=props, data_dir="/nonexistent", fence_after=1.0,
                       fence_grace=0.3, **kw)
    sent: list = []
    a.send = lambda to, msg: sent.append((to, msg))  # type: ignore[method-assign]
    return a, sent


def placed_web(f: Feeder) -> None:
    f.create(name="web", type="service", replicas=1, port=8080, source="/srv/web.py",
             env={"MODE": "prod"})
    f.run(batch_command([Place(Slot("default", "web", 0), "n1", None)], key="pl", ts=TS))


def test_controller_fences_and_unfences_only_when_caught_up(clock: Clock) -> None:
    f = Feeder()
    placed_web(f)
    st = Status(commit_index=f.store.applied_index + 5)  # behind what it knows is committed
    props = Proposals()
    a, sent = controller(f, st, props)
    a.step()
    assert a.fenced and sent[-1][1].instances == []  # starts fenced
    for i in range(4):  # catching up while writes go on: the target is the commit index
        f.create(name=f"x{i}")  # known when contact came back, not the moving one
        st.commit_index = f.store.applied_index + 3
        clock.t += 0.1
        a.step()
        assert a.fenced
    f.create(name="x4")
    st.commit_index = f.store.applied_index + 3
    clock.t += 0.1
    a.step()
    assert not a.fenced
    inst = sent[-1][1].instances
    assert [i["id"] for i in inst] == ["default.web.0.1"] and inst[0]["port"] == 8080
    assert inst[0]["env"] == {"MODE": "prod"} and inst[0]["source"] == "/srv/web.py"
    assert sent[-1][1].stop_grace_ms == -1
    # quorum contact lost: fenced after fence_after, stopped with the short grace
    st.quorum_ok = False
    clock.t += 0.9
    a.step()
    assert not a.fenced
    clock.t += 0.2
    a.step()
    assert a.fenced and a.fences == 1
    assert sent[-1][1].instances == [] and sent[-1][1].stop_grace_ms == 300
    st.quorum_ok = True
    st.commit_index = f.store.applied_index  # nothing new committed meanwhile
    clock.t += 0.1
    a.step()
    assert not a.fenced and len(sent[-1][1].instances) == 1


def test_controller_coalesces_reports_and_bounds_their_rate(clock: Clock) -> None:
    f = Feeder()
    placed_web(f)
    st = Status(commit_index=f.store.applied_index)
    props = Proposals()
    a, _ = controller(f, st, props)
    a.step()
    base = {"id": "default.web.0.1", "pid": 10, "started_at": 1, "exit_code": None,
            "message": ""}
    for restarts in range(50):  # a crash loop: many reports of one instance
        a.on_runner_status([{**base, "state": "Exited", "restarts": restarts}])
    a.step()
    reports = [c for c in props.cmds if c["op"] == "instance.report"]
    assert len(reports) == 1 and len(reports[0]["reports"]) == 1
    assert reports[0]["reports"][0]["restarts"] == 49  # the latest only
    a.on_runner_status([{**base, "state": "Running", "restarts": 50}])
    clock.t += 0.5
    a.step()
    assert len([c for c in props.cmds if c["op"] == "instance.report"]) == 1  # in flight
    props.futs[-1].set_exception(RuntimeError("no quorum"))
    clock.t += 0.6
    a.step()
    reports = [c for c in props.cmds if c["op"] == "instance.report"]
    assert len(reports) == 2 and reports[1]["reports"][0]["state"] == "Running"
    assert f.run(reports[1])[1] == {"recorded": 1, "dropped": 0}


def test_no_workloads_node_proposes_its_metadata_and_runs_nothing(clock: Clock) -> None:
    f = Feeder()
    placed_web(f)
    props = Proposals()
    a, sent = controller(f, Status(), props, runs_workloads=False)
    a.step()
    assert sent == [] and [c["op"] for c in props.cmds] == ["node.meta"]
    a.step()
    assert len(props.cmds) == 1  # one in flight
    f.run(props.cmds[0])
    clock.t += 2
    a.step()
    assert len(props.cmds) == 1 and not f.store.runs_workloads("n1")


def test_parse_instance_id() -> None:
    assert parse_instance_id("ns.web.2.17") == ("ns", "web", 2, 17)
    assert parse_instance_id("web-0") is None and parse_instance_id("a.b.c.d") is None


def test_scheduler_rounds_only_while_leading_one_in_flight(clock: Clock) -> None:
    f = Feeder()
    f.create(name="web", type="service", replicas=2, port=0)
    members = Membership(cluster="c", voters={"n1": "a1", "n2": "a2", "n3": "a3"},
                         learners={})
    st = Status(role=Role.FOLLOWER, membership=members,
                progress={"n2": Peer(0), "n3": Peer(10**9)})
    props = Proposals()
    s = SchedulerActor(zmq.Context.instance(), "n1", f.store, raft_status=lambda: st,
                       submit=props, tick_seconds=0.01, node_down_after=1.0)
    s.step()
    assert props.cmds == [] and not s.leading
    st.role = Role.LEADER
    s.step()
    # a new leader gives everyone a full node_down_after: n3 counts as live at first
    assert len(props.cmds) == 1
    nodes = sorted(d["node"] for d in props.cmds[0]["decisions"])
    assert len(nodes) == 2 and len(set(nodes)) == 2
    clock.t += 0.1
    s.step()
    assert len(props.cmds) == 1  # one round in flight
    props.futs[0].set_result((200, {}))  # answered, but not applied (it was refused)
    clock.t += 2.0  # now n3 was not heard from for longer than node_down_after
    s.step()
    assert len(props.cmds) == 2
    assert all(d["node"] in ("n1", "n2") for d in props.cmds[1]["decisions"])
    f.run(props.cmds[1])
    props.futs[1].set_result((200, {}))
    clock.t += 0.1
    s.step()
    assert len(props.cmds) == 2 and s.unplaced == 0  # settled: nothing to do
    f.run({"v": 1, "op": "node.meta", "key": "m", "ts": TS, "node": "n2", "workloads": False})
    clock.t += 0.1
    s.step()
    assert [d["node"] for d in props.cmds[2]["decisions"]] == ["n1"]  # moved off n2


def test_controller_injects_secrets_and_a_rotation_changes_the_generation(
        clock: Clock) -> None:
    from prisn.fsm.secrets import SecretFactory
    from prisn.secretbox import SecretBox, opener

    box = SecretBox(b"k" * 32)
    f = Feeder()
    sf = SecretFactory(box)
    f.run(sf.create({"name": "db", "data": {"PASSWORD": "s3cret", "MODE": "secret"}}))
    f.create(name="web", type="service", replicas=1, port=0, secrets=["db"],
             env={"MODE": "prod"})
    f.run(batch_command([Place(Slot("default", "web", 0), "n1", None)], key="pl", ts=TS))
    st = Status(commit_index=f.store.applied_index)
    a, sent = controller(f, st, Proposals(), decrypt=opener(box))
    a.step()
    (inst,) = sent[-1][1].instances
    assert inst["env"] == {"PASSWORD": "s3cret", "MODE": "prod"}  # its own env wins
    gen = inst["generation"]
    f.run(sf.update("db", {"data": {"PASSWORD": "n3w"}}))
    clock.t += 0.1
    a.step()
    (inst,) = sent[-1][1].instances
    assert inst["env"] == {"PASSWORD": "n3w", "MODE": "prod"} and inst["generation"] != gen
    # a node that cannot open them runs nothing of that deployment (and says so in its log)
    b, sent_b = controller(f, st, Proposals(), decrypt=opener(None))
    b.step()
    assert sent_b[-1][1].instances == []


def test_controller_unfences_only_after_a_read_barrier(clock: Clock) -> None:
    """With the node's read barrier (the server's wiring): contact alone is not enough (a
    deposed leader's own commit index is stale), a barrier that fails is retried."""
    f = Feeder()
    placed_web(f)
    st = Status(commit_index=0)  # stale: it would pass the fallback check at once
    barriers = Proposals()
    a, sent = controller(f, st, Proposals(), barrier=lambda t: barriers({}, t))
    a.step()
    assert a.fenced and len(barriers.futs) == 1
    clock.t += 0.1
    a.step()
    assert a.fenced and len(barriers.futs) == 1  # one in flight
    barriers.futs[0].set_exception(RuntimeError("no quorum"))
    a.step()
    assert a.fenced
    a.step()
    assert len(barriers.futs) == 2
    barriers.futs[1].set_result(None)
    a.step()
    assert not a.fenced and len(sent[-1][1].instances) == 1


def test_controller_rolls_its_slot_only_after_lower_slots_settled_in_the_log(
        clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slot 1 (on n1) keeps the old spec while slot 0 (on n2) has not reported Running at the
    new generation for roll_min_ready (report ts - started_at, both from the log)."""
    f = Feeder()
    f.create(name="web", type="service", replicas=2, port=0, source="/srv/web.py",
             env={"MODE": "a"})
    f.run(batch_command([Place(Slot("default", "web", 0), "n2", None),
                         Place(Slot("default", "web", 1), "n1", None)], key="pl", ts=TS))
    st = Status(commit_index=f.store.applied_index)
    a, sent = controller(f, st, Proposals(), roll_min_ready=3.0)
    a.step()
    (old,) = sent[-1][1].instances
    assert old["id"] == "default.web.1.2" and old["env"] == {"MODE": "a"}
    f.run(f.cf.patch("web", {"env": {"MODE": "b"}}))
    new_gen = f.store.get("default", "web")["generation"]
    assert new_gen != old["generation"]
    clock.t += 0.1
    a.step()
    assert sent[-1][1].instances == [old]  # slot 0 has not rolled yet

    def slot0(state: str, gen: int, ran_ms: int, key: str) -> None:
        started = 1_735_689_600_000  # 2025-01-01T00:00:00Z
        ts = f"2025-01-01T00:00:{ran_ms // 1000:02d}.{ran_ms % 1000:03d}Z"
        f.run({"v": 1, "op": "instance.report", "key": key, "ts": ts, "node": "n2",
               "reports": [{"ns": "default", "name": "web", "i": 0, "epoch": 1, "state": state,
                            "pid": 5, "started_at": started, "exit_code": None, "restarts": 0,
                            "message": "", "generation": gen}]})
        clock.t += 2.5  # past the resync as well
        a.step()

    slot0("Running", new_gen, 1000, "r1")
    assert sent[-1][1].instances == [old]  # up 1 s only
    slot0("CrashLoopBackOff", new_gen, 9000, "r2")
    assert sent[-1][1].instances == [old]  # a crash-looping new generation holds the roll
    slot0("Running", new_gen, 3000, "r3")
    (inst,) = sent[-1][1].instances
    assert inst["env"] == {"MODE": "b"} and inst["generation"] == new_gen
    # once switched, it stays switched (the spec sent is the new one)
    slot0("Running", new_gen - 1, 9000, "r4")
    assert sent[-1][1].instances[0]["generation"] == new_gen


def test_controller_reports_again_once_an_instance_ran_roll_min_ready(
        clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    wall = [1_000.0]
    monkeypatch.setattr(wl_mod.time, "time", lambda: wall[0])
    f = Feeder()
    placed_web(f)
    props = Proposals()
    a, _ = controller(f, Status(commit_index=f.store.applied_index), props, roll_min_ready=3.0)
    a.step()
    r = {"id": "default.web.0.1", "state": "Running", "pid": 10, "started_at": 1_000_000,
         "exit_code": None, "restarts": 0, "message": "", "generation": 4}
    a.on_runner_status([r])

    def at(t: float) -> int:
        if props.futs and not props.futs[-1].done():
            props.futs[-1].set_result((200, {}))
        wall[0] = t
        clock.t += 1.1
        a.step()
        return len([c for c in props.cmds if c["op"] == "instance.report"])

    assert at(1_000.5) == 1  # the runner's report
    assert at(1_002.0) == 1  # up 2 s: nothing new
    assert at(1_003.0) == 2  # up 3 s: reported once more (a later ts proves it settled)
    assert props.cmds[-1]["reports"][0]["generation"] == 4
    assert props.cmds[-1]["ts"] == "1970-01-01T00:16:43.000Z"
    assert at(1_010.0) == 2  # only once per process
    a.on_runner_status([{**r, "started_at": 1_011_000}])  # restarted: a new process
    assert at(1_012.0) == 3
    assert at(1_014.0) == 4


@pytest.mark.parametrize("can_open", [True, False])
def test_a_terminal_update_carries_the_redacted_output_or_none(
        clock: Clock, tmp_path: Any, can_open: bool) -> None:
    """An execution the log says runs here that this controller does not know (the node
    restarted) is reported Lost with the output its files hold, the deployment's secret
    values redacted; a node that cannot open them records no output at all."""
    from actors.runner import instance_dir
    from prisn.fsm.secrets import SecretFactory
    from prisn.secretbox import SecretBox, opener
    from tests.execfeed import cmd, update

    box = SecretBox(b"k" * 32)
    f = Feeder()
    f.run(SecretFactory(box).create({"name": "db", "data": {"PASSWORD": "s3cret-pw"}}))
    f.create(name="j", type="job", source="/srv/j.py", secrets=["db"])
    assert f.run(cmd("execution.create", id="e1", ns="default", name="j"))[0] == 201
    assert update(f, "e1", "Running", node="n1")[0] == 200
    d = instance_dir(tmp_path, "x.e1.1")
    d.mkdir(parents=True)
    (d / "stdout.0.log").write_bytes(b"pw=s3cret-pw\n")
    (d / "stderr.0.log").write_bytes(b"oops s3cret-pw\n")
    st = Status(commit_index=f.store.applied_index)
    props = Proposals()
    a = WorkloadsActor(zmq.Context.instance(), "n1", f.store, raft_status=lambda: st,
                       submit=props, data_dir=tmp_path, fence_after=1.0,
                       decrypt=opener(box if can_open else None))
    a.send = lambda to, msg: None  # type: ignore[method-assign]
    a.step()
    (upd,) = [c for c in props.cmds if c["op"] == "execution.update"]
    assert upd["status"] == "Lost"
    if can_open:
        assert (upd["stdout"], upd["stderr"]) == ("pw=***\n", "oops ***\n")
    else:
        assert "stdout" not in upd and "stderr" not in upd
    assert "s3cret-pw" not in repr(upd)


def test_scheduler_looks_at_cron_jobs_when_a_wall_second_begins(
        clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cron time is a whole second of the leader's wall clock: the cron round runs as soon
    as one begins, not up to `period` later when nothing else changed (that made every
    `@every 1s` fire 0-0.5 s late on an idle cluster)."""
    f = Feeder()
    _, dep = f.create(name="tick", type="cronjob", schedule="@every 1s")
    since = ts_millis(dep["created_at"]) // 1000
    wall = Clock()
    wall.t = since + 10.2
    monkeypatch.setattr(sched_mod.time, "time", wall)
    members = Membership(cluster="c", voters={"n1": "a1"}, learners={})
    st = Status(role=Role.LEADER, membership=members, progress={})
    props = Proposals()
    s = SchedulerActor(zmq.Context.instance(), "n1", f.store, raft_status=lambda: st,
                       submit=props, tick_seconds=0.01, node_down_after=1.0, period=0.5)

    def cron_cmds() -> list[dict]:
        return [c for c in props.cmds if c["op"].startswith("cron.")]

    s.step()
    first = cron_cmds()
    assert first and first[-1]["op"] == "cron.fire" and first[-1]["scheduled_at"] == since + 10
    for c, fut in zip(props.cmds, props.futs, strict=True):
        f.run(c)
        fut.set_result((200, {}))
    props.cmds.clear()
    props.futs.clear()
    clock.t += 0.01
    s.step()  # the applied entries: a round, nothing more is due this second
    props.cmds = [c for c in props.cmds if not c["op"].startswith("cron.")]
    assert cron_cmds() == []
    clock.t += 0.05  # well within `period`, the store unchanged
    wall.t = since + 11.02
    s.step()
    (c,) = cron_cmds()  # fired, or (concurrency forbid, the first still Pending) skipped
    assert (c["op"] == "cron.fire" and c["scheduled_at"] == since + 11) or (
        c["op"] == "cron.miss" and c["first"] == c["last"] == since + 11), c
