"""A hand-driven cluster of RaftCores for unit tests: explicit delivery, sync and ticks.

Nothing happens unless the test asks: `deliver()` hands queued peer messages over (optionally
filtered), `sync(node)` makes a node's StoreAppends durable and tells its core, `settle()`
repeats both until quiet. Outputs are recorded per node (replies, applies, messages).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from prisn.messages import (
    Apply,
    Msg,
    Reply,
    StoreAppend,
    StoreSynced,
    Tick,
    VoteResponse,
)
from prisn.raft.boot import BootState
from prisn.raft.core import RaftCore, RaftOptions
from tests.raftsim.sim import Disk

OPTS = RaftOptions(heartbeat_ticks=2, election_ticks=10, pre_vote=True, check_quorum=True)


class Node:
    def __init__(self, nid: str, core: RaftCore) -> None:
        self.id = nid
        self.core = core
        self.disk = Disk()
        self.unsynced: list[StoreAppend] = []
        self.applied: list[list] = []
        self.replies: list[Reply] = []
        self.sent: list[Msg] = []  # every peer message ever emitted


class Cluster:
    def __init__(self, ids: list[str], opts: RaftOptions = OPTS, seed: int = 1,
                 mode: str = "static", **kw: Any) -> None:
        self.opts = opts
        self.rng = random.Random(seed)
        self.nodes: dict[str, Node] = {}
        self.queue: list[Msg] = []
        self.addrs = {i: f"addr-{i}" for i in ids}
        for i in ids:
            self.add(i, mode=mode, members=dict(self.addrs), **kw)

    def add(self, nid: str, mode: str = "static", members: dict[str, str] | None = None,
            **kw: Any) -> Node:
        self.addrs.setdefault(nid, f"addr-{nid}")
        args: dict[str, Any] = dict(kw)
        if mode == "static":
            args["initial_members"] = members
        core = RaftCore(nid, self.addrs[nid], self.opts, random.Random(self.rng.random()),
                        BootState(), **args)
        n = Node(nid, core)
        self.nodes[nid] = n
        self.route(n, core.startup())
        return n

    def restart(self, nid: str, **kw: Any) -> Node:
        """Crash `nid` (losing unsynced writes) and start it from its disk."""
        old = self.nodes[nid]
        core = RaftCore(nid, self.addrs[nid], self.opts, random.Random(self.rng.random()),
                        old.disk.boot(), **kw)
        n = Node(nid, core)
        n.disk = old.disk
        self.nodes[nid] = n
        self.queue = [m for m in self.queue if m.dst != nid]
        self.route(n, core.startup())
        return n

    def route(self, n: Node, out: list[Msg]) -> list[Msg]:
        for m in out:
            if isinstance(m, StoreAppend):
                n.unsynced.append(m)
            elif isinstance(m, Apply):
                n.applied.extend(m.entries)
            elif isinstance(m, Reply):
                n.replies.append(m)
            else:
                n.sent.append(m)
                self.queue.append(m)
        return out

    def step(self, nid: str, msgs: list[Msg]) -> list[Msg]:
        n = self.nodes[nid]
        return self.route(n, n.core.step(msgs))

    def tick(self, nid: str, times: int = 1) -> None:
        for _ in range(times):
            self.step(nid, [Tick()])

    def sync(self, nid: str) -> None:
        n = self.nodes[nid]
        if not n.unsynced:
            return
        seq = n.unsynced[-1].seq
        for sa in n.unsynced:
            n.disk.write(sa)
        n.unsynced = []
        self.step(nid, [StoreSynced(seq=seq)])

    def deliver(self, pred: Callable[[Msg], bool] | None = None) -> int:
        """Deliver queued messages matching `pred` (all by default); return how many."""
        keep, go = [], []
        for m in self.queue:
            (go if pred is None or pred(m) else keep).append(m)
        self.queue = keep
        for m in go:
            dst = m.dst
            if dst.startswith("@"):
                dst = next((k for k, a in self.addrs.items() if a == dst[1:]), "")
            if dst in self.nodes:
                self.step(dst, [m])
        return len(go)

    def settle(self, rounds: int = 50, pred: Callable[[Msg], bool] | None = None) -> None:
        for _ in range(rounds):
            for nid in list(self.nodes):
                self.sync(nid)
            if not self.deliver(pred) and not any(n.unsynced for n in self.nodes.values()):
                return

    def elect(self, nid: str) -> None:
        """Make `nid` time out and win (other nodes have not heard from a leader)."""
        core = self.nodes[nid].core
        for _ in range(4 * self.opts.election_ticks):
            self.tick(nid)
            if core.status().role != 0:
                break
        self.settle()
        assert core.is_leader, core.status()

    def leader(self) -> str:
        ls = [n.id for n in self.nodes.values() if n.core.is_leader]
        assert len(ls) == 1, ls
        return ls[0]

    def drop(self, pred: Callable[[Msg], bool]) -> None:
        self.queue = [m for m in self.queue if not pred(m)]


def win(core: RaftCore, others: list[str]) -> None:
    """Drive `core` through pre-vote and vote to leadership with grants from `others`."""
    for _ in range(40):
        core.step([Tick()])
        if core.status().pre_candidate:
            break
    term = core.term + 1
    out = core.step([VoteResponse(src=o, dst=core.id, cluster="c1", term=term, granted=True,
                                  pre=True) for o in others])
    seqs = [m.seq for m in out if isinstance(m, StoreAppend)]
    core.step([StoreSynced(seq=seqs[-1])])
    out = core.step([VoteResponse(src=o, dst=core.id, cluster="c1", term=term, granted=True)
                     for o in others])
    assert core.is_leader
    seqs = [m.seq for m in out if isinstance(m, StoreAppend)]
    core.step([StoreSynced(seq=seqs[-1])])  # the NOOP is durable on the leader
