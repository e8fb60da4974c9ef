"""The real `NodeClient`: the API's bridge to the raft and state-machine actors over ZeroMQ.

Everything here runs on the API IOLoop thread, which owns both sockets: a PUSH to the raft
actor and the API's own inbox (PULL at `inproc://<node>/api`) that the raft actor (`Reply`)
and the state machine (`Applied`) write to. Requests are correlated by `rid`; every wait has a
deadline. Invariants:
- A write resolves only when THIS node's state machine applied the entry carrying our rid, so
  the answer is committed, durable on a quorum and visible to a following local read.
- Waiters are bounded (`max_inflight`); beyond that a request fails 503 at once. Every
  path out of a request (answer, timeout, exception, cancellation) releases its waiter;
  nothing is registered for a request that cannot be encoded (`BadRequest`).
- A timed-out write may still commit later (its idempotency key makes a retry harmless); the
  503 message says so.
- Concurrent strong reads share one ReadIndex (`BarrierBatch`): at most one is under way,
  and a read only joins a batch whose ReadIndex has not been sent yet.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import zmq

from actors.api.errors import BadRequest, Unavailable, consensus_error
from actors.api.node import BarrierBatch, NodeInfo, NodeStatus
from prisn.fsm.commands import encode_entry
from prisn.fsm.deployments import DeploymentStore
from prisn.fsm.results import Result
from prisn.messages import (
    Applied,
    LogsReply,
    LogsRequest,
    Msg,
    ProposeBatch,
    ReadIndex,
    RemoveNode,
    Reply,
    Role,
    TransferLeadership,
)
from prisn.outcomes import Outcome
from prisn.raft.progress import NEVER
from transport.codec import Decoder, encode
from transport.mailbox import bind_inbox

log = logging.getLogger("prisn.api")

MAX_LOG_SERVES = 16  # peers' log requests read at once on this node; more answer 503
LOG_RESEND_S = 1.0  # a log request not answered yet is sent again this often
MAX_LOCAL_READS = 4  # log file reads in the default executor at once (local and for peers)
EXPIRY_SWEEP_S = 0.05  # how often expired waiters are failed (their deadline granularity)
TIMEOUT_MESSAGE = "the write was not confirmed within {t:g}s"


class RaftNodeClient:
    """NodeClient over the node's actors; construct and use on the API IOLoop thread only."""

    def __init__(self, ctx: zmq.Context, node_id: str, store: DeploymentStore, *,
                 raft_status: Callable[[], Any], raft_stats: Callable[[], Any],
                 boot_commit: int, started_at: float, max_inflight: int = 10_000,
                 metrics: Any = None, tick_seconds: float = 0.01) -> None:
        self.node_id = node_id
        self.store = store
        self._ctx = ctx
        self._raft_status = raft_status
        self._raft_stats = raft_stats
        self._boot_commit = boot_commit
        self._started_at = started_at
        self._max_inflight = max_inflight
        # Request ids must not repeat across restarts of this node: entries of an earlier
        # incarnation are replayed after a restart and carry (origin, rid); a repeated rid
        # would hand an old entry's result to a new request. A random 40-bit base per
        # process makes a collision negligible.
        self._rids = itertools.count((int.from_bytes(os.urandom(5), "big") << 20) + 1)
        self._waiters: dict[int, asyncio.Future] = {}
        self._applied_waiters: list[tuple[int, int, asyncio.Future]] = []  # heap by index
        self._wseq = itertools.count()
        # (deadline, seq, rid, future, message) of every awaited request; see `_await`
        self._deadlines: list[tuple[float, int, int, asyncio.Future, str]] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._decoder = Decoder("api")
        self._inbox: zmq.Socket | None = None
        self._proposals: list[list] = []  # [rid, data] waiting for the end of this loop turn
        self._to_raft: zmq.Socket | None = None
        self._reader: asyncio.Task | None = None
        self.applied_index = store.applied_index
        self._ready_latched = False
        self._metrics = metrics
        self._tick_seconds = tick_seconds
        # Log reads (issue 14): the data dir the runner writes instance output under (None:
        # unknown, log reads answer 503), the node asked per pending LogsRequest rid (a reply
        # from any other node is ignored) and the peers' requests being served.
        self.log_dir: str | None = None
        self._log_asks: dict[int, str] = {}
        self._log_serves = 0
        self._log_tasks: set[asyncio.Task] = set()  # referenced until done
        self._log_reads: asyncio.Semaphore | None = None
        self.barriers = BarrierBatch(self._read_index)

    # ------------------------------------------------------------------ lifecycle (IOLoop)
    def open(self) -> None:
        """Create the sockets and start the inbox reader (on the IOLoop thread)."""
        self._inbox = bind_inbox(self._ctx, self.node_id, "api")
        push = self._ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.SNDHWM, 100_000)
        push.connect(f"inproc://{self.node_id}/raft")
        self._to_raft = push
        loop = asyncio.get_running_loop()
        loop.add_reader(self._inbox.getsockopt(zmq.FD), self._on_readable)
        self._on_readable()  # the FD is edge-triggered: drain whatever is already there

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._inbox is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._inbox.getsockopt(zmq.FD))
            except Exception:  # noqa: BLE001 - loop may already be closing
                pass
            self._inbox.close(0)
            self._inbox = None
        if self._to_raft is not None:
            self._to_raft.close(0)
            self._to_raft = None
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(Unavailable("node is shutting down"))
        self._waiters.clear()

    # ------------------------------------------------------------------ inbox
    def _on_readable(self) -> None:
        sock = self._inbox
        if sock is None:
            return
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            for _ in range(4096):
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                msg = self._decoder.try_decode(frame)
                if msg is not None:
                    self._handle(msg)

    def _handle(self, msg: Msg) -> None:
        if isinstance(msg, Applied):
            for rid, status, body in msg.results:
                fut = self._waiters.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result((Outcome.parse(status), body))
            if msg.index > self.applied_index:
                self.applied_index = msg.index
            heap = self._applied_waiters
            while heap and heap[0][0] <= self.applied_index:
                _, _, fut = heapq.heappop(heap)
                if not fut.done():
                    fut.set_result(None)
        elif isinstance(msg, LogsReply):
            if self._log_asks.get(msg.rid) != msg.src:
                return  # not an answer we wait for from that node
            fut = self._waiters.pop(msg.rid, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif isinstance(msg, LogsRequest):
            self._serve_logs(msg)
        elif isinstance(msg, Reply):
            fut = self._waiters.pop(msg.rid, None)
            if fut is None or fut.done():
                return
            if msg.ok:
                fut.set_result(msg.index)
            else:
                fut.set_exception(consensus_error(Outcome.parse(msg.code), msg.reason))

    # ------------------------------------------------------------------ requests
    def _request(self, make: Callable[[int], Msg]) -> tuple[int, asyncio.Future]:
        if len(self._waiters) >= self._max_inflight:
            raise Unavailable(f"too many requests in flight on this node ({self._max_inflight})")
        rid = next(self._rids)
        data = _encoded(lambda: encode(make(rid)))  # before registering: nothing to release
        fut = asyncio.get_running_loop().create_future()
        self._waiters[rid] = fut
        try:
            assert self._to_raft is not None
            self._to_raft.send(data, zmq.NOBLOCK)
        except BaseException as exc:
            self._waiters.pop(rid, None)
            if isinstance(exc, zmq.Again):
                raise Unavailable("the raft actor's queue is full; retry") from None
            raise
        return rid, fut

    async def _await(self, rid: int, fut: asyncio.Future, timeout: float, message: str) -> Any:
        """Wait for `fut` at most `timeout` seconds (plus up to EXPIRY_SWEEP_S).

        Deadlines go on one heap swept by one timer (`_sweep`) rather than a timer handle per
        request: a create/cancel pair per request measured 3% of this thread under load."""
        heapq.heappush(self._deadlines,
                       (time.monotonic() + timeout, next(self._wseq), rid, fut, message))
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(EXPIRY_SWEEP_S, self._sweep)
        return await fut

    def _sweep(self) -> None:
        """Fail every waiter past its deadline; drop finished ones from the top of the heap."""
        now = time.monotonic()
        heap = self._deadlines
        while heap and (heap[0][0] <= now or heap[0][3].done()):
            _, _, rid, fut, message = heapq.heappop(heap)
            if not fut.done():
                self._expire(rid, fut, message)
        self._sweeper = (asyncio.get_running_loop().call_later(EXPIRY_SWEEP_S, self._sweep)
                         if heap else None)

    def _expire(self, rid: int, fut: asyncio.Future, message: str) -> None:
        self._waiters.pop(rid, None)
        if not fut.done():
            fut.set_exception(Unavailable(message))

    def current_leader(self) -> str | None:
        return self._raft_status().leader_id or None

    async def propose(self, command: dict[str, Any], timeout: float) -> Result:
        if len(self._waiters) >= self._max_inflight:
            raise Unavailable(f"too many requests in flight on this node ({self._max_inflight})")
        rid = next(self._rids)
        # Encode before registering anything: a command that cannot be encoded (e.g. a lone
        # surrogate) must not leave a waiter behind. Every exit below releases the waiter.
        entry = _encoded(lambda: encode_entry(self.node_id, rid, command))
        fut = asyncio.get_running_loop().create_future()
        self._waiters[rid] = fut
        try:
            if not self._proposals:
                asyncio.get_running_loop().call_soon(self._flush_proposals)
            self._proposals.append([rid, entry])
            result = await self._await(rid, fut, timeout, TIMEOUT_MESSAGE.format(t=timeout))
        except BaseException:
            if self._metrics is not None:
                self._metrics.proposals_failed()
            raise
        finally:
            self._waiters.pop(rid, None)
        if self._metrics is not None:
            self._metrics.proposals_committed()
        return result

    def _flush_proposals(self) -> None:
        """Send every proposal of this loop turn to raft in one message."""
        items, self._proposals = self._proposals, []
        if not items or self._to_raft is None:
            return
        try:
            self._to_raft.send(encode(ProposeBatch(src="api", dst="raft", items=items)),
                               zmq.NOBLOCK)
        except zmq.Again:
            for rid, _ in items:
                fut = self._waiters.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_exception(Unavailable("the raft actor's queue is full; retry"))

    def read_barrier(self, timeout: float) -> Awaitable[None]:
        """The next shared barrier (`BarrierBatch`; `NodeClient.read_barrier`)."""
        return self.barriers.join(timeout)

    async def solo_barrier(self, timeout: float) -> None:
        """A barrier outside the shared batch (`NodeClient.solo_barrier`)."""
        await self._read_index(timeout)

    async def _read_index(self, timeout: float) -> None:
        """One barrier: a ReadIndex to raft, then wait until this node applied its index."""
        deadline = time.monotonic() + timeout
        rid, fut = self._request(lambda rid: ReadIndex(src="api", dst="raft", rid=rid))
        msg = f"could not confirm leadership for a strong read within {timeout:g}s (no quorum?)"
        try:
            index = await self._await(rid, fut, timeout, msg)
        finally:
            self._waiters.pop(rid, None)
        if self.applied_index >= index:
            return
        wait = asyncio.get_running_loop().create_future()
        heapq.heappush(self._applied_waiters, (index, next(self._wseq), wait))
        remaining = max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(wait, remaining)
        except TimeoutError:
            raise Unavailable(f"this node did not apply index {index} within {timeout:g}s") from None

    async def transfer(self, target: str) -> None:
        rid, fut = self._request(
            lambda rid: TransferLeadership(src="api", dst="raft", rid=rid, target=target))
        try:
            await self._await(rid, fut, 5.0, "leadership transfer was not accepted within 5s")
        finally:
            self._waiters.pop(rid, None)

    async def remove_node(self, node_id: str, timeout: float) -> None:
        rid, fut = self._request(
            lambda rid: RemoveNode(src="api", dst="raft", rid=rid, node_id=node_id))
        try:
            await self._await(rid, fut, timeout,
                              f"removal of {node_id} was not committed within {timeout:g}s")
        finally:
            self._waiters.pop(rid, None)

    # ------------------------------------------------------------------ logs (issue 14)
    async def read_logs(self, node: str, instance: str, *, offset: int | None,
                        tail: int | None, limit: int, timeout: float,
                        stream: str = "stdout") -> LogsReply:
        """Up to `limit` bytes of `instance`'s output `stream` on `node`: read here when
        `node` is this node, else asked of `node` over the peer link (a LogsRequest answered
        by its LogsReply; Unavailable "node N did not answer" after `timeout`)."""
        if node == self.node_id:
            return await self._read_local(instance, offset, tail, limit, asker=node, rid=0,
                                          stream=stream)
        st = self._raft_status()
        membership = getattr(st, "membership", None)
        if membership is None or node not in membership.members():
            raise Unavailable(f"node {node} is not a member of this cluster")
        if len(self._waiters) >= self._max_inflight:
            raise Unavailable(f"too many requests in flight on this node ({self._max_inflight})")
        rid = next(self._rids)
        ask = _encoded(lambda: encode(LogsRequest(
            src=self.node_id, dst=node, cluster=st.cluster_id, rid=rid, instance=instance,
            offset=-1 if offset is None else offset, tail=-1 if tail is None else tail,
            limit=limit, stream=stream)))
        fut = asyncio.get_running_loop().create_future()
        self._waiters[rid] = fut
        self._log_asks[rid] = node
        deadline = time.monotonic() + timeout
        try:
            while True:
                # Peer sockets queue only on a live connection (IMMEDIATE): a request sent
                # while the link to `node` is (re)connecting is lost, so it is sent again
                # every LOG_RESEND_S until the deadline (a read: answering twice is
                # harmless, the second reply finds no waiter).
                self._send_raw(ask)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Unavailable(f"node {node} did not answer within {timeout:g}s")
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), min(left, LOG_RESEND_S))
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        raise Unavailable(
                            f"node {node} did not answer within {timeout:g}s") from None
        finally:
            self._waiters.pop(rid, None)
            self._log_asks.pop(rid, None)

    def _send_raw(self, data: bytes) -> None:
        """One encoded message to the raft actor, without waiting (Unavailable if full)."""
        if self._to_raft is None:
            raise Unavailable("node is shutting down")
        try:
            self._to_raft.send(data, zmq.NOBLOCK)
        except zmq.Again:
            raise Unavailable("the raft actor's queue is full; retry") from None

    async def _read_local(self, instance: str, offset: int | None, tail: int | None,
                          limit: int, *, asker: str, rid: int,
                          stream: str = "stdout") -> LogsReply:
        """Read this node's files of `instance`'s `stream` in the default executor (at most
        MAX_LOCAL_READS at once); errors become the reply's code and reason."""
        def reply(code: int, reason: str) -> LogsReply:
            return LogsReply(src=self.node_id, dst=asker, cluster="", rid=rid, code=code,
                             reason=reason, instance=instance)

        if self.log_dir is None:
            return reply(503, f"node {self.node_id} keeps no instance output")
        from actors.runner import read_log  # the runner's file layout; imported when used

        if self._log_reads is None:
            self._log_reads = asyncio.Semaphore(MAX_LOCAL_READS)
        async with self._log_reads:
            try:
                chunk = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: read_log(self.log_dir or "", instance, offset=offset,
                                           tail=tail, limit=limit, stream=stream))
            except ValueError as exc:
                return reply(400, str(exc))
            except OSError as exc:
                return reply(500, f"cannot read the output of {instance} on "
                                  f"{self.node_id}: {exc.strerror or exc}")
        return LogsReply(src=self.node_id, dst=asker, cluster="", rid=rid, instance=instance,
                         offset=chunk.offset, next_offset=chunk.next_offset,
                         truncated=chunk.truncated, data=chunk.data)

    def _serve_logs(self, m: LogsRequest) -> None:
        """Answer a member's LogsRequest (already checked by the raft shell) with a LogsReply
        sent back through raft; at most MAX_LOG_SERVES at once, more answer 503 at once."""
        cluster = self._raft_status().cluster_id

        def send(r: LogsReply) -> None:
            r = LogsReply(src=self.node_id, dst=m.src, cluster=cluster, rid=m.rid,
                          code=r.code, reason=r.reason[:1024], instance=r.instance,
                          offset=r.offset, next_offset=r.next_offset, truncated=r.truncated,
                          data=r.data)
            if self._to_raft is None:
                return
            try:
                self._to_raft.send(encode(r), zmq.NOBLOCK)
            except zmq.Again:
                pass  # the asker times out (503)

        if self._log_serves >= MAX_LOG_SERVES:
            send(LogsReply(cluster="", rid=m.rid, code=503,
                           reason=f"node {self.node_id} is busy serving logs"))
            return
        self._log_serves += 1

        async def serve() -> None:
            try:
                send(await self._read_local(
                    m.instance, None if m.offset < 0 else m.offset,
                    None if m.tail < 0 else m.tail, m.limit, asker=m.src, rid=m.rid,
                    stream=m.stream))
            except Exception:  # noqa: BLE001 - a failed read must not kill the loop
                log.exception("serving logs of %s to %s", m.instance, m.src)
                send(LogsReply(cluster="", rid=m.rid, code=500,
                               reason="internal error reading logs"))
            finally:
                self._log_serves -= 1

        task = asyncio.ensure_future(serve())
        self._log_tasks.add(task)
        task.add_done_callback(self._log_tasks.discard)

    @property
    def inflight(self) -> int:
        """Requests waiting for raft or the state machine (writes, strong reads, elections,
        removals): what `max_inflight` bounds."""
        return len(self._waiters)

    @property
    def max_inflight(self) -> int:
        return self._max_inflight

    # ------------------------------------------------------------------ status
    def status(self) -> NodeStatus:
        return build_status(self.node_id, self._raft_status(), self._raft_stats(),
                            applied=self.store.applied_index, ready=self._ready(),
                            uptime=time.monotonic() - self._started_at,
                            tick_seconds=self._tick_seconds)

    def _ready(self) -> bool:
        """Latched true once a leader is known and we applied what was committed at start.

        The persisted commit index may lag (it is written along with other writes), so a
        leader also waits until the no-op opening its term committed: everything before it
        is then committed and, once applied here, visible to local reads."""
        if not self._ready_latched:
            st = self._raft_status()
            target = self._boot_commit
            if st.role == Role.LEADER:
                term_start = getattr(st, "term_start", 0)
                if st.commit_index < term_start:
                    return False
                target = max(target, term_start)
            if st.leader_id and self.store.applied_index >= target:
                self._ready_latched = True
        return self._ready_latched and bool(self._raft_status().leader_id)


def _encoded(encode_it: Callable[[], bytes]) -> bytes:
    """`encode_it()`; a request that cannot be encoded (text with a lone surrogate, which the
    API's validation should already have refused with a 400 naming the field) is a
    `BadRequest`, never a 500 and never a waiter left behind."""
    try:
        return encode_it()
    except (UnicodeError, ValueError, TypeError) as exc:
        raise BadRequest(f"the request cannot be encoded for the log: {exc}") from None


def state_name(st: Any) -> str:
    if getattr(st, "is_learner", False):
        return "learner"
    return {Role.LEADER: "leader", Role.CANDIDATE: "candidate"}.get(st.role, "follower")


def build_status(node_id: str, st: Any, stats: Any, *, applied: int, ready: bool,
                 uptime: float, tick_seconds: float = 0.01) -> NodeStatus:
    """Core status + shell stats -> the API's NodeStatus (runs on the API thread)."""
    me = state_name(st)
    leader = st.leader_id or None
    nodes: list[NodeInfo] = []
    membership = st.membership
    voters = membership.voters if membership else {}
    learners = membership.learners if membership else {}
    progress = st.progress or {}
    reachable_voters = 0
    for nid, addr in list(voters.items()) + list(learners.items()):
        if nid == node_id:
            nodes.append(NodeInfo(id=nid, address=addr, state=me, voter=nid not in learners,
                                  lag_seconds=None if me == "leader"
                                  else _own_lag(st, stats, uptime, tick_seconds)))
            reachable_voters += nid not in learners
            continue
        p = progress.get(nid)
        if me == "leader" and p is not None:
            never = p.last_contact_ticks >= NEVER
            contact = None if never else round(p.last_contact_ticks * tick_seconds, 3)
            reachable = p.recent_active or getattr(p, "joining", False)
            voter = nid not in learners
            reachable_voters += voter and reachable
            state = ("follower" if voter else "learner") if reachable else "unreachable"
            lag_s = stats.lag_seconds.get(nid)
            sent_dropped = stats.replicators.get(nid)
            nodes.append(NodeInfo(id=nid, address=addr, state=state,
                                  last_contact_seconds=contact,
                                  lag_entries=max(0, st.last_index - p.match),
                                  lag_seconds=None if lag_s is None else round(lag_s, 3),
                                  inflight_messages=p.inflight if sent_dropped is not None
                                  else None, voter=voter))
        else:
            state = "leader" if nid == leader else ("learner" if nid in learners else "follower")
            nodes.append(NodeInfo(id=nid, address=addr, state=state, voter=nid not in learners))
    return NodeStatus(node_id=node_id, state=me, term=st.term, leader_id=leader,
                      commit_index=st.commit_index, applied_index=applied,
                      cluster_id=st.cluster_id or "", healthy=_healthy(me, leader, st, reachable_voters, len(voters)),
                      nodes=nodes, ready=ready, uptime_seconds=round(uptime, 3))


def _own_lag(st: Any, stats: Any, uptime: float, tick_seconds: float) -> float:
    """A follower's or learner's lag behind the leader, in seconds: the larger of how long
    it has known of committed entries it has not applied, and how long since it last heard
    from a leader (it may be behind without knowing). An upper bound on how stale its
    state may be; a heartbeat interval or less on a healthy follower."""
    since = getattr(stats, "behind_since", None)
    backlog = max(0.0, time.monotonic() - since) if since is not None else 0.0
    ticks = getattr(st, "ticks_since_leader_contact", 0)
    contact = uptime if ticks >= NEVER else min(ticks * tick_seconds, uptime)
    return round(max(backlog, contact), 3)


def _healthy(me: str, leader: str | None, st: Any, reachable_voters: int, voters: int) -> bool:
    """`healthy` agrees with the member states printed: on the leader, a majority of the
    voters (itself included) is shown reachable; elsewhere, a leader of this term was
    heard from within an election timeout (the core's `quorum_ok`)."""
    if not leader:
        return False
    if me == "leader":
        return voters > 0 and reachable_voters >= voters // 2 + 1
    return bool(st.quorum_ok)
