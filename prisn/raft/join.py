"""Founding and joining a cluster: bootstrap, static member lists, force-new-cluster,
discovery before founding, join requests and the leader's admission rules.

Part of `RaftCore` (a mixin over the core's state); raft actor thread only. Invariants:
- A cluster is founded only on an empty log; with discovery, only once `found_quorum`
  peers answered they hold no cluster (or `found_wait_ticks` passed); a peer that names a
  cluster vetoes founding for good and this node joins that cluster instead.
- A node joins only while it has no configuration or its newest, uncommitted one leaves it
  out; a node removed by a committed configuration never rejoins by itself.
- The leader refuses a join from an id held by a member at another address, from a voter
  whose data dir is empty, and from a non-member whose data dir is not empty.
"""

from __future__ import annotations

import logging

from prisn.messages import EntryKind, JoinRequest, JoinResponse, SnapshotRequest
from prisn.raft.boot import Membership
from prisn.raft.common import MAX_EVENTS, NOT_LEADER, State
from prisn.raft.membership import encode_config, static_cluster_id
from prisn.raft.state import CoreState


class JoinMixin(CoreState):
    """Founding and joining of `RaftCore` (see the module doc)."""

    def _init_join(self, addr: str, bootstrap: bool, initial_members: dict[str, str] | None,
                   join: list[str] | None, force_new_cluster: str | None, found_quorum: int,
                   found_wait_ticks: int) -> None:
        self._bootstrap = bootstrap
        self._initial_members = dict(initial_members) if initial_members else None
        self._force_new_cluster = force_new_cluster
        self._join_addrs = [a for a in (join or []) if a and a != addr]
        self._known_addrs: dict[str, str] = {}  # node id -> address learnt from redirects
        self._join_elapsed = 0
        self._found_quorum = found_quorum
        self._found_wait = found_wait_ticks
        self._discovering = False  # bootstrap deferred until peers answered (see RaftCore)
        self._found_elapsed = 0
        self._fresh_peers: set[str] = set()  # ids of peers that answered: no cluster
        self._admitted = ""  # cluster whose leader accepted our JoinRequest
        self._join_refused = ""  # last refusal reason logged by this joiner
        self._join_refusals_logged: dict[tuple[str, str], int] = {}  # leader side, bounded
        self._removed_logged = False

    def _do_startup(self) -> None:
        empty = self._empty_log()
        if (empty and self._bootstrap and self._join_addrs
                and (self._found_quorum > 0 or self._found_wait > 0)):
            self._discovering = True
            when = (f"{self._found_quorum} of them answer that they hold none"
                    if self._found_quorum else
                    f"{self._found_wait} ticks pass with no cluster answering")
            self._event(logging.INFO, f"empty data dir: asking {len(self._join_addrs)} listed "
                        f"peer(s) whether a cluster exists before founding one (founds once "
                        f"{when})")
        elif empty and (self._bootstrap or self._initial_members):
            self._found()
        elif self._force_new_cluster:
            cur = self._membership
            fid = self._force_new_cluster
            if not (cur and cur.cluster == fid and set(cur.voters) == {self.id}
                    and not cur.learners):
                # a fresh term that only we can lead: we vote for ourselves in the same write
                self._term += 1
                self._vote = self.id
                self._hard_dirty = True
                m = Membership(cluster=fid, voters={self.id: self.addr})
                idx = self._log.last_index + 1
                self._append_local([[idx, self._term, int(EntryKind.CONFIG), encode_config(m)]])
                if idx > 1:
                    # joiners must get a snapshot of this point, not the old cluster's
                    # configuration entries: snapshot as soon as it applies, compact through it
                    self._force_compact = idx
                    self._out_local.append(SnapshotRequest(src="raft", dst="fsm", index=idx))
                self._state = State.CANDIDATE
                self._votes = {self.id: True}  # leader once this write is synced
        if self._need_join():
            self._send_joins()

    def _empty_log(self) -> bool:
        return self._log.last_index == 0 and self._log.snap_index == 0

    def _found(self) -> None:
        """Write the first configuration of a new cluster (bootstrap or static list)."""
        self._discovering = False
        if self._bootstrap:
            cid = f"{self.rng.getrandbits(64):016x}"
            m = Membership(cluster=cid, voters={self.id: self.addr})
        else:
            members = self._initial_members or {}
            m = Membership(cluster=static_cluster_id(members), voters=dict(members))
        if self._term < 1:
            self._term = 1
            self._hard_dirty = True
        self._append_local([[1, 1, int(EntryKind.CONFIG), encode_config(m)]])
        self._event(logging.INFO, f"founded a new cluster {m.cluster} with voters "
                    f"{', '.join(sorted(m.voters))}")
        if self._bootstrap:
            self._campaign(pre=self.opts.pre_vote)

    def _maybe_found(self) -> None:
        """Discovering: found once enough peers said they hold no cluster (or time is up)."""
        if not self._discovering or not self._empty_log():
            return
        if ((self._found_quorum > 0 and len(self._fresh_peers) >= self._found_quorum)
                or (self._found_wait > 0 and self._found_elapsed >= self._found_wait)):
            self._found()

    def _need_join(self) -> bool:
        """Send join requests? Only a node that has no configuration yet, or whose newest
        configuration is not committed and leaves it out. A node whose log holds a
        committed configuration without it was removed (or is being caught up after its
        admission): it never rejoins by itself, not even after a restart with its old data
        dir — the docs' rule is to wipe a removed node before adding it back."""
        m = self._membership
        if not self._join_addrs:
            return False
        if m is None:
            return True
        if self.id in m.members():
            return False
        if self._conf_index() <= self._commit:
            if not self._removed_logged and not self._admitted:
                self._removed_logged = True
                self._event(logging.WARNING, f"this node is not in the committed "
                            f"configuration of cluster {m.cluster} it holds (it was removed?): "
                            f"it does not rejoin by itself; if it was removed, stop it, wipe "
                            f"its data dir and start it again to add it back")
            return False
        return True

    def _send_joins(self) -> None:
        self._join_elapsed = 0
        for a in self._join_addrs:
            self._out_peer.append(JoinRequest(src=self.id, dst="@" + a, cluster=self._cluster,
                                              term=self._term, node_id=self.id,
                                              addr=self.addr, fresh=self._empty_log()))

    def _on_join_request(self, m: JoinRequest) -> None:
        dst = "@" + m.addr
        if self._discovering and not m.cluster and m.fresh and m.node_id != self.id:
            self._fresh_peers.add(m.node_id)  # a fresh peer asking us: it holds no cluster
            self._maybe_found()
        if self._state is State.LEADER:
            refusal = self._join_refusal(m)
            if refusal:
                key = (m.node_id[:128] + "@" + m.addr[:256], refusal)
                if key not in self._join_refusals_logged:  # once per joiner and reason
                    if len(self._join_refusals_logged) >= MAX_EVENTS:
                        self._join_refusals_logged.clear()
                    self._join_refusals_logged[key] = self._now
                    self._event(logging.WARNING, f"refused the join of {m.node_id!r:.130} at "
                                f"{m.addr!r:.260}: {refusal}")
                ok, reason = False, refusal
            else:
                ok, _code, reason, idx = self._leader_change("add", m.node_id, m.addr)
                if ok and idx:
                    self._event(logging.INFO, f"adding {m.node_id} at {m.addr} as a learner "
                                f"(config entry {idx}); it is promoted once caught up")
            self._out_peer.append(JoinResponse(
                src=self.id, dst=dst, cluster=self._cluster, term=self._term, ok=ok,
                leader=self.id, leader_addr=self.addr, reason=reason))
            return
        lid = self._leader_id
        self._out_peer.append(JoinResponse(
            src=self.id, dst=dst, cluster=self._cluster, term=self._term, ok=False, leader=lid,
            leader_addr=(self.address_of(lid) or "") if lid else "", reason=NOT_LEADER))

    def _join_refusal(self, m: JoinRequest) -> str:
        """Leader: why `m` must not be admitted ("" to admit). A node id held by a member at
        another address is refused (two hosts with one hostname must not share a member
        entry); so is a voter whose data dir is empty (wiped): it lost its vote and the
        entries it acknowledged, and letting it back under its old id could lose committed
        writes. It is let in again once removed (docs/design-notes.md). A non-member whose
        data dir is not empty (a removed node restarted or still running, a data dir of
        another cluster) is refused too: its old log and vote must not come back."""
        mem = self._membership
        if mem is None:
            return ""
        nid = m.node_id
        cur = mem.members().get(nid)
        if cur is not None and cur != m.addr:
            return (f"node id {nid} is taken by the member at {cur} (cluster {mem.cluster}); "
                    f"give this node a unique --node-id")
        if cur is None and not m.fresh:
            return (f"node {nid} is not a member of cluster {mem.cluster} but its data dir "
                    f"is not empty (was it removed?): a removed node never rejoins with its "
                    f"old data; wipe its data dir, then start it again to add it back")
        if m.fresh and nid in mem.voters:
            return (f"node {nid} is a voter of cluster {mem.cluster} but its data dir is "
                    f"empty; remove it first (prisn cluster remove {nid}), then start it "
                    f"again to rejoin")
        return ""

    def _on_join_response(self, m: JoinResponse) -> None:
        if m.leader and m.leader_addr:
            self._known_addrs[m.leader] = m.leader_addr
        if self._discovering:
            if not m.cluster:
                if m.src != self.id:
                    self._fresh_peers.add(m.src)
                self._maybe_found()
                return
            self._discovering = False  # a cluster exists: join it, never found a second one
            self._event(logging.WARNING, f"peer {m.src} belongs to cluster {m.cluster}: "
                        f"joining it instead of founding a new cluster")
        if not self._need_join():
            return
        if m.ok:
            if self._admitted and m.cluster != self._admitted:
                self._drop("join_other_cluster")
                return
            if not self._admitted and m.cluster:
                self._admitted = m.cluster
                self._join_refused = ""
                self._event(logging.INFO, f"joined cluster {m.cluster} through leader "
                            f"{m.leader or m.src}; catching up as a learner")
            return
        if m.reason and m.reason != NOT_LEADER and m.leader == m.src:
            if m.reason != self._join_refused:
                self._join_refused = m.reason
                self._event(logging.ERROR, f"join refused by leader {m.src} of cluster "
                            f"{m.cluster}: {m.reason}")
            return
        if m.leader and m.leader != m.src and m.leader_addr and m.leader_addr != self.addr:
            self._out_peer.append(JoinRequest(src=self.id, dst="@" + m.leader_addr,
                                              cluster=self._cluster, term=self._term,
                                              node_id=self.id, addr=self.addr,
                                              fresh=self._empty_log()))
