"""The runner's pure core (`prisn.workloads.runner`): restart policy, stops, rolling updates.

A tiny fake shell (`Node`) turns the core's actions into observations with made-up pids, on a
time that the test moves by hand: no clock, no processes."""

from __future__ import annotations

import itertools

import pytest

from prisn.workloads.runner import (
    CRASHLOOP,
    EXITED,
    RUNNING,
    STARTING,
    STOPPED,
    Exited,
    InstanceSpec,
    Kill,
    Report,
    RestartPolicy,
    RunnerCore,
    Start,
    Started,
    StartFailed,
    Stop,
)

POLICY = RestartPolicy()  # the defaults are what the tests pin down


def spec(iid: str = "web-0", dep: str = "web", gen: int = 1, **kw: object) -> InstanceSpec:
    return InstanceSpec(id=iid, deployment=dep, generation=gen, source="web.py", **kw)  # type: ignore[arg-type]


class Node:
    """Executes the core's actions the way the shell does: a Start becomes Started at once
    (or StartFailed when `fail_starts`); it keeps every action and report for inspection."""

    def __init__(self, policy: RestartPolicy = POLICY, fail_starts: str = "") -> None:
        self.core = RunnerCore(policy)
        self.now = 0.0
        self.pids = itertools.count(100)
        self.live: dict[str, int] = {}
        self.actions: list[tuple[float, object]] = []
        self.reports: list[Report] = []
        self.fail_starts = fail_starts

    def _run(self, out: tuple[list, list[Report]]) -> None:
        actions, reports = out
        self.reports += reports
        for a in actions:
            self.actions.append((self.now, a))
            if isinstance(a, Start):
                if self.fail_starts:
                    obs: object = StartFailed(instance=a.spec.id, message=self.fail_starts,
                                              at=self.now)
                else:
                    pid = next(self.pids)
                    self.live[a.spec.id] = pid
                    obs = Started(instance=a.spec.id, pid=pid, at=self.now)
                self._run(self.core.observe(obs, self.now))  # type: ignore[arg-type]

    def desire(self, *specs: InstanceSpec) -> None:
        self._run(self.core.set_desired(list(specs), self.now))

    def at(self, t: float) -> None:
        self.now = t
        self._run(self.core.tick(t))

    def exit(self, iid: str, code: int | None = 1) -> None:
        pid = self.live.pop(iid)
        self._run(self.core.observe(Exited(instance=iid, pid=pid, code=code, at=self.now),
                                    self.now))

    def state(self, iid: str) -> Report:
        return next(r for r in self.core.instances() if r.id == iid)

    def starts(self, iid: str | None = None) -> list[tuple[float, Start]]:
        return [(t, a) for t, a in self.actions if isinstance(a, Start)
                and (iid is None or a.spec.id == iid)]

    def of(self, kind: type) -> list[tuple[float, object]]:
        return [(t, a) for t, a in self.actions if isinstance(a, kind)]


@pytest.mark.parametrize(("streak", "delay"), [
    (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0), (6, 30.0), (7, 30.0), (100, 30.0),
])
def test_backoff_doubles_from_one_second_up_to_thirty(streak: int, delay: float) -> None:
    assert POLICY.backoff(streak) == delay


def test_first_start_then_starting_then_running_after_the_startup_grace() -> None:
    n = Node()
    n.desire(spec())
    assert [a.attempt for _, a in n.starts()] == [0]
    assert n.state("web-0").state == STARTING and n.state("web-0").pid == 100
    n.at(POLICY.startup_grace - 0.01)
    assert n.state("web-0").state == STARTING
    n.at(POLICY.startup_grace)
    r = n.state("web-0")
    assert (r.state, r.pid, r.started_at, r.restarts) == (RUNNING, 100, 0.0, 0)


def test_a_repeated_desired_list_changes_nothing() -> None:
    n = Node()
    n.desire(spec())
    n.at(5)
    before = (len(n.actions), len(n.reports))
    n.desire(spec())
    n.desire(spec())
    n.at(6)
    assert (len(n.actions), len(n.reports)) == before


def test_quick_exits_back_off_and_reach_crash_loop_after_five() -> None:
    n = Node()
    n.desire(spec())
    expected_states = [EXITED, EXITED, EXITED, EXITED, CRASHLOOP, CRASHLOOP, CRASHLOOP]
    for k, want in enumerate(expected_states, start=1):
        n.at(n.now + 0.5)  # ran half a second: a quick exit
        n.exit("web-0")
        r = n.state("web-0")
        assert r.state == want, k
        assert r.exit_code == 1 and r.pid is None and r.restarts == k - 1
        delay = POLICY.backoff(k)
        n.at(n.now + delay - 0.01)
        assert len(n.starts()) == k, "no restart before the backoff is over"
        n.at(n.now + 0.01)
        assert len(n.starts()) == k + 1
        assert n.state("web-0").restarts == k
    times = [t for t, _ in n.starts()]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([0.5 + POLICY.backoff(k) for k in range(1, 8)])


def test_a_long_run_resets_the_backoff() -> None:
    n = Node()
    n.desire(spec())
    for _ in range(4):  # streak 4: the next delay would be 16 s
        n.at(n.now + 0.1)
        n.exit("web-0")
        n.at(n.now + 60)
    n.at(n.now + POLICY.reset_after)  # up for reset_after seconds
    n.exit("web-0")
    r = n.state("web-0")
    assert r.state == EXITED and "restart in 1s" in r.message
    t = n.now
    n.at(t + 1.0)
    assert n.starts()[-1][0] == t + 1.0


def test_a_start_failure_is_a_quick_exit_with_its_message_and_is_counted() -> None:
    n = Node(fail_starts="entry file not found: /x/web.py")
    n.desire(spec())
    r = n.state("web-0")
    assert r.state == EXITED and r.pid is None
    assert r.message.startswith("entry file not found: /x/web.py")
    for _ in range(10):
        n.at(n.now + 30)
    assert n.state("web-0").state == CRASHLOOP
    assert n.core.start_failures == 11


def test_removal_stops_with_sigterm_then_sigkill_after_the_grace_then_forgets() -> None:
    n = Node(RestartPolicy(stop_grace=10))
    n.desire(spec())
    n.at(3)
    n.desire()
    assert [a for _, a in n.of(Stop)] == [Stop(instance="web-0", pid=100, reason="removed")]
    n.at(12.99)
    assert n.of(Kill) == []
    n.at(13)
    n.at(14)
    assert [a for _, a in n.of(Kill)] == [Kill(instance="web-0", pid=100)]
    n.exit("web-0", code=-9)
    assert n.reports[-1].state == STOPPED and n.reports[-1].restarts == 0
    assert n.core.instances() == []
    n.at(100)
    assert len(n.starts()) == 1, "a stopped instance is never restarted"


def test_removal_during_backoff_reports_stopped_at_once() -> None:
    n = Node()
    n.desire(spec())
    n.exit("web-0")
    n.desire()
    assert n.of(Stop) == [] and n.reports[-1].state == STOPPED and n.core.instances() == []


def test_an_exit_of_a_stale_pid_is_ignored() -> None:
    n = Node()
    n.desire(spec())
    n._run(n.core.observe(Exited(instance="web-0", pid=99, code=0, at=0.5), 0.5))
    assert n.state("web-0").pid == 100 and n.core.stale_exits == 1


def test_an_instance_that_is_not_alive_takes_a_new_spec_at_once() -> None:
    n = Node()
    n.desire(spec(gen=1))
    n.exit("web-0")
    n.desire(spec(gen=2))
    n.at(POLICY.backoff(1))
    assert n.starts()[-1][1].spec.generation == 2


def test_rolling_update_replaces_one_instance_at_a_time() -> None:
    n = Node()
    old = [spec(f"web-{k}", gen=1) for k in range(3)]
    n.desire(*old)
    n.at(20)
    n.desire(*[spec(f"web-{k}", gen=2) for k in range(3)])
    assert [a.instance for _, a in n.of(Stop)] == ["web-0"]
    n.at(21)
    assert len(n.of(Stop)) == 1, "the next waits for the first one"
    n.exit("web-0", code=0)  # the old web-0 stopped: the new one starts at once
    assert n.starts()[-1][1].spec == spec("web-0", gen=2)
    assert n.state("web-0").restarts == 0, "an update is not a restart"
    n.at(21 + POLICY.roll_settle - 0.01)
    assert len(n.of(Stop)) == 1, "the new web-0 has not run long enough"
    n.at(21 + POLICY.roll_settle)
    assert [a.instance for _, a in n.of(Stop)] == ["web-0", "web-1"]
    n.exit("web-1", code=0)
    n.at(40)
    n.exit("web-2", code=0)
    n.at(60)
    assert {r.id: (r.generation, r.state) for r in n.core.instances()} == {
        f"web-{k}": (2, RUNNING) for k in range(3)}
    # at no time were two of the three down or being replaced
    assert len(n.of(Stop)) == 3


def test_a_new_generation_that_crashes_holds_the_roll() -> None:
    n = Node()
    n.desire(spec("web-0", gen=1), spec("web-1", gen=1))
    n.at(20)
    n.desire(spec("web-0", gen=2), spec("web-1", gen=2))
    n.exit("web-0", code=0)  # replaced by gen 2 ...
    for _ in range(8):  # ... which keeps crashing
        n.at(n.now + 0.2)
        n.exit("web-0")
        n.at(n.now + 30)
    n.at(n.now + 0.2)
    n.exit("web-0")
    assert [a.instance for _, a in n.of(Stop)] == ["web-0"]
    assert n.state("web-1").state == RUNNING and n.state("web-1").generation == 1
    assert n.state("web-0").state == CRASHLOOP


def test_rolls_of_different_deployments_are_independent() -> None:
    n = Node()
    n.desire(spec("a-0", dep="a"), spec("b-0", dep="b"))
    n.at(20)
    n.desire(spec("a-0", dep="a", gen=2), spec("b-0", dep="b", gen=2))
    assert sorted(a.instance for _, a in n.of(Stop)) == ["a-0", "b-0"]


def test_a_desired_list_entry_is_parsed_strictly() -> None:
    ok = InstanceSpec.from_wire({"id": "w-0", "deployment": "w", "env": {"A": "1"},
                                 "args": ["x"], "port": 8080, "generation": 3})
    assert ok.env == {"A": "1"} and ok.args == ("x",) and ok.port == 8080
    for bad in ({"id": "", "deployment": "w"}, {"id": "w", "deployment": "w", "env": {"A": 1}},
                {"id": "w", "deployment": "w", "args": "x"},
                {"id": "w", "deployment": "w", "port": "80"}, ["not", "a", "map"]):
        with pytest.raises(ValueError):
            InstanceSpec.from_wire(bad)  # type: ignore[arg-type]


def test_next_deadline_names_the_next_backoff_expiry() -> None:
    n = Node()
    n.desire(spec())
    n.at(0.5)
    n.exit("web-0")
    assert n.core.next_deadline() == pytest.approx(1.5)


def test_an_instance_desired_again_while_stopping_starts_after_the_exit() -> None:
    n = Node()
    n.desire(spec())
    n.at(2)
    n.desire()
    n.desire(spec())
    assert len(n.of(Stop)) == 1 and len(n.starts()) == 1
    n.at(30)  # the grace passed: still escalated although desired again
    assert len(n.of(Kill)) == 1
    n.exit("web-0", code=-9)
    assert len(n.starts()) == 2 and n.state("web-0").restarts == 0


def test_an_exit_by_signal_says_which() -> None:
    n = Node()
    n.desire(spec())
    n.exit("web-0", code=-11)
    r = n.state("web-0")
    assert r.exit_code == -11 and r.message.startswith("killed by signal 11")


def test_a_fencing_stop_uses_the_shorter_grace_and_the_next_list_restores_it() -> None:
    n = Node(RestartPolicy(stop_grace=10))
    n.desire(spec("a"), spec("b", dep="b"))
    n.at(3)
    n._run(n.core.set_desired([spec("b", dep="b")], n.now, stop_grace=0.5))  # fenced: a goes
    assert n.core.stop_grace == 0.5
    n.at(3.49)
    assert n.of(Kill) == []
    n.at(3.5)
    assert [a for _, a in n.of(Kill)] == [Kill(instance="a", pid=100)]
    n._run(n.core.set_desired([spec("b", dep="b")], n.now, stop_grace=99))  # capped
    assert n.core.stop_grace == 10
    n.desire()
    assert n.core.stop_grace == 10


def test_restart_never_runs_once_and_keeps_its_exit_code() -> None:
    n = Node()
    n.desire(spec("job-0", "job", restart="never"))
    n.at(n.now + 0.5)
    n.exit("job-0", 3)
    r = n.state("job-0")
    assert r.state == EXITED and r.exit_code == 3 and r.restarts == 0
    for _ in range(5):  # however long it waits, and the same list again: no second start
        n.at(n.now + 60)
        n.desire(spec("job-0", "job", restart="never"))
    assert len(n.starts()) == 1 and n.core.next_deadline() is None
    n.desire()  # removed: forgotten (nothing to stop)
    assert n.core.instances() == []


def test_restart_never_start_failure_is_final() -> None:
    n = Node(fail_starts="no such file")
    n.desire(spec("job-0", "job", restart="never"))
    n.at(n.now + 60)
    r = n.state("job-0")
    assert r.state == EXITED and r.exit_code is None and "no such file" in r.message
    assert len(n.starts()) == 1


def test_restart_must_be_always_or_never() -> None:
    with pytest.raises(ValueError, match="restart"):
        InstanceSpec.from_wire({"id": "a", "deployment": "b", "restart": "sometimes"})
    assert InstanceSpec.from_wire({"id": "a", "deployment": "b",
                                   "restart": "never"}).restart == "never"
