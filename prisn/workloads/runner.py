"""The runner's plan: a pure core that decides what this node's processes should do.

Pure: no clock, no processes, no threads. Time (`now`, seconds on one monotonic time base the
caller chooses) and observations (a process started with a pid, exited with a code, could not
be started) are inputs; actions (`Start`, `Stop`, `Kill`) and status `Report`s are outputs.
Level-triggered: `set_desired` takes the FULL list of instances this node should run, and
every call re-examines every instance, so a repeated call or a missed one changes nothing.
Not thread-safe: one owner thread (the runner actor's).

Per instance (a replica slot placed on this node):
- `Starting` from the start until the process has stayed up `startup_grace` seconds, then
  `Running`. A process that exits is restarted (services: restart always) after a backoff of
  `backoff_base` seconds doubling up to `backoff_max`; the doubling resets when the exited
  process had run `reset_after` seconds or more. While it waits it is `Exited`, or
  `CrashLoopBackOff` once `crashloop_after` consecutive quick exits happened (a start that
  failed, such as a missing entry file, counts as a quick exit, with its message).
- A stop (the instance left the desired list, or its spec changed) sends `Stop` (SIGTERM to
  the group) and, `stop_grace` seconds later if it is still alive, `Kill` (SIGKILL). Once its
  exit is observed the instance reports `Stopped` and is forgotten (unless desired again).
- A change of the spec `generation` restarts a running instance with the new spec; an instance
  that is not alive just starts with the new spec next time. Rolling, one at a time per
  deployment on this node: an outdated live instance is stopped only when every up-to-date
  instance of the same deployment is `Running` for `roll_settle` seconds and no other one is
  being replaced. A new generation that never settles (it crashes) holds the roll: the old
  copies keep serving.
- `restarts` counts restarts after unplanned exits only (not stops for an update).
- `restart: never` (run-once jobs, an execution): the first exit (or a start that failed) is
  final: the instance stays `Exited` with its exit code (None for a failed start) and is not
  started again while it stays desired; a stop still works as for a service.
Exits are matched by pid: an exit of a pid that is not the instance's current one is stale
and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STARTING = "Starting"
RUNNING = "Running"
EXITED = "Exited"
CRASHLOOP = "CrashLoopBackOff"
STOPPED = "Stopped"
STATES = (STARTING, RUNNING, EXITED, CRASHLOOP, STOPPED)


@dataclass(frozen=True)
class RestartPolicy:
    """Timings in seconds. `crashloop_after` consecutive quick exits mean CrashLoopBackOff."""

    backoff_base: float = 1.0
    backoff_max: float = 30.0
    reset_after: float = 10.0
    crashloop_after: int = 5
    startup_grace: float = 1.0
    roll_settle: float = 3.0
    stop_grace: float = 10.0

    def backoff(self, streak: int) -> float:
        """Delay before the restart after the `streak`-th consecutive quick exit (1-based)."""
        return min(self.backoff_max, self.backoff_base * (2 ** min(max(streak - 1, 0), 30)))


@dataclass(frozen=True)
class InstanceSpec:
    """What one instance should run. `generation` changes whenever the spec does."""

    id: str
    deployment: str
    namespace: str = "default"
    generation: int = 0
    runtime: str | None = None
    source: str = ""
    cwd: str = ""
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    port: int = 0
    restart: str = "always"  # "always" (services) | "never" (run-once jobs)

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> InstanceSpec:
        """From the dict a `runner.desired` message carries; ValueError on a malformed one."""
        if not isinstance(d, dict):
            raise ValueError("instance must be a map")
        iid, dep = d.get("id"), d.get("deployment")
        if not isinstance(iid, str) or not iid or not isinstance(dep, str) or not dep:
            raise ValueError("instance needs a non-empty id and deployment")
        env = d.get("env") or {}
        args = d.get("args") or []
        if not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ValueError(f"instance {iid}: env must map strings to strings")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ValueError(f"instance {iid}: args must be a list of strings")
        runtime = d.get("runtime")
        gen, port = d.get("generation", 0), d.get("port", 0)
        if runtime is not None and not isinstance(runtime, str):
            raise ValueError(f"instance {iid}: runtime must be a string")
        if not isinstance(gen, int) or not isinstance(port, int) or isinstance(port, bool):
            raise ValueError(f"instance {iid}: generation and port must be integers")
        restart = d.get("restart") or "always"
        if restart not in ("always", "never"):
            raise ValueError(f"instance {iid}: restart must be always or never")
        return cls(id=iid, deployment=dep, namespace=str(d.get("namespace") or "default"),
                   generation=gen, runtime=runtime or None, source=str(d.get("source") or ""),
                   cwd=str(d.get("cwd") or ""), env=dict(env), args=tuple(args), port=port,
                   restart=restart)


# ------------------------------------------------------------------------------ observations
@dataclass(frozen=True)
class Started:
    """The shell started the process of `instance` (after a `Start`) as `pid` at `at`."""

    instance: str
    pid: int
    at: float


@dataclass(frozen=True)
class StartFailed:
    """The shell could not start `instance` (missing entry, unknown runtime, exec error)."""

    instance: str
    message: str
    at: float


@dataclass(frozen=True)
class Exited:
    """Process `pid` of `instance` exited with `code` (negative: killed by that signal)."""

    instance: str
    pid: int
    code: int | None
    at: float


Observation = Started | StartFailed | Exited


# ------------------------------------------------------------------------------ outputs
@dataclass(frozen=True)
class Start:
    """Start `spec` now; `attempt` 0 is the first start, higher ones restarts after backoff."""

    spec: InstanceSpec
    attempt: int = 0


@dataclass(frozen=True)
class Stop:
    """SIGTERM the process group of `pid` (instance `instance`)."""

    instance: str
    pid: int
    reason: str = ""


@dataclass(frozen=True)
class Kill:
    """SIGKILL the process group of `pid`: it outlived the stop grace."""

    instance: str
    pid: int


Action = Start | Stop | Kill


@dataclass(frozen=True)
class Report:
    """The status of one instance, emitted whenever one of its fields changes."""

    id: str
    deployment: str
    namespace: str
    generation: int
    state: str
    pid: int | None = None
    started_at: float | None = None
    exit_code: int | None = None
    restarts: int = 0
    message: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "deployment": self.deployment, "namespace": self.namespace,
                "generation": self.generation, "state": self.state, "pid": self.pid,
                "started_at": self.started_at, "exit_code": self.exit_code,
                "restarts": self.restarts, "message": self.message}


@dataclass
class _Inst:
    """Mutable per-instance state, owned by the core."""

    spec: InstanceSpec  # the spec the current/next process runs
    desired: InstanceSpec | None  # None: should not run (being stopped)
    state: str = EXITED
    pid: int | None = None
    starting: bool = False  # Start issued, no Started/StartFailed yet
    started_at: float | None = None
    exit_code: int | None = None
    restarts: int = 0
    streak: int = 0  # consecutive quick exits
    next_start: float | None = None  # when a (re)start is due; None: not scheduled
    attempt: int = 0
    stopping: bool = False
    stop_at: float | None = None
    killed: bool = False
    updating: bool = False  # stopped to take a new generation
    crashed: bool = False  # the next start is a restart after an unplanned exit
    done: bool = False  # restart never: it ran (or failed to start) once, never again
    message: str = ""
    last: Report | None = None


class RunnerCore:
    """The runner's decisions for one node (see the module doc). Owner thread only."""

    def __init__(self, policy: RestartPolicy | None = None) -> None:
        self.policy = policy or RestartPolicy()
        self._insts: dict[str, _Inst] = {}
        self.start_failures = 0  # counted StartFailed observations
        self.stale_exits = 0
        self._grace: float | None = None  # a shorter stop grace while fencing

    # -------------------------------------------------------------------- inputs
    def set_desired(self, specs: list[InstanceSpec], now: float, stop_grace: float | None = None
                    ) -> tuple[list[Action], list[Report]]:
        """The full list of instances this node should run (duplicate ids: the last wins).
        `stop_grace` (fencing: the instances must be gone before they may be replaced
        elsewhere) shortens the policy's grace for stops while it is set; the next call
        without it restores the policy's."""
        self._grace = None if stop_grace is None else max(0.0, min(stop_grace,
                                                                    self.policy.stop_grace))
        want = {s.id: s for s in specs}
        for iid, inst in self._insts.items():
            inst.desired = want.get(iid)
        for iid, spec in want.items():
            if iid not in self._insts:
                self._insts[iid] = _Inst(spec=spec, desired=spec, next_start=now)
        return self.tick(now)

    def observe(self, obs: Observation, now: float) -> tuple[list[Action], list[Report]]:
        """Feed one observation from the shell, then reconcile."""
        inst = self._insts.get(obs.instance)
        if inst is None:
            if isinstance(obs, StartFailed):
                self.start_failures += 1
            return self.tick(now)
        if isinstance(obs, Started):
            inst.starting = False
            inst.pid = obs.pid
            inst.started_at = obs.at
            inst.exit_code = None
            inst.state = STARTING
            inst.message = ""
        elif isinstance(obs, StartFailed):
            self.start_failures += 1
            inst.starting = False
            inst.pid = None
            inst.exit_code = None
            self._after_exit(inst, obs.at, ran=0.0, message=obs.message)
        elif isinstance(obs, Exited):
            if inst.pid != obs.pid:
                self.stale_exits += 1
            else:
                ran = obs.at - inst.started_at if inst.started_at is not None else 0.0
                inst.pid = None
                inst.exit_code = obs.code
                self._after_exit(inst, obs.at, ran=ran, message=f"exited with code {obs.code}"
                                 if obs.code is None or obs.code >= 0
                                 else f"killed by signal {-obs.code}")
        return self.tick(now)

    def tick(self, now: float) -> tuple[list[Action], list[Report]]:
        """Reconcile every instance at time `now`: the actions due and the changed reports."""
        actions: list[Action] = []
        p = self.policy
        for inst in self._insts.values():
            if inst.pid is not None and inst.state == STARTING and inst.started_at is not None \
                    and now - inst.started_at >= p.startup_grace:
                inst.state = RUNNING
            if inst.pid is not None and inst.started_at is not None \
                    and now - inst.started_at >= p.reset_after:
                inst.streak = 0
            if inst.desired is None:
                self._want_stopped(inst, now, actions, "removed")
            elif inst.pid is None and not inst.starting and not inst.stopping:
                inst.spec = inst.desired  # not alive: the next start takes the new spec
        by_dep: dict[str, list[_Inst]] = {}
        for inst in self._insts.values():
            if inst.desired is not None:
                by_dep.setdefault(inst.desired.deployment, []).append(inst)
        for insts in by_dep.values():
            self._roll(insts, now, actions)
        for inst in self._insts.values():
            if inst.desired is None or inst.stopping or inst.pid is not None or inst.starting \
                    or inst.done:
                continue
            if inst.next_start is None:
                inst.next_start = now
            if now >= inst.next_start:
                inst.starting = True
                inst.next_start = None
                if inst.crashed:
                    inst.crashed = False
                    inst.restarts += 1
                actions.append(Start(spec=inst.spec, attempt=inst.attempt))
                inst.attempt += 1
        return actions, self._reports()

    @property
    def stop_grace(self) -> float:
        """The grace a stop gets now (the policy's, or the shorter fencing one)."""
        return self.policy.stop_grace if self._grace is None else self._grace

    def next_deadline(self) -> float | None:
        """The earliest time at which `tick` may act without a new input (a hint)."""
        p = self.policy
        out: list[float] = []
        for inst in self._insts.values():
            if inst.next_start is not None and inst.pid is None and not inst.starting \
                    and not inst.done:
                out.append(inst.next_start)
            if inst.stop_at is not None and not inst.killed:
                out.append(inst.stop_at + self.stop_grace)
            if inst.pid is not None and inst.started_at is not None:
                out.extend(inst.started_at + d
                           for d in (p.startup_grace, p.roll_settle, p.reset_after))
        return min(out) if out else None

    # -------------------------------------------------------------------- views
    def instances(self) -> list[Report]:
        """The current report of every known instance (tests, metrics)."""
        return [self._report(i) for i in self._insts.values()]

    def live_pids(self) -> dict[str, int]:
        return {iid: i.pid for iid, i in self._insts.items() if i.pid is not None}

    # -------------------------------------------------------------------- internals
    def _after_exit(self, inst: _Inst, at: float, ran: float, message: str) -> None:
        p = self.policy
        planned = inst.stopping
        inst.stopping = False
        inst.stop_at = None
        inst.killed = False
        if planned:
            inst.state = STOPPED
            inst.message = "stopped" if inst.desired is None else "stopped for an update"
            inst.next_start = at  # an update restarts at once
            inst.updating = False
            inst.crashed = False
            return
        if inst.spec.restart == "never":
            inst.done = True
            inst.next_start = None
            inst.state = EXITED
            inst.message = message
            return
        if ran >= p.reset_after:
            inst.streak = 0
        inst.streak += 1
        inst.crashed = True
        inst.next_start = at + p.backoff(inst.streak)
        inst.state = CRASHLOOP if inst.streak >= p.crashloop_after else EXITED
        inst.message = f"{message}; restart in {p.backoff(inst.streak):g}s"

    def _want_stopped(self, inst: _Inst, now: float, actions: list[Action], why: str) -> None:
        if inst.pid is None:
            if not inst.starting:
                inst.state = STOPPED
                inst.next_start = None
            return
        if not inst.stopping:
            inst.stopping = True
            inst.stop_at = now
            actions.append(Stop(instance=inst.spec.id, pid=inst.pid, reason=why))
        elif not inst.killed and inst.stop_at is not None \
                and now >= inst.stop_at + self.stop_grace:
            inst.killed = True
            actions.append(Kill(instance=inst.spec.id, pid=inst.pid))

    def _roll(self, insts: list[_Inst], now: float, actions: list[Action]) -> None:
        """Stop at most one outdated live instance of one deployment (module doc: rolling)."""
        p = self.policy
        for inst in insts:  # grace escalation of stops already under way
            if inst.stopping:
                self._want_stopped(inst, now, actions, "update")
        outdated = [i for i in insts if (i.pid is not None or i.starting)
                    and i.spec != i.desired]
        if not outdated:
            return
        if any(i.updating for i in insts):
            return
        for i in insts:
            if i.spec == i.desired and i.desired is not None:
                settled = (i.pid is not None and i.state == RUNNING and i.started_at is not None
                           and now - i.started_at >= p.roll_settle)
                if not settled:
                    return
        for inst in sorted(outdated, key=lambda i: i.spec.id):
            if inst.pid is None:  # still starting: wait for its pid
                continue
            inst.updating = True
            self._want_stopped(inst, now, actions, "update")
            return

    def _report(self, inst: _Inst) -> Report:
        spec = inst.desired or inst.spec
        state = inst.state
        if inst.starting:
            state = STARTING
        return Report(id=spec.id, deployment=spec.deployment, namespace=spec.namespace,
                      generation=inst.spec.generation, state=state, pid=inst.pid,
                      started_at=inst.started_at, exit_code=inst.exit_code,
                      restarts=inst.restarts, message=inst.message)

    def _reports(self) -> list[Report]:
        out: list[Report] = []
        gone: list[str] = []
        for iid, inst in self._insts.items():
            r = self._report(inst)
            if r != inst.last:
                inst.last = r
                out.append(r)
            if inst.desired is None and inst.pid is None and not inst.starting:
                gone.append(iid)
        for iid in gone:
            del self._insts[iid]
        return out
