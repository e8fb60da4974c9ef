"""What the HTTP API needs from its node: the `NodeClient` protocol, status records, a fake.

Every `NodeClient` method is called on the API IOLoop thread. The real client bridges to the
raft actor over ZeroMQ (requests correlated by rid; results resolved on the IOLoop with
`IOLoop.add_callback`); `FakeNodeClient` applies proposals straight to a `DeploymentStore`
through the same encode/apply path, for tests. Both coalesce concurrent strong reads onto one
barrier call (`BarrierBatch`), so every strong read, whichever route or adapter asks, shares it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from actors.api.errors import Conflict, NotFound, Unavailable
from prisn.fsm.commands import encode_entry
from prisn.fsm.deployments import DeploymentStore
from prisn.fsm.results import Result
from prisn.messages import EntryKind

STATES: tuple[str, ...] = ("leader", "follower", "candidate", "learner")


class BarrierBatch:
    """One node's shared read barriers: concurrent strong reads share one barrier call.

    Thread: the API IOLoop thread only. `join` returns the future of the next call; the
    reads that join before that call starts share it: those of one IOLoop iteration when no
    call is under way, else all those that arrive until the call under way ends (one call at
    a time per node, as etcd's read loop: under load the batches grow instead of the calls).
    A call takes the timeout of the read that opened its batch.

    Invariants:
    - a read joins only a batch whose call has not started, so the call, and with it the
      ReadIndex (commit index captured, leadership confirmed), comes after the read arrived:
      exactly the guarantee of one call per read, for one ReadIndex per batch;
    - at most one call is under way; every joined future is resolved exactly once (a
      cancelled call resolves its batch with `Unavailable`, never with a cancellation);
    - when a call fails (no leader, no quorum, timed out) the reads queued behind it get the
      same answer at once: a later call would most likely fail the same way, and each read
      must be answered within about its timeout of its arrival, not after two of them.

    The returned future is shared by its whole batch: await it through `asyncio.shield`
    from a task that may be cancelled, never cancel it.
    """

    __slots__ = ("_call", "_pending", "_timeout", "in_flight", "joins", "calls")

    def __init__(self, call: Callable[[float], Awaitable[None]]) -> None:
        self._call = call  # one barrier round (ReadIndex, then the applied wait)
        self._pending: asyncio.Future[None] | None = None  # the batch whose call waits
        self._timeout = 0.0
        self.in_flight = False  # a call is under way
        self.joins = 0  # reads that joined a batch (for tests and metrics)
        self.calls = 0  # calls started

    @property
    def pending(self) -> bool:
        """Some reads wait for a call that has not started."""
        return self._pending is not None

    def join(self, timeout: float) -> asyncio.Future[None]:
        """The future of the next barrier call (module doc): resolves to None once this node
        has applied everything committed before the call, or fails (`Unavailable`, ...)."""
        self.joins += 1
        fut = self._pending
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = self._pending = loop.create_future()
            self._timeout = timeout
            if not self.in_flight:
                loop.call_soon(self._start)
        return fut

    def _start(self) -> None:
        """Close the batch (a later read waits for the next call) and call the barrier once."""
        batch, self._pending = self._pending, None
        if batch is None:
            return
        self.in_flight = True
        self.calls += 1
        task = asyncio.ensure_future(self._call(self._timeout))
        task.add_done_callback(lambda t: self._done(batch, t))

    def _done(self, batch: asyncio.Future[None], task: asyncio.Future[None]) -> None:
        """Answer the batch; the reads that queued meanwhile get the next call, or the same
        failure at once (class doc)."""
        self.in_flight = False
        exc = (Unavailable("the read barrier was cancelled") if task.cancelled()
               else task.exception())
        batches = [batch]
        if self._pending is not None:
            if exc is not None:
                batches.append(self._pending)
                self._pending = None
            else:
                self._start()
        for fut in batches:
            if fut.done():  # cancelled by a caller despite the class doc
                continue
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One member as this node sees it. Lag and contact are known on the leader only
    (None elsewhere and for the node itself); `inflight_messages` is the replicator's queue.
    `voter`: None means "infer from `state`" (a voter unless the state is "learner"); set it
    when `state` says something else (e.g. "unreachable")."""

    id: str
    address: str
    state: str  # one of STATES, or another word such as "unreachable"
    last_contact_seconds: float | None = None
    lag_entries: int | None = None
    lag_seconds: float | None = None
    inflight_messages: int | None = None
    voter: bool | None = None

    @property
    def is_voter(self) -> bool:
        return self.voter if self.voter is not None else self.state != "learner"


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A point-in-time view of the local node, built by `NodeClient.status()`.

    `nodes` lists every member of the configuration, this node included. `healthy`: a leader
    is known and a quorum of voters is in contact. `ready`: this node can serve (it has a
    leader and has applied up to the commit index it knew when it learnt of that leader).
    """

    node_id: str
    state: str  # one of STATES
    term: int
    leader_id: str | None
    commit_index: int
    applied_index: int
    cluster_id: str
    healthy: bool
    nodes: list[NodeInfo] = field(default_factory=list)
    ready: bool = False
    uptime_seconds: float = 0.0


class NodeClient(Protocol):
    """The API's view of its node. Every method runs on the API IOLoop thread."""

    node_id: str
    store: DeploymentStore  # local read view (possibly stale)

    def current_leader(self) -> str | None:
        """Leader id as this node knows it, or None. Cheap: called for every response."""
        ...

    async def propose(self, command: dict[str, Any], timeout: float) -> Result:
        """Commit `command`, apply it on THIS node, return its (status, body).

        Raises `Unavailable` (no leader/quorum, or `timeout` elapsed: the entry may still
        commit later, which the command's idempotency key makes harmless).
        """
        ...

    def read_barrier(self, timeout: float) -> Awaitable[None]:
        """ReadIndex: resolves once this node has applied everything committed before the
        call and leadership was confirmed; fails with `Unavailable` (or `TimeoutError`).
        Concurrent calls share one barrier (`BarrierBatch`): the awaitable may be shared by
        other reads, so never cancel it (await it through `asyncio.shield`)."""
        ...

    async def solo_barrier(self, timeout: float) -> None:
        """A barrier of its own, outside the shared batch: for the node's internal callers
        (the workload controller's unfencing), whose failure must never become the answer
        of the API's strong reads that would have shared it."""
        ...

    def status(self) -> NodeStatus:
        """The current status (may be called at every scrape and health probe)."""
        ...

    async def transfer(self, target: str) -> None:
        """Move leadership to `target` (this node's id: campaign now). Returns once accepted.
        Raises `Unavailable`, `Conflict` (e.g. target is a learner), `NotFound`."""
        ...

    async def remove_node(self, node_id: str, timeout: float) -> None:
        """Remove a member once the configuration change commits. Raises `Unavailable`,
        `Conflict` (e.g. another change in progress), `NotFound` (not a member)."""
        ...


class FakeNodeClient:
    """A single-process stand-in for tests: proposals become log entries applied directly.

    Knobs (set from the test, on the IOLoop thread): `fail_writes` / `fail_reads` (a message:
    propose / read_barrier raise `Unavailable`), `hold_writes` (proposals wait for
    `release_writes()` or their timeout, which raises `Unavailable` without applying), `ready`,
    `healthy`, `state`, `leader_id`, `nodes`, `read_gate` (an `asyncio.Event`: barrier calls
    wait for it). Records: `proposals`, `read_barriers` (barrier calls, after batching:
    `barriers` is the `BarrierBatch`), `transfers`, `removed`.
    """

    def __init__(self, node_id: str = "node1", *, store: DeploymentStore | None = None,
                 nodes: list[NodeInfo] | None = None, state: str = "leader",
                 cluster_id: str = "test-cluster") -> None:
        self.node_id = node_id
        self.store = store if store is not None else DeploymentStore()
        self.state = state
        self.leader_id: str | None = node_id if state == "leader" else None
        self.cluster_id = cluster_id
        self.term = 1
        self.nodes: list[NodeInfo] = nodes if nodes is not None else [
            NodeInfo(node_id, "127.0.0.1:7332", state)
        ]
        self.ready = True
        self.healthy = True
        self.uptime_seconds = 1.0
        self.fail_writes: str | None = None
        self.fail_reads: str | None = None
        self.hold_writes = False
        self.proposals: list[dict[str, Any]] = []
        self.read_barriers = 0
        self.read_gate: asyncio.Event | None = None
        self.barriers = BarrierBatch(self._read_index)
        self.transfers: list[str] = []
        self.removed: list[str] = []
        self._rid = itertools.count(1)
        self._release: asyncio.Event | None = None
        self._held = 0
        self._held_changed: asyncio.Condition | None = None

    # ------------------------------------------------------------------ protocol
    def current_leader(self) -> str | None:
        return self.leader_id

    async def propose(self, command: dict[str, Any], timeout: float) -> Result:
        if self.fail_writes is not None:
            raise Unavailable(self.fail_writes)
        if self.hold_writes:
            await self._wait_released(timeout)
        data = encode_entry(self.node_id, next(self._rid), command)
        result = self.store.apply(self.store.applied_index + 1, EntryKind.COMMAND, data)
        assert result is not None
        self.proposals.append(command)
        return result

    def read_barrier(self, timeout: float) -> Awaitable[None]:
        return self.barriers.join(timeout)

    async def solo_barrier(self, timeout: float) -> None:
        await self._read_index(timeout)

    async def _read_index(self, timeout: float) -> None:
        """One barrier call (what `BarrierBatch` coalesces reads onto)."""
        if self.fail_reads is not None:
            raise Unavailable(self.fail_reads)
        self.read_barriers += 1
        if self.read_gate is not None:
            await asyncio.wait_for(self.read_gate.wait(), timeout)

    def status(self) -> NodeStatus:
        applied = self.store.applied_index
        return NodeStatus(
            node_id=self.node_id, state=self.state, term=self.term, leader_id=self.leader_id,
            commit_index=applied, applied_index=applied, cluster_id=self.cluster_id,
            healthy=self.healthy, nodes=list(self.nodes), ready=self.ready,
            uptime_seconds=self.uptime_seconds,
        )

    async def transfer(self, target: str) -> None:
        if self.fail_writes is not None:
            raise Unavailable(self.fail_writes)
        member = self._member(target)
        if member.state == "learner":
            raise Conflict(f"{target} is a learner and cannot lead")
        self.transfers.append(target)
        self.term += 1
        self.leader_id = target
        self.nodes = [replace(n, state="leader" if n.id == target else
                              ("learner" if n.state == "learner" else "follower"))
                      for n in self.nodes]
        self.state = self._member(self.node_id).state

    async def remove_node(self, node_id: str, timeout: float) -> None:
        if self.fail_writes is not None:
            raise Unavailable(self.fail_writes)
        member = self._member(node_id)
        voters = [n for n in self.nodes if n.is_voter]
        if member.is_voter and len(voters) == 1:
            raise Conflict(f"{node_id} is the last voter")
        self.removed.append(node_id)
        self.nodes = [n for n in self.nodes if n.id != node_id]

    def snapshot_source(self) -> tuple[int, int, Any, Callable[[], bytes]]:
        """The online backup's capture (as `StateMachineActor.capture`): (applied index,
        term, membership None, encoder). Any thread (the API runs it in an executor)."""
        index, encode = self.store.snapshot_capture()
        return index, self.term, None, encode

    # ------------------------------------------------------------------ test helpers
    def _member(self, node_id: str) -> NodeInfo:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise NotFound(f"node {node_id} is not a member of the cluster")

    def commit_noop(self) -> None:
        """Apply a NOOP entry (as a new leader term would)."""
        self.store.apply(self.store.applied_index + 1, EntryKind.NOOP, b"")

    @property
    def held(self) -> int:
        """Proposals currently waiting in `hold_writes` mode."""
        return self._held

    async def wait_held(self, n: int) -> None:
        """Return once at least `n` proposals are waiting (the test bounds it with a timeout)."""
        cond = self._cond()
        async with cond:
            await cond.wait_for(lambda: self._held >= n)

    def release_writes(self) -> None:
        """Let every held proposal proceed and stop holding new ones."""
        self.hold_writes = False
        if self._release is not None:
            self._release.set()

    def _cond(self) -> asyncio.Condition:
        if self._held_changed is None:
            self._held_changed = asyncio.Condition()
        return self._held_changed

    async def _set_held(self, delta: int) -> None:
        cond = self._cond()
        async with cond:
            self._held += delta
            cond.notify_all()

    async def _wait_released(self, timeout: float) -> None:
        if self._release is None or self._release.is_set():
            self._release = asyncio.Event()
        release = self._release
        await self._set_held(1)
        try:
            await asyncio.wait_for(release.wait(), timeout)
        except TimeoutError:
            raise Unavailable(f"proposal not committed within {timeout:g}s") from None
        finally:
            await self._set_held(-1)
