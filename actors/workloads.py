"""The node-side workload controller: what this node's runner should run, and what it reports.

Thread: its own actor thread (`prisn-workloads`), on every node (`RunnerActor` runs next to it
unless the node was started with ``--no-workloads``). Each step (every `poll_ms`):
- **node metadata**: while the store's record of this node (``node.meta``) differs from its
  flag, propose it (bounded: one in flight, at most one a second);
- **fencing**: `quorum_ok` of the published Raft status (a leader with a quorum active, or a
  follower hearing from its leader) refreshes `_last_ok`; after `fence_after` seconds without
  it the node is *fenced* and its runner is sent an empty desired list (the instances stop),
  so that when the leader places them elsewhere (after `node_down_after` > `fence_after`) the
  old copies are already stopped. A node starts fenced and unfences only when it has quorum
  contact AND has applied everything committed it knows of (so a node that comes back does
  not restart, for a moment, an instance its log has not yet seen move away);
- **desired**: when the applied index or the fence changed (and every `resync` seconds), the
  placements on this node joined with their deployments (artifacts materialized here via
  `materialize.location`) become the runner's FULL desired list (`runner.desired`);
- **rolling update, cluster-wide**: an instance this controller already sent with another
  generation keeps that (old) spec until `prisn.workloads.roll.may_run` allows its slot the
  new one, i.e. until every placed lower slot of the deployment reports Running at the new
  generation for `roll_min_ready` seconds (read from the log: report ts - started_at). The
  runner restarts an instance only when its spec changes, so the deployment's slots switch
  one at a time across nodes. An instance never sent before (new slot, moved, restarted
  node) starts with the new spec: it has no old copy serving;
- **reports**: the runner's batched status (its `on_status` callback, runner thread) is
  coalesced per instance and proposed as one ``instance.report`` command at most every
  `report_interval` seconds, one in flight: a crash loop costs at most one log entry per
  node per interval. An instance Running for `roll_min_ready` is reported once more then
  (same fields, a later ts) so the log shows it settled and the roll can go on.
- **executions** (issue 15): each unfinished execution the log assigns to this node is one
  more desired instance, id ``x.<execution id>.<attempt>``, with ``restart: never`` (the
  runner starts it once). **Claim before start** (at most once per attempt): the
  controller first proposes Running for (execution, attempt) — the claim, one command
  resent unchanged (same key: a resend that already committed is answered from the dedup
  table) — and the instance joins the desired list only once the claim's own answer says it
  applied (OK, Running, this attempt; the answer comes once applied here). A claim refused
  because the execution already runs here (an earlier incarnation of this node claimed it)
  makes it an orphan. So a node that crashes between start and report finds, when it
  returns, its own Running execution it is not running: reported Lost ("the node restarted
  while it ran"; retries then apply), never started again. The reports of the process are
  turned, level-triggered against the store, into the terminal ``execution.update``:
  Completed (exit code 0) or Failed (its exit code; "timed out" when it outlived its
  `timeout`, after which it is dropped from the desired list, so the runner stops it). An
  execution the log finishes otherwise (Cancelled, Lost) is dropped from the desired list:
  the runner stops it. An ad-hoc execution (no deployment) runs its own artifact, entry
  and runtime, with only its own env and args. No claim is proposed while fenced. At most
  `MAX_EXEC_INFLIGHT` updates in flight, each resent at most once a second until applied.
  The terminal update carries the last `MAX_OUTPUT` bytes of each stream of the run (read
  from the runner's files once, when the run is seen finished), with the values of the
  secrets injected into it replaced by ``***`` (`prisn.workloads.output`), so the result
  and its output survive this node (they go through Raft, never a secret value).
Never raises on a failed proposal or a bad artifact (logged; retried by the next step).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from actors.base import Actor
from prisn.fsm.commands import format_ts
from prisn.fsm.deployments import DeploymentStore
from prisn.fsm.executions import COMPLETED, FAILED, LOST, MAX_OUTPUT, PENDING, RUNNING
from prisn.fsm.instances import MAX_REPORTS, instance_id, node_meta_command, report_command
from prisn.fsm.secrets import SecretError, secret_env
from prisn.messages import RunnerDesired
from prisn.outcomes import Outcome
from prisn.secretbox import Opener, SecretDecryptError
from prisn.workloads.artifacts import ArtifactError
from prisn.workloads.jobs import update_command
from prisn.workloads.materialize import location
from prisn.workloads.output import read_extra, redacted_tail, secret_values
from prisn.workloads.roll import ROLL_MIN_READY_MS, may_run

BARRIER_S = 2.0  # the unfencing read barrier's timeout (seconds; retried next step)
log = logging.getLogger("prisn.workloads")

Submit = Callable[[dict[str, Any], float], "concurrent.futures.Future | None"]
MAX_PENDING = 4096  # coalesced reports waiting (one per instance id)
MAX_EXEC_INFLIGHT = 32  # execution updates in flight
EXEC_PREFIX = "x."  # runner ids of executions: x.<execution id>.<attempt>


@dataclass
class _Run:
    """This node's view of one execution it runs (controller thread only)."""

    id: str
    attempt: int
    timeout: float
    started_ms: int | None = None  # Unix ms the process started (runner report)
    up_at: float | None = None  # monotonic time it was first seen up (timeout base)
    finished: bool = False
    exit_code: int | None = None
    message: str = ""
    timed_out: bool = False
    orphan: bool = False  # Running in the log, not claimed here: report it Lost
    claimed: bool = False  # this controller's claim (Running) applied: the process may start
    claim: dict[str, Any] | None = None  # the claim command (resent unchanged)
    claim_fut: concurrent.futures.Future | None = None
    claim_at: float = -1e9  # monotonic time of its last send
    claim_first: float | None = None  # monotonic time of its first send (latency)
    fut: concurrent.futures.Future | None = None
    sent_at: float = -1e9
    sent: str = ""  # the status last proposed (a resend of it waits a second)
    secrets: tuple[bytes, ...] = ()  # values of the secrets injected (redacted in output)
    output: dict[str, Any] | None = None  # the output tails of the terminal update

    @property
    def iid(self) -> str:
        return f"{EXEC_PREFIX}{self.id}.{self.attempt}"


def parse_instance_id(iid: str) -> tuple[str, str, int, int] | None:
    """(namespace, name, index, epoch) of an id made by `instance_id`, else None (names
    never hold a dot)."""
    parts = iid.split(".")
    if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
        return None
    return parts[0], parts[1], int(parts[2]), int(parts[3])


class WorkloadsActor(Actor):
    """See the module doc. `fenced`, counters: read from any thread."""

    poll_ms = 50

    def __init__(self, ctx: zmq.Context, node_id: str, store: DeploymentStore, *,
                 raft_status: Callable[[], Any], submit: Submit, data_dir: str | Path,
                 fence_after: float, fence_grace: float = 0.0, runs_workloads: bool = True,
                 report_interval: float = 1.0, resync: float = 2.0,
                 write_timeout: float = 5.0, decrypt: Opener | None = None,
                 barrier: Callable[[float], concurrent.futures.Future | None] | None = None,
                 roll_min_ready: float = ROLL_MIN_READY_MS / 1000, **kw: Any) -> None:
        super().__init__("workloads", ctx, node_id, **kw)
        self.store = store
        self.raft_status = raft_status
        self.submit = submit
        self.data_dir = Path(data_dir)
        self.fence_after = fence_after
        self.fence_grace = fence_grace
        self.runs_workloads = runs_workloads
        self.report_interval = report_interval
        self.resync = resync
        self.write_timeout = write_timeout
        self.decrypt = decrypt  # opens secret values (None: no secret can be injected)
        self.roll_min_ready_ms = max(0, round(roll_min_ready * 1000))
        self._specs: dict[str, dict[str, Any]] = {}  # instance id -> last spec sent
        self._latest: dict[str, dict[str, Any]] = {}  # instance id -> last runner report
        self._confirmed: dict[str, tuple[Any, Any]] = {}  # id -> (generation, started_at)
        self.barrier = barrier  # a linearizable read barrier (`ApiActor.barrier`)
        self._barrier: concurrent.futures.Future | None = None
        self._incarnation = os.urandom(4).hex()
        self._keys = itertools.count(1)
        self._meta: concurrent.futures.Future | None = None
        self._meta_at = 0.0
        self._report: concurrent.futures.Future | None = None
        self._report_at = 0.0
        self._report_items: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, Any]] = {}  # instance id -> latest runner report
        self._last_ok: float | None = None  # last time quorum contact was seen
        self.fenced = True
        self._catch_up: int | None = None  # unfence once applied reaches it
        self._sent: list[dict[str, Any]] | None = None
        self._sent_view: tuple[int, bool] | None = None
        self._sent_at = 0.0
        self._bad: dict[str, str] = {}  # deployment key -> last materialize error logged
        self.fences = 0
        self._states: dict[str, str] = {}  # instance id -> last runner state (metrics)
        self._restarts: dict[str, int] = {}
        self.restarts_total = 0
        self.reports_proposed = 0
        self.reports_dropped = 0
        self._runs: dict[str, _Run] = {}  # execution id -> this node's run (controller)
        self._exec_reports: dict[str, dict[str, Any]] = {}  # runner id -> latest report
        self.exec_updates = 0

    # ------------------------------------------------------------------ runner callback
    def on_runner_status(self, reports: list[dict[str, Any]]) -> None:
        """The runner's batch (runner thread): kept, latest per instance, bounded."""
        with self._lock:
            for r in reports:
                iid = r.get("id")
                if not isinstance(iid, str):
                    continue
                if iid.startswith(EXEC_PREFIX):
                    if iid in self._exec_reports or len(self._exec_reports) < MAX_PENDING:
                        self._exec_reports[iid] = r
                    continue
                self._account(iid, r)
                if r.get("state") == "Stopped":
                    self._latest.pop(iid, None)
                    self._confirmed.pop(iid, None)
                elif iid in self._latest or len(self._latest) < MAX_PENDING:
                    self._latest[iid] = r
                if iid not in self._pending and len(self._pending) >= MAX_PENDING:
                    self.reports_dropped += 1
                    continue
                self._pending[iid] = r

    def _account(self, iid: str, r: dict[str, Any]) -> None:
        """Metrics: the state of each instance this runner has, restarts counted once."""
        state, restarts = r.get("state"), r.get("restarts")
        if state == "Stopped":
            self._states.pop(iid, None)
            self._restarts.pop(iid, None)
            return
        if isinstance(state, str):
            self._states[iid] = state
        if isinstance(restarts, int):
            prev = self._restarts.get(iid, 0)
            if restarts > prev:
                self.restarts_total += restarts - prev
            self._restarts[iid] = restarts

    def instance_states(self) -> dict[str, int]:
        """Any thread: how many of this node's instances are in each runner state."""
        out: dict[str, int] = {}
        with self._lock:
            for state in self._states.values():
                out[state] = out.get(state, 0) + 1
        return out

    # ------------------------------------------------------------------ loop
    def on_idle(self) -> None:
        self.step()

    def on_batch_end(self) -> None:
        self.step()

    def _key(self, what: str) -> str:
        return f"{what}-{self.node_id}-{self._incarnation}-{next(self._keys)}"

    @staticmethod
    def _call(fn: Callable[..., concurrent.futures.Future | None], *args: Any
              ) -> concurrent.futures.Future | None:
        """`fn(*args)` (a propose or barrier of the API), None if it raised: a failure to
        hand a request over is retried by a later step and never stops the node."""
        try:
            return fn(*args)
        except Exception:
            log.exception("workloads: cannot hand a request to the API")
            return None

    def step(self) -> None:
        now = time.monotonic()
        st = self.raft_status()
        self._node_meta(now)
        if not self.runs_workloads:
            return
        self._fence(now, st)
        self._jobs(now)
        self._desired(now)
        self._confirm_settled(time.time())
        self._flush_reports(now)

    def _node_meta(self, now: float) -> None:
        if self.store.runs_workloads(self.node_id) == self.runs_workloads:
            return
        if self._meta is not None and not self._meta.done():
            return
        if now - self._meta_at < 1.0:
            return
        self._meta_at = now
        cmd = node_meta_command(self.node_id, self.runs_workloads, key=self._key("meta"),
                                ts=format_ts(time.time()))
        self._meta = self._call(self.submit, cmd, self.write_timeout)

    def _fence(self, now: float, st: Any) -> None:
        # a learner is not in quorum yet: it stays fenced (its forwarded read barrier would
        # be dropped by the leader and hold this node's shared barrier batch, so every
        # strong read behind it, for a whole timeout)
        mem = getattr(st, "membership", None) if st is not None else None
        learner = mem is not None and self.node_id in getattr(mem, "learners", ())
        ok = st is not None and st.quorum_ok and not learner
        if ok:
            self._last_ok = now
        if self.fenced:
            if not ok:
                self._catch_up = self._barrier = None
                return
            if self.barrier is not None:
                # Caught up = a read barrier passed: leadership confirmed by a quorum after
                # contact came back, and everything committed before it applied here. The
                # node's own commit index is not enough: a deposed leader coming back still
                # holds its old one until its log matches the new leader's.
                if self._barrier is None:
                    # short: it shares the node's barrier batch with the API's strong reads,
                    # which must never wait behind a long one (retried next step)
                    self._barrier = self._call(self.barrier, min(BARRIER_S, self.write_timeout))
                    return
                if not self._barrier.done():
                    return
                done, self._barrier = self._barrier, None
                if done.cancelled() or done.exception() is not None:
                    return  # retried next step
            else:  # no barrier (tests): the commit index known when contact came back
                if self._catch_up is None:
                    self._catch_up = st.commit_index
                if self.store.applied_index < self._catch_up:
                    return
            self.fenced, self._catch_up = False, None
            log.info("workloads: quorum contact, running what the log says")
        elif self._last_ok is None or now - self._last_ok > self.fence_after:
            self.fenced = True
            self.fences += 1
            log.warning("workloads: no quorum contact for %.1fs: stopping this node's "
                        "instances (fencing; they may be placed elsewhere)", self.fence_after)

    def _desired(self, now: float) -> None:
        view = (self.store.applied_index, self.fenced)
        if view == self._sent_view and now - self._sent_at < self.resync:
            return
        desired = [] if self.fenced else self._compute()
        if desired != self._sent or now - self._sent_at >= self.resync:
            self.send("runner", RunnerDesired(src="workloads", dst="runner", instances=desired,
                                              stop_grace_ms=round(self.fence_grace * 1000)
                                              if self.fenced else -1))
            self._sent = desired
            self._sent_at = now
        self._sent_view = view

    def _confirm_settled(self, wall: float) -> None:
        """Re-report (once per process) each instance Running for `roll_min_ready`: its
        report's ts then proves in the log that it settled (module doc: rolling update)."""
        ms = wall * 1000
        with self._lock:
            for iid, r in self._latest.items():
                started = r.get("started_at")
                if r.get("state") != "Running" or not isinstance(started, int):
                    continue
                mark = (r.get("generation"), started)
                if self._confirmed.get(iid) == mark or ms - started < self.roll_min_ready_ms:
                    continue
                self._confirmed[iid] = mark
                self._pending.setdefault(iid, r)

    def _compute(self) -> list[dict[str, Any]]:
        """This node's desired instances, by slot (runner wire form); an instance whose
        slot may not take its deployment's new generation yet keeps the spec last sent."""
        out: list[dict[str, Any]] = []
        slots: dict[tuple[str, str], Any] = {}

        def artifact_bytes(digest: str) -> bytes | None:
            a = self.store.artifact(digest)
            return a.data if a is not None else None

        for p, dep in self.store.instances_on(self.node_id):
            try:
                cwd, source = location(self.data_dir, dep, artifact_bytes)
                env, generation = self._env(dep)
            except (ArtifactError, OSError, SecretError, SecretDecryptError) as e:
                key = f"{dep['namespace']}/{dep['name']}"
                if self._bad.get(key) != str(e):
                    self._bad[key] = str(e)
                    log.warning("workloads: cannot run %s here: %s", key, e)
                continue
            iid = instance_id(p.slot, p.epoch)
            spec = {"id": iid, "deployment": dep["name"], "namespace": dep["namespace"],
                    "generation": generation, "runtime": dep.get("runtime"), "source": source,
                    "cwd": cwd, "env": env, "args": list(dep.get("args") or []),
                    "port": dep.get("port") or 0}
            prev = self._specs.get(iid)
            if prev is not None and prev["generation"] != generation:
                key = (dep["namespace"], dep["name"])
                if key not in slots:
                    slots[key] = self.store.roll_slots(*key)
                if not may_run(p.slot.index, generation, slots[key], self.roll_min_ready_ms):
                    spec = prev  # the roll has not reached this slot: keep the old copy
            out.append(spec)
        self._specs = {d["id"]: d for d in out}
        for run in self._runs.values():
            if run.finished or run.timed_out or run.orphan or not run.claimed:
                continue
            e = self.store.execution(run.id)
            dep = None if e is None else self._exec_dep(e)
            if e is None or dep is None:
                continue
            try:
                cwd, source = location(self.data_dir, dep, artifact_bytes)
                env, _gen = self._env(dep)
                run.secrets = self._secret_values(dep)
            except (ArtifactError, OSError, SecretError, SecretDecryptError) as err:
                run.finished, run.message = True, f"cannot run here: {err}"[:512]
                continue
            out.append({"id": run.iid, "deployment": dep["name"],
                        "namespace": dep["namespace"], "generation": 0,
                        "runtime": dep.get("runtime"), "source": source, "cwd": cwd,
                        "env": {**env, **e.env},
                        "args": list(e.args or dep.get("args") or []), "port": 0,
                        "restart": "never"})
        return out

    # ------------------------------------------------------------------ executions
    def _exec_dep(self, e: Any) -> dict[str, Any] | None:
        """What execution `e` runs, as a deployment-shaped map: its deployment (None when
        that is gone or replaced by another of the same name), or for an ad-hoc run (no
        deployment) its artifact, entry and runtime, with no env, args or secrets."""
        if e.deployment_id is None:
            return {"name": e.name, "namespace": e.namespace, "artifact": e.artifact,
                    "source": e.entry, "runtime": e.runtime, "generation": 0}
        dep = self.store.get(e.namespace, e.name)
        return dep if dep is not None and dep["id"] == e.deployment_id else None

    def _jobs(self, now: float) -> None:
        """Track this node's executions and report them (module doc)."""
        changed = False
        for e in self.store.unfinished_executions():
            if e.node != self.node_id:
                continue
            run = self._runs.get(e.id)
            if run is None or run.attempt != e.attempt:
                run = _Run(e.id, e.attempt, float(e.timeout), orphan=e.status == RUNNING)
                if run.orphan:
                    run.message = "the node restarted while it ran"
                self._runs[e.id] = run
                changed = True
        with self._lock:
            reports, self._exec_reports = self._exec_reports, {}
        by_iid = {r.iid: r for r in self._runs.values()}
        for iid, r in reports.items():
            run = by_iid.get(iid)
            if run is None or run.finished:
                continue
            if run.started_ms is None and isinstance(r.get("started_at"), int):
                run.started_ms = r["started_at"]
            if r.get("pid") is not None and run.up_at is None:
                run.up_at = now
            if r.get("state") in ("Exited", "Stopped", "CrashLoopBackOff"):
                run.finished = True
                code = r.get("exit_code")
                run.exit_code = max(-255, min(255, code)) if isinstance(code, int) else None
                run.message = str(r.get("message") or "")[:512]
        for run in self._runs.values():
            if (not run.finished and not run.timed_out and run.up_at is not None
                    and now - run.up_at > run.timeout):
                run.timed_out, changed = True, True
                log.info("workloads: execution %s timed out after %gs", run.id, run.timeout)
        for exec_id in list(self._runs):
            run = self._runs[exec_id]
            e = self.store.execution(exec_id)
            if e is None or e.terminal or e.attempt != run.attempt or e.node != self.node_id:
                del self._runs[exec_id]  # finished (or cancelled, lost): the runner stops it
                changed = True
                continue
            if not run.claimed and not run.orphan:
                changed |= self._claim(now, run, e.status)
                continue
            self._report_run(now, run, e.status)
        if changed:
            self._sent_view = None  # the desired list changes: send it this step

    def _claim(self, now: float, run: _Run, status: str) -> bool:
        """Propose, or follow, `run`'s claim (module doc); True once it applied (the process
        may start: the desired list changes)."""
        if run.claim_fut is not None:
            if not run.claim_fut.done():
                return False
            fut, run.claim_fut = run.claim_fut, None
            try:
                outcome, body = fut.result()
            except Exception as e:  # noqa: BLE001 - not committed (yet): resent unchanged
                log.debug("workloads: claim of execution %s not answered: %s", run.id, e)
                outcome, body = None, None
            if (outcome == Outcome.OK and isinstance(body, dict)
                    and body.get("status") == RUNNING and body.get("attempt") == run.attempt):
                run.claimed = True
                waited = 1000 * (now - (run.claim_first or now))
                log.info("workloads: claimed execution %s attempt %d (%.0f ms)", run.id,
                         run.attempt, waited)
                return True
            if outcome == Outcome.CONFLICT and status == RUNNING:
                # Running here, but not by this claim: an earlier incarnation's
                run.orphan, run.message = True, "the node restarted while it ran"
                return False
            if outcome is not None and outcome != Outcome.OK:
                log.info("workloads: claim of execution %s refused: %s", run.id, body)
        if status == RUNNING and run.claim is None:  # never claimed here: an earlier run's
            run.orphan, run.message = True, "the node restarted while it ran"
            return False
        # Running with a claim sent: it may be this claim with its answer lost; the resend
        # is answered from the dedup table (OK if it was this one, else 409)
        if status not in (PENDING, RUNNING) or self.fenced or now - run.claim_at < 1.0:
            return False
        inflight = sum(1 for r in self._runs.values()
                       if (r.fut is not None and not r.fut.done())
                       or (r.claim_fut is not None and not r.claim_fut.done()))
        if inflight >= MAX_EXEC_INFLIGHT:
            return False
        if run.claim is None:
            ts = format_ts(time.time())
            run.claim = update_command(run.id, run.attempt, RUNNING, key=self._key("claim"),
                                       ts=ts, node=self.node_id, started_at=ts)
            run.claim_first = now
        run.claim_at = now
        run.claim_fut = self._call(self.submit, run.claim, self.write_timeout)
        self.exec_updates += 1
        return False

    def _report_run(self, now: float, run: _Run, status: str) -> None:
        if run.fut is not None:
            if not run.fut.done():
                return
            run.fut = None
        inflight = sum(1 for r in self._runs.values()
                       if r.fut is not None and not r.fut.done())
        if inflight >= MAX_EXEC_INFLIGHT:
            return
        ts = format_ts(time.time())
        started = None if run.started_ms is None else format_ts(run.started_ms / 1000)
        if run.orphan or (run.timed_out and run.finished) or run.finished:
            if run.orphan:
                new, error = LOST, run.message
            elif run.timed_out:
                new, error = FAILED, "timed out"
            elif run.exit_code == 0:
                new, error = COMPLETED, None
            else:
                new, error = FAILED, run.message or "failed"
            cmd = update_command(run.id, run.attempt, new, key=self._key("exec"), ts=ts,
                                 node=self.node_id, exit_code=run.exit_code,
                                 started_at=started, completed_at=ts, error=error)
            cmd.update(self._run_output(run))
        else:
            return
        if cmd["status"] == run.sent and now - run.sent_at < 1.0:
            return  # not applied yet (or refused): resend at most once a second
        run.sent, run.sent_at = cmd["status"], now
        run.fut = self._call(self.submit, cmd, self.write_timeout)
        self.exec_updates += 1

    def _env(self, dep: dict[str, Any]) -> tuple[dict[str, str], int]:
        """(environment, runner generation) of `dep`'s instances: the keys of the secrets it
        lists (in order, a later secret wins), then its own `env` (wins over secrets). With
        secrets the generation also carries a checksum of their values, so rotating a secret
        restarts the instances (rolling, like a spec change). SecretError if one cannot be
        opened here (no cluster key)."""
        names = dep.get("secrets") or ()
        user = dict(dep.get("env") or {})
        if not names:
            return user, dep["generation"]
        if self.decrypt is None:
            raise SecretError("this node cannot open secrets")
        senv = secret_env(self.store, dep["namespace"], names, self.decrypt)
        check = zlib.crc32(repr(sorted(senv.items())).encode())
        return {**senv, **user}, (dep["generation"] << 32) | check

    def _secret_values(self, dep: dict[str, Any]) -> tuple[bytes, ...]:
        """The values of the secrets `dep` injects (`secret_values`: redactable ones)."""
        names = dep.get("secrets") or ()
        if not names or self.decrypt is None:
            return ()
        return secret_values(secret_env(self.store, dep["namespace"], names,
                                        self.decrypt).values())

    def _run_secrets(self, exec_id: str) -> tuple[bytes, ...]:
        """The redactable secret values of the execution's deployment as stored now (none if
        the execution or its deployment is gone); SecretError/SecretDecryptError when they
        do not open here."""
        e = self.store.execution(exec_id)
        dep = None if e is None else self._exec_dep(e)
        if dep is None:
            return ()
        if dep.get("secrets") and self.decrypt is None:
            raise SecretError("this node cannot open secrets")
        return self._secret_values(dep)

    def _run_output(self, run: _Run) -> dict[str, Any]:
        """The output fields of `run`'s terminal update (read once, then kept for resends):
        per stream the last `MAX_OUTPUT` bytes, with the secret values injected into the run
        and those of its deployment now redacted (module doc); none at all when those do
        not open here (never an unredacted output)."""
        if run.output is None:
            from actors.runner import STREAMS, read_log  # the runner's file layout

            try:  # the values injected, and the current ones (rotated, or an orphan's)
                secrets = tuple(sorted(set(run.secrets) | set(self._run_secrets(run.id)),
                                       key=lambda v: (-len(v), v)))
            except (SecretError, SecretDecryptError) as e:
                log.warning("workloads: no output recorded for %s: its secrets do not open "
                            "here (%s)", run.iid, e)
                run.output = {}
                return run.output
            extra = read_extra(secrets)
            out: dict[str, Any] = {}
            for stream in STREAMS:
                try:
                    chunk = read_log(self.data_dir, run.iid, tail=MAX_OUTPUT + extra,
                                     limit=MAX_OUTPUT + extra, stream=stream)
                except (OSError, ValueError) as e:
                    log.warning("workloads: cannot read the %s of %s: %s", stream, run.iid, e)
                    continue
                text, truncated = redacted_tail(chunk.data, MAX_OUTPUT, secrets,
                                                cut=chunk.offset > 0 or chunk.truncated)
                out[stream] = text
                if truncated:
                    out[f"{stream}_truncated"] = True
            run.output = out
        return run.output

    def _flush_reports(self, now: float) -> None:
        if self._report is not None:
            if not self._report.done():
                return
            try:
                self._report.result()
            except Exception as e:  # noqa: BLE001 - resent below unless superseded
                log.debug("workloads: instance report not committed: %s", e)
                with self._lock:
                    for iid, r in self._report_items:
                        self._pending.setdefault(iid, r)
            self._report = None
            self._report_items = []
        if now - self._report_at < self.report_interval or self.fenced:
            return
        with self._lock:
            if not self._pending:
                return
            items = list(self._pending.items())[:MAX_REPORTS]
        reports = []
        for iid, r in items:
            parsed = parse_instance_id(iid)
            if parsed is None or r.get("state") == "Stopped":
                continue
            ns, name, index, epoch = parsed
            reports.append({"ns": ns, "name": name, "i": index, "epoch": epoch,
                            "state": r.get("state"), "pid": r.get("pid"),
                            "started_at": r.get("started_at"), "exit_code": r.get("exit_code"),
                            "restarts": int(r.get("restarts") or 0),
                            "generation": max(0, int(r.get("generation") or 0)),
                            "message": str(r.get("message") or "")[:512]})
        self._report_at = now
        if reports:
            cmd = report_command(self.node_id, reports, key=self._key("report"),
                                 ts=format_ts(time.time()))
            fut = self._call(self.submit, cmd, self.write_timeout)
            if fut is None:
                return
            self._report = fut
            self._report_items = items
            self.reports_proposed += 1
        with self._lock:
            for iid, r in items:
                if self._pending.get(iid) is r:
                    del self._pending[iid]
