"""Claim before start (issue 15, at most once per attempt), in the node controller stepped by
hand (a real store, a recording propose path, no threads): the runner is asked to start an
execution's process only once this controller's Running claim applied; a claim that never
commits starts nothing; an execution Running here that this incarnation did not claim (the
node restarted mid-run) is reported Lost, never started."""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from typing import Any

import pytest
import zmq

import actors.workloads as wl_mod
from actors.workloads import WorkloadsActor
from prisn.messages import Role
from tests.execfeed import cmd, update
from tests.feeder import Feeder


@dataclass
class Status:
    role: Role = Role.FOLLOWER
    term: int = 1
    quorum_ok: bool = True
    commit_index: int = 0
    membership: Any = None
    progress: dict = field(default_factory=dict)


class Proposals:
    """Records proposals; their futures resolve only when a test says so."""

    def __init__(self) -> None:
        self.cmds: list[dict] = []
        self.futs: list[concurrent.futures.Future] = []

    def __call__(self, command: dict, timeout: float) -> concurrent.futures.Future:
        self.cmds.append(command)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self.futs.append(fut)
        return fut


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(wl_mod.time, "monotonic", c)
    return c


def setup(tmp_path: Any, status: str = "Pending") -> tuple[Feeder, WorkloadsActor, list,
                                                           Proposals]:
    """A job execution `e1` assigned to n1 (and Running there if `status` says so), and n1's
    controller, unfenced."""
    f = Feeder()
    f.create(name="j", source="/srv/job.py", retries=1)
    f.run(cmd("execution.create", id="e1", ns="default", name="j"))
    update(f, "e1", "Pending", node="n1")
    if status == "Running":
        update(f, "e1", "Running", node="n1", started_at="2026-06-01T12:00:00.000Z")
    props = Proposals()
    st = Status(commit_index=f.store.applied_index)
    a = WorkloadsActor(zmq.Context.instance(), "n1", f.store, raft_status=lambda: st,
                       submit=props, data_dir=tmp_path, fence_after=1.0)
    sent: list = []
    a.send = lambda to, msg: sent.append((to, msg))  # type: ignore[method-assign]
    return f, a, sent, props


def exec_instances(sent: list) -> list[str]:
    return [i["id"] for i in sent[-1][1].instances if i["id"].startswith("x.")] if sent else []


def test_the_process_starts_only_after_the_claim_applied(clock: Clock, tmp_path: Any) -> None:
    f, a, sent, props = setup(tmp_path)
    for _ in range(30):  # the claim never commits: nothing is started, the claim is resent
        a.step()
        clock.t += 0.5
    assert not a.fenced and exec_instances(sent) == []
    claims = [c for c in props.cmds if c["op"] == "execution.update"]
    assert claims and all(c["status"] == "Running" and c["attempt"] == 1 for c in claims)
    assert all(c == claims[0] for c in claims)  # resent unchanged (same key: dedup)
    # the claim commits (applied here) and its answer comes back: now it starts
    result = f.run(claims[0])
    assert result[0] == 200
    for fut in props.futs:
        if not fut.done():
            fut.set_result(result)
    clock.t += 0.1
    a.step()
    assert exec_instances(sent) == ["x.e1.1"]
    assert sent[-1][1].instances[-1]["restart"] == "never"


def test_a_claim_refused_because_it_already_runs_here_starts_nothing(
        clock: Clock, tmp_path: Any) -> None:
    """The store still said Pending (catching up after a restart) while an earlier
    incarnation's claim was committed: this one's claim is refused, the run is Lost."""
    f, a, sent, props = setup(tmp_path)
    a.step()
    (claim,) = [c for c in props.cmds if c["op"] == "execution.update"]
    update(f, "e1", "Running", node="n1", started_at=claim["ts"])  # the earlier claim
    props.futs[-1].set_result(f.run(claim))  # 409: Running -> Running
    for _ in range(3):
        clock.t += 1.1
        a.step()
    assert exec_instances(sent) == []
    lost = [c for c in props.cmds if c.get("status") == "Lost"]
    assert lost and lost[0]["error"] == "the node restarted while it ran"


def test_an_execution_running_here_unknown_to_this_incarnation_is_reported_lost(
        clock: Clock, tmp_path: Any) -> None:
    f, a, sent, props = setup(tmp_path, status="Running")
    a.step()
    assert exec_instances(sent) == []
    (lost,) = [c for c in props.cmds if c["op"] == "execution.update"]
    assert (lost["status"], lost["error"]) == ("Lost", "the node restarted while it ran")
    st, e = f.run(lost)  # with retries: 1 it is queued again for another attempt
    assert st == 200 and (e["status"], e["attempt"]) == ("Pending", 2)
    assert e["attempts"][0]["status"] == "Lost"


def test_a_claim_whose_answer_was_lost_is_recognized_by_its_resend(
        clock: Clock, tmp_path: Any) -> None:
    """The claim committed and applied but its answer failed (a leader change): the same
    command is resent, the dedup table answers it as committed, and the process starts."""
    f, a, sent, props = setup(tmp_path)
    a.step()
    (claim,) = [c for c in props.cmds if c["op"] == "execution.update"]
    assert f.run(claim)[0] == 200
    props.futs[-1].set_exception(TimeoutError("no answer"))
    clock.t += 0.1
    a.step()
    assert exec_instances(sent) == []
    clock.t += 1.1
    a.step()
    assert len(props.cmds) == 2  # resent once
    resend = props.cmds[-1]
    assert resend == claim
    props.futs[-1].set_result(f.run(resend))  # the remembered answer: OK, Running
    clock.t += 0.1
    a.step()
    assert exec_instances(sent) == ["x.e1.1"]
    assert not [c for c in props.cmds if c.get("status") == "Lost"]
