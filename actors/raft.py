"""The raft actor: the thin shell around the pure `RaftCore`.

Runs on its own thread. Owns the core (term, vote, role, commit index), the peer inbox (a PULL
socket on `--raft-addr`) and the replicator actors, which it starts and stops as the
membership changes. Each poll batch (local and peer messages together) goes to the core in one
`step()`, and everything the core returns is sent in one go, so a burst of proposals becomes
one log write and one AppendEntries per peer.

Invariants:
- Only messages of peer types are accepted from the peer socket; anything else, and any frame
  the codec refuses, is dropped and counted (by reason: malformed, unknown_type, wire_version),
  never raised.
- The wire version each member speaks is learned from every frame it sends (`wire_versions`,
  "major.minor"); only current members are kept, so the map is bounded by the membership. A
  change is logged (a warning when the major differs: that peer's frames are all dropped).
- `status` is an immutable snapshot replaced (never mutated) after every step; other threads
  read it without a lock.
- `SnapSend` (snapshot chunk requests) go to the peer's replicator control inbox; the raft
  thread never reads snapshot files.
- A replicator can never stop or stall this actor: messages for it are sent without waiting
  (`_send_repl`); a full inbox costs that peer the message (counted in `repl_full`, logged at
  most once per REPL_FULL_LOG_S), never the node. Each replicator incarnation has its own inbox
  names (`repl:<peer>#<n>`), and a stopped one is never joined here: it closes itself, and a
  new one for the same peer starts at once under fresh names (an inproc PUSH connected to a
  closed inbox never reconnects to a new bind of that name, so names are never reused).
- With the cluster's `CurveKeys` the peer inbox is a CURVE server and every replicator a
  CURVE client: a peer without the key never gets a frame to `_peer_frames`. Handshakes that
  fail on the peer inbox are counted in `peer_auth` (reason ``handshake``) through a socket
  monitor polled by this thread; the ZAP handler counts the key refusals.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

import zmq

from actors.base import Actor
from actors.replicator import ReplicatorActor
from prisn.messages import (
    PEER_TYPES,
    WIRE_MINOR,
    WIRE_VERSION,
    ForwardPropose,
    ForwardProposeBatch,
    JoinRequest,
    LogsReply,
    LogsRequest,
    Msg,
    Propose,
    ProposeBatch,
    Role,
    SnapSend,
    StoreAppend,
)
from prisn.raft.boot import Membership
from prisn.raft.core import RaftCore
from prisn.workloads.logfetch import peer_error
from transport.codec import DecodeError, VersionMismatch, decode_versioned, encode
from transport.curve import SERVER_FAILURE_EVENTS, CurveKeys, HandshakeWatcher, PeerAuthStats
from transport.mailbox import MailboxFull, bind_peer_inbox, tcp_endpoint

log = logging.getLogger("prisn.raft")

LOCAL_DESTS = frozenset({"logstore", "fsm", "api"})
MAX_ADDR_REPLICATORS = 16
REMOVED_LINGER_S = 10.0  # a removed member's replicator outlives its removal this long
REPL_FULL_LOG_S = 10.0  # at most one warning per peer this often about a full replicator inbox
FORWARD_BATCH_BYTES = 4 << 20  # data per ForwardProposeBatch frame (the peer cap is 16 MiB)
# Peer log messages (issue 14): relayed between the local API and a member's raft shell;
# the core never sees them.
LOG_TYPES = (LogsRequest, LogsReply)


def _members(st) -> dict[str, str]:
    """Voters and learners of `st` (test doubles may carry no real Membership)."""
    members = getattr(getattr(st, "membership", None), "members", None)
    return members() if callable(members) else {}


def _pack_forwards(dst: str, fwds: list[ForwardPropose]) -> Msg:
    first = fwds[0]
    if len(fwds) == 1:
        return first
    return ForwardProposeBatch(src=first.src, dst=dst, cluster=first.cluster, term=first.term,
                               items=[[f.rid, f.data] for f in fwds])


@dataclass(frozen=True)
class ShellStats:
    """Counters and timings the shell keeps beside the core's status (published together)."""

    leader_changes: int = 0
    peer_dropped: int = 0
    unroutable: int = 0
    repl_full: int = 0  # messages dropped because a replicator's inbox was full
    lag_seconds: dict = field(default_factory=dict)  # peer -> seconds behind (leader only)
    # not leader: monotonic time since which this node knows of committed entries it has
    # not applied yet (None when caught up)
    behind_since: float | None = None
    replicators: dict = field(default_factory=dict)  # peer -> (sent, dropped)
    peer_drops: dict = field(default_factory=dict)  # codec reason (not malformed) -> count
    wire_versions: dict = field(default_factory=dict)  # member -> "major.minor" it speaks


class RaftActor(Actor):
    """Shell: decode, step the core, route outputs, publish status."""

    def __init__(self, ctx: zmq.Context, node_id: str, core: RaftCore, *,
                 listen_addr: str | None, on_leader_change=None, curve: CurveKeys | None = None,
                 peer_auth: PeerAuthStats | None = None, **kw) -> None:
        super().__init__("raft", ctx, node_id, **kw)
        self._on_leader_change = on_leader_change
        self.core = core
        self.listen_addr = listen_addr
        self.curve = curve
        self.peer_auth = peer_auth if peer_auth is not None else PeerAuthStats()
        self._peer_sock: zmq.Socket | None = None
        self.status = core.status()
        self.stats = ShellStats()
        self._batch: list[Msg] = []
        self._replicators: dict[str, ReplicatorActor] = {}
        self._lingering: dict[str, float] = {}  # removed peer -> monotonic time to stop it
        self._retired: list[ReplicatorActor] = []  # stopped, not yet seen to end (on_stop joins)
        self._repl_gen = 0  # incarnation counter for unique replicator inbox names
        self._repl_full = 0
        self._repl_full_by: dict[str, int] = {}  # peer -> messages dropped on a full inbox
        self._repl_full_logged: dict[str, float] = {}  # peer -> monotonic time of last warning
        self._addr_repls: deque[str] = deque()
        self._appended: deque[tuple[int, float]] = deque(maxlen=100_000)
        self._leader_changes = 0
        self._last_leader = self.status.leader_id
        self._peer_dropped = 0
        self._wire: dict[str, str] = {}  # member -> "major.minor" of its latest frame
        self._unroutable = 0
        self._last_stats = 0.0
        self._behind_since: float | None = None
        self._kw = kw

    # ------------------------------------------------------------------ hooks
    def on_start(self) -> None:
        if self.listen_addr:
            sock = bind_peer_inbox(self.ctx, self.listen_addr, self.curve)
            self.add_socket(sock, self._peer_frames)
            if self.curve is not None:
                self._peer_sock = sock
                watcher = HandshakeWatcher(f"the raft port {self.listen_addr}",
                                           SERVER_FAILURE_EVENTS, self.peer_auth)
                self.add_socket(watcher.attach(sock), watcher)
            log.info("raft listening on %s (%s)", self.listen_addr,
                     "CurveZMQ, cluster key holders only" if self.curve is not None
                     else "plaintext")
        self._dispatch(self.core.startup())
        self._publish()

    def on_messages(self, msgs: list[Msg]) -> None:
        batch = self._batch
        for m in msgs:
            if type(m) is ProposeBatch:
                for item in m.items:
                    if (isinstance(item, list) and len(item) == 2 and type(item[0]) is int
                            and type(item[1]) is bytes):
                        batch.append(Propose(src=m.src, dst="raft", rid=item[0], data=item[1]))
                    else:
                        self.decoder.dropped += 1
            elif type(m) in LOG_TYPES:
                self._relay_out(m)
            else:
                batch.append(m)

    def _relay_out(self, m: Msg) -> None:
        """The local API's log request or reply -> the replicator of member `m.dst` (raft
        thread, never blocks). Not a member (or an address-only peer): dropped, counted in
        `unroutable`; the API's wait for the answer times out."""
        r = None if m.dst.startswith("@") or m.dst == self.node_id else self._replicator_for(m.dst)
        if r is None:
            self._unroutable += 1
            return
        self._send_repl(r, r.actor_name, encode(m))

    def _relay_in(self, m: Msg) -> None:
        """A member's log request or reply -> the local API (raft thread, never blocks); one
        not for this node and cluster, not from another member or malformed is dropped."""
        st = self.status
        why = peer_error(m, me=self.node_id, cluster=getattr(st, "cluster_id", ""),
                         members=_members(st))
        if why is not None:
            self._peer_dropped += 1
            log.debug("dropped %s from %r: %s", m.T, m.src[:80], why)
            return
        try:
            self.outbox.send_nowait("api", encode(m))  # type: ignore[union-attr]
        except MailboxFull:
            self._peer_dropped += 1  # the asking node times out (503)

    def _peer_frames(self, frames: list[bytes]) -> None:
        dec = self.decoder  # local and peer frames: one count, split by reason
        max_bytes = dec.max_bytes
        wire = self._wire
        for f in frames:
            try:
                m, minor = decode_versioned(f, max_bytes)
            except VersionMismatch as e:
                dec.count(e)
                self._learn_wire(e.src, f"{e.version}.{e.minor}")
                continue
            except DecodeError as e:
                dec.count(e)
                continue
            if wire.get(m.src) != (v := f"{WIRE_VERSION}.{minor}"):
                self._learn_wire(m.src, v)
            if type(m) is ForwardProposeBatch:
                self._unpack_forwards(m)
            elif type(m) in LOG_TYPES:
                self._relay_in(m)
            elif m.T not in PEER_TYPES:
                self._peer_dropped += 1
                log.warning("dropped %s from the peer socket: not a peer message", m.T)
            elif type(m) is JoinRequest and not _valid_join(m):
                self._peer_dropped += 1
                log.warning("dropped a join request with a bad node id or address: %r at %r",
                            m.node_id[:80], m.addr[:80])
            else:
                self._batch.append(m)

    def _learn_wire(self, src: str, version: str) -> None:
        """Record (and log) that member `src` speaks `version`; others are ignored."""
        if src == self.node_id or src not in _members(self.status):
            return
        old = self._wire.get(src)
        self._wire[src] = version
        if not version.startswith(f"{WIRE_VERSION}."):
            log.warning("peer %s speaks wire version %s, this node %d.%d: its messages are "
                        "dropped", src, version, WIRE_VERSION, WIRE_MINOR)
        elif old is not None or version != f"{WIRE_VERSION}.{WIRE_MINOR}":
            log.info("peer %s speaks wire version %s (was %s; this node %d.%d)", src, version,
                     old or "unknown", WIRE_VERSION, WIRE_MINOR)

    def _unpack_forwards(self, m: ForwardProposeBatch) -> None:
        """A follower's batch of forwarded writes -> the ForwardPropose messages it packs;
        a malformed item is dropped and counted, the others go on."""
        for item in m.items:
            if (isinstance(item, list) and len(item) == 2 and type(item[0]) is int
                    and type(item[1]) is bytes):
                self._batch.append(ForwardPropose(src=m.src, dst=m.dst, cluster=m.cluster,
                                                  term=m.term, rid=item[0], data=item[1]))
            else:
                self._peer_dropped += 1

    def on_batch_end(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        self._dispatch(self.core.step(batch))
        self._publish()

    def on_stop(self) -> None:
        if self._peer_sock is not None:
            self._peer_sock.disable_monitor()  # the base closes both sockets after this
            self._peer_sock = None
        for r in self._replicators.values():
            r.stop()
        for r in [*self._replicators.values(), *self._retired]:
            r.join(timeout=2)  # shutting down: the node stops anyway, nothing waits on raft
        self._replicators.clear()
        self._retired.clear()

    # ------------------------------------------------------------------ routing
    def _dispatch(self, out: list[Msg]) -> None:
        """Send a step's output: messages for peers first, then the local ones (each group in
        the core's order). Peer messages never depend on a local message of the same step
        (the core holds back what needs a sync until the StoreSynced), and a follower's work is
        the longer half of a replicated write: waking the replicators before the log store
        (whose RocksDB write holds the GIL) starts it one GIL hand-over sooner."""
        if not out:
            return
        send_bytes = self.outbox.send_bytes  # type: ignore[union-attr]
        leader = self.status.role == Role.LEADER
        forwards: dict[str, list[ForwardPropose]] = {}
        local: list[Msg] = []
        for m in out:
            dst = m.dst
            if type(m) is ForwardPropose:
                forwards.setdefault(dst, []).append(m)
                continue
            if dst in LOCAL_DESTS:
                local.append(m)
                continue
            r = self._replicator_for(dst)
            if r is None:
                self._unroutable += 1
                continue
            if type(m) is SnapSend:
                self._send_repl(r, r.ctl, encode(m))  # the replicator reads the file
                continue
            self._send_repl(r, r.actor_name, encode(m))
        for dst, fwds in forwards.items():
            self._send_forwards(dst, fwds)
        for m in local:
            if leader and isinstance(m, StoreAppend) and m.entries:
                self._appended.append((m.entries[-1][0], time.monotonic()))
            send_bytes(m.dst, encode(m))

    def _send_forwards(self, dst: str, fwds: list[ForwardPropose]) -> None:
        """One step's forwarded writes to `dst` as ForwardProposeBatch frames of at most
        FORWARD_BATCH_BYTES of data each (a lone write goes as a plain ForwardPropose)."""
        r = self._replicator_for(dst)
        if r is None:
            self._unroutable += len(fwds)
            return
        repl = r.actor_name
        chunk: list[ForwardPropose] = []
        size = 0
        for f in fwds:
            if chunk and size + len(f.data) > FORWARD_BATCH_BYTES:
                self._send_repl(r, repl, encode(_pack_forwards(dst, chunk)))
                chunk, size = [], 0
            chunk.append(f)
            size += len(f.data)
        self._send_repl(r, repl, encode(_pack_forwards(dst, chunk)))

    def _send_repl(self, r: ReplicatorActor, inbox: str, data: bytes) -> None:
        """Hand a peer message to replicator `r` (its `inbox` or its control inbox) without
        ever blocking or raising (raft thread): a full, stopped or slow replicator costs its
        peer the message (counted, logged rate-limited), never the node. Raft retransmits
        what matters; forwarded writes are tracked and retried by the core."""
        try:
            self.outbox.send_nowait(inbox, data)  # type: ignore[union-attr]
        except MailboxFull:
            peer = r.peer
            self._repl_full += 1
            n = self._repl_full_by[peer] = self._repl_full_by.get(peer, 0) + 1
            now = time.monotonic()
            if now - self._repl_full_logged.get(peer, float("-inf")) >= REPL_FULL_LOG_S:
                self._repl_full_logged[peer] = now
                log.warning("replicator for %s is not keeping up (its inbox is full): its "
                            "messages are dropped (%d so far); Raft resends", peer, n)

    def _replicator_for(self, dst: str) -> ReplicatorActor | None:
        r = self._replicators.get(dst)
        if r is not None:
            return r
        if dst.startswith("@"):
            addr = dst[1:]
            while len(self._addr_repls) >= MAX_ADDR_REPLICATORS:
                self._stop_replicator(self._addr_repls.popleft())
        else:
            addr = self.core.address_of(dst)
            if not addr:
                return None
        if not self._start_replicator(dst, addr):
            return None
        if dst.startswith("@"):
            self._addr_repls.append(dst)
        return self._replicators[dst]

    def _start_replicator(self, peer: str, addr: str) -> bool:
        """Start a replicator; False (and nothing started) for an address we cannot use.

        A replicator's own failure stops only that replicator, never the node: its address
        may have come from a peer."""
        try:
            tcp_endpoint(addr, bind=False)
        except ValueError as e:
            log.warning("no replicator for %s: %s", peer, e)
            return False
        self._repl_gen += 1
        r = ReplicatorActor(self.ctx, self.node_id, peer, addr, max_frame=self.decoder.max_bytes,
                            curve=self.curve, name=f"repl:{peer}#{self._repl_gen}")
        r.closing = self.closing
        r.start()
        r.started.wait(5)
        if r.failure is not None:
            log.warning("replicator for %s at %s failed to start: %s", peer, addr, r.failure)
            r.join(1)
            return False
        self._replicators[peer] = r
        log.info("replicator for %s at %s started", peer, addr)
        return True

    def _stop_replicator(self, peer: str) -> None:
        """Stop `peer`'s replicator without waiting for it (raft thread): it closes itself at
        its next poll; our PUSH sockets to its inboxes are closed now, so nothing is ever
        sent to a dead inbox name (the next replicator for `peer` gets fresh names)."""
        r = self._replicators.pop(peer, None)
        if r is None:
            return
        r.stop()
        outbox = self.outbox
        if outbox is not None:
            outbox.forget(r.actor_name)
            outbox.forget(r.ctl)
        self._retired = [x for x in self._retired if x.is_alive()]
        self._retired.append(r)

    def _sync_replicators(self) -> None:
        """Stop replicators of nodes that moved to a new address; those of nodes that left the
        membership linger REMOVED_LINGER_S first (raft thread): the configuration takes
        effect when appended, and the answer to a removal asked through the removed node
        itself (a ForwardResponse, sent at commit) must still reach it."""
        now = time.monotonic()
        for peer in list(self._replicators):
            if peer.startswith("@"):
                continue
            addr = self.core.address_of(peer)
            if addr is None:
                self._lingering.setdefault(peer, now + REMOVED_LINGER_S)
            elif addr != self._replicators[peer].addr:
                self._lingering.pop(peer, None)
                self._stop_replicator(peer)
            else:
                self._lingering.pop(peer, None)  # re-added at the same address

    def _expire_lingering(self, now: float) -> None:
        """Stop the replicators of removed members whose linger ended (raft thread)."""
        for peer, until in list(self._lingering.items()):
            if now >= until:
                del self._lingering[peer]
                if self.core.address_of(peer) is None:
                    self._stop_replicator(peer)

    # ------------------------------------------------------------------ status
    def _publish(self) -> None:
        st = self.core.status()
        if st.fatal:
            # The log store cannot be trusted any more (corruption found on reopen): fail the
            # actor so the node exits 1 for an operator. A disk that is merely full or failing
            # is not fatal: the core refuses writes (507) until the logstore recovers.
            raise RuntimeError(f"raft stopped: {st.fatal}")
        if st.disk_error != self.status.disk_error:
            if st.disk_error:
                log.error("the log cannot be written (%s): stepped down if leading; writes on "
                          "this node answer 507 until the disk recovers", st.disk_error,
                          extra={"event": "disk_error", "error": st.disk_error})
            else:
                log.warning("the log can be written again; this node rejoins fully",
                            extra={"event": "disk_recovered"})
        take = getattr(self.core, "take_events", None)  # test doubles may lack it
        for level, text in (take() if take is not None else ()):
            log.log(level, "raft: %s", text, extra={"event": "raft", "term": getattr(st, "term", 0),
                                                     "leader": getattr(st, "leader_id", "") or None})
        _log_changes(self.node_id, self.status, st)
        if st.leader_id != self._last_leader:
            if st.leader_id:
                self._leader_changes += 1
                if self._on_leader_change is not None:
                    self._on_leader_change()
            self._last_leader = st.leader_id
        if st.membership is not self.status.membership:
            self._sync_replicators()
        # Stats are refreshed at most every 0.1 s, and at once when the role or the
        # membership changes, so a new leader never shows peers without a lag figure.
        changed = (getattr(st, "role", None) != getattr(self.status, "role", None)
                   or st.membership is not self.status.membership)
        self.status = st
        now = time.monotonic()
        if self._lingering:
            self._expire_lingering(now)
        if changed or now - self._last_stats >= 0.1:
            self._last_stats = now
            peer_drops = {r: n for r, n in self.decoder.drops.items() if r != "malformed"}
            self.stats = ShellStats(
                leader_changes=self._leader_changes,
                peer_dropped=self._peer_dropped + self.decoder.dropped - sum(peer_drops.values()),
                unroutable=self._unroutable,
                repl_full=self._repl_full,
                lag_seconds=self._lags(st, now),
                behind_since=self._behind(st, now),
                replicators={p: (r.sent, r.dropped + self._repl_full_by.get(p, 0))
                             for p, r in self._replicators.items()},
                peer_drops=peer_drops,
                wire_versions=self._wire_versions(st),
            )

    def _wire_versions(self, st) -> dict[str, str]:
        """The learned versions of current members (forgets removed ones)."""
        members = _members(st)
        for gone in [p for p in self._wire if p not in members]:
            del self._wire[gone]
        return dict(self._wire)

    def _behind(self, st, now: float) -> float | None:
        """Not leader: since when commit_index has been ahead of applied_index."""
        if st.role == Role.LEADER or getattr(st, "commit_index", 0) <= getattr(
                st, "applied_index", 0):
            self._behind_since = None
        elif self._behind_since is None:
            self._behind_since = now
        return self._behind_since

    def _lags(self, st, now: float) -> dict:
        """Seconds since the oldest entry a peer is missing was appended (leader only)."""
        if st.role != Role.LEADER or not st.progress:
            self._appended.clear()
            return {}
        lags = {}
        appended = self._appended
        floor = min(p.match for p in st.progress.values())
        while appended and appended[0][0] <= floor:
            appended.popleft()
        for peer, p in st.progress.items():
            lag = 0.0
            for idx, t in appended:
                if idx > p.match:
                    lag = now - t
                    break
            lags[peer] = lag
        return lags


def _log_changes(me: str, old, new) -> None:
    """Log, once, a new leader and every membership change between two published statuses
    (raft thread). Membership changes are logged when the entry reaches this node's log.

    Each record carries structured fields (`extra=`, shown by ``--log-format json``):
    `event` (leader_elected, cluster_members, member_added, member_promoted, member_removed,
    removed_self), `term`, `leader`, and `member` for a member change."""
    term = getattr(new, "term", 0)
    leader = new.leader_id or None
    if new.leader_id and (new.leader_id != old.leader_id or term != getattr(old, "term", 0)):
        log.info("raft: leader is %s (term %d)%s", new.leader_id, term,
                 " (this node)" if new.leader_id == me else "",
                 extra={"event": "leader_elected", "term": term, "leader": leader})
    om, nm = old.membership, new.membership
    if nm is om or not isinstance(nm, Membership) or om == nm:
        return

    def ev(event: str, member: str | None = None, **more: object) -> dict:
        out: dict = {"event": event, "term": term, "leader": leader, "cluster": nm.cluster}
        if member is not None:
            out["member"] = member
        out.update(more)
        return out

    if not isinstance(om, Membership):  # boot, or a joiner's first configuration
        log.info("raft: cluster %s: voters %s, learners %s", nm.cluster,
                 ", ".join(sorted(nm.voters)) or "-", ", ".join(sorted(nm.learners)) or "-",
                 extra=ev("cluster_members", voters=sorted(nm.voters),
                          learners=sorted(nm.learners)))
        return
    for nid in sorted(nm.learners.keys() - om.members().keys()):
        log.info("raft: member %s added as a learner at %s", nid, nm.learners[nid],
                 extra=ev("member_added", nid, role="learner", address=nm.learners[nid]))
    for nid in sorted(nm.voters.keys() - om.voters.keys()):
        if nid in om.learners:
            log.info("raft: member %s promoted to voter", nid, extra=ev("member_promoted", nid))
        else:
            log.info("raft: member %s added as a voter at %s", nid, nm.voters[nid],
                     extra=ev("member_added", nid, role="voter", address=nm.voters[nid]))
    for nid in sorted(om.members().keys() - nm.members().keys()):
        if nid == me:
            log.warning("raft: this node (%s) was removed from cluster %s", me, nm.cluster,
                        extra=ev("removed_self", nid))
        else:
            log.info("raft: member %s removed", nid, extra=ev("member_removed", nid))


def _valid_join(m: JoinRequest) -> bool:
    """A joiner's id and address are about to enter the replicated membership: check them."""
    nid = m.node_id
    if not nid or len(nid) > 128 or any(c.isspace() or c in "/@" for c in nid) or not nid.isprintable():
        return False
    try:
        tcp_endpoint(m.addr, bind=False)
    except ValueError:
        return False
    return bool(m.addr.rpartition(":")[0])
