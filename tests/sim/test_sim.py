"""Deterministic simulation runs (see sim.py for the invariants checked after every step).

CI runs a few hundred seeds (~40 s); `-m soak` runs thousands. A failure message starts
with the seed; rerun one with `Sim(seed, SimConfig(...)).run()`.
"""

from __future__ import annotations

import pytest

from prisn.raft.core import RaftCore
from tests.sim.sim import Sim, SimConfig, SimFailure

SCENARIOS = {
    "3-static": dict(nodes=3),
    "5-static": dict(nodes=5),
    "3-join": dict(nodes=3, formation="join"),
    "3-membership": dict(nodes=3, membership_rate=0.05),
    "5-membership": dict(nodes=5, formation="join", membership_rate=0.03),
    # snapshots: random thresholds, compaction, InstallSnapshot over the faulty network
    "3-snap": dict(nodes=3, snapshots=(5, 40)),
    "3-join-snap": dict(nodes=3, formation="join", snapshots=(5, 40)),
    "3-membership-snap": dict(nodes=3, membership_rate=0.05, snapshots=(5, 40)),
    "5-snap": dict(nodes=5, snapshots=(5, 60)),
}
CI_SEEDS = {"3-static": 250, "5-static": 80, "3-join": 150, "3-membership": 250,
            "5-membership": 60, "3-snap": 80, "3-join-snap": 60, "3-membership-snap": 80,
            "5-snap": 30}


def run_seeds(name: str, seeds: range) -> None:
    for seed in seeds:
        Sim(seed, SimConfig(**SCENARIOS[name])).run()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_sim(name: str) -> None:
    run_seeds(name, range(CI_SEEDS[name]))


@pytest.mark.soak
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_sim_soak(name: str) -> None:
    run_seeds(name, range(1000, 1000 + 25 * CI_SEEDS[name]))


def test_sim_is_deterministic() -> None:
    a = Sim(11, SimConfig(nodes=3, membership_rate=0.05)).run()
    b = Sim(11, SimConfig(nodes=3, membership_rate=0.05)).run()
    assert list(a.trace) == list(b.trace) and a.stats == b.stats
    assert a.stats["crashes"] and a.stats["partitions"] and len(a.acked) > 100


def test_sim_exercises_faults() -> None:
    total = {"crashes": 0, "partitions": 0, "truncations": 0, "leaders": 0}
    reads = 0
    for seed in range(10):
        s = Sim(seed, SimConfig(nodes=5)).run()
        for k in total:
            total[k] += s.stats[k]
        reads += s.read_ok
    assert all(v > 5 for v in total.values()), total
    assert reads > 100


def test_sim_exercises_snapshots() -> None:
    total: dict[str, int] = {}
    for seed in range(10):
        s = Sim(seed, SimConfig(nodes=3, membership_rate=0.05, snapshots=(5, 40))).run()
        for k, v in s.snap_stats.items():
            total[k] = total.get(k, 0) + v
    # every mechanism actually ran: local snapshots, compaction, chunked installs, restarts
    assert all(total[k] > 10 for k in ("taken", "installed", "compactions", "chunks",
                                       "restarts_from_snapshot")), total


def test_sim_snapshots_deterministic() -> None:
    cfg = dict(nodes=3, membership_rate=0.05, snapshots=(5, 40))
    a = Sim(5, SimConfig(**cfg)).run()  # type: ignore[arg-type]
    b = Sim(5, SimConfig(**cfg)).run()  # type: ignore[arg-type]
    assert list(a.trace) == list(b.trace) and a.snap_stats == b.snap_stats


# ------------------------------------------------------------------ the checker can fail
class DoubleVote(RaftCore):
    """Broken: forgets its vote before each request, so it may vote twice in a term."""

    def _on_vote_request(self, m):  # type: ignore[no-untyped-def]
        self._vote = ""
        super()._on_vote_request(m)


class CommitAlone(RaftCore):
    """Broken: a leader commits what it alone has durably (no quorum)."""

    def _leader_commit(self) -> None:
        if self._stable > self._commit and self._log.term_at(self._stable) == self._term:
            self._commit = self._stable


class SpeakBeforePersist(RaftCore):
    """Broken: grants and acks leave before the write they depend on is synced."""

    def _send_durable(self, msg, index):  # type: ignore[no-untyped-def]
        self._out_peer.append(msg)


class CompactPastSnapshot(RaftCore):
    """Broken: compacts the log beyond the snapshot it was told about."""

    def _on_snapshot_taken(self, m):  # type: ignore[no-untyped-def]
        super()._on_snapshot_taken(m)
        self._compact(min(m.index + 3, self._applied))


class AckSnapshotEarly(RaftCore):
    """Broken: a follower reports a snapshot installed as soon as its first chunk arrives."""

    def _on_install_snapshot(self, m):  # type: ignore[no-untyped-def]
        from prisn.messages import InstallSnapshotResponse
        super()._on_install_snapshot(m)
        self._out_peer.append(InstallSnapshotResponse(
            src=self.id, dst=m.src, cluster=m.cluster, term=self._term, snap_id=m.snap_id,
            offset=m.offset, next_offset=m.size, done=True, index=m.index))


@pytest.mark.parametrize("broken,expect,snap", [
    (DoubleVote, "election safety|log matching", False),
    (CommitAlone, "", False),
    (SpeakBeforePersist, "", False),
    (CompactPastSnapshot, "past its snapshot|beyond", True),
    (AckSnapshotEarly, "", True),
])
def test_checker_catches_broken_core(broken, expect, snap) -> None:
    caught = None
    cfg = dict(nodes=3, snapshots=(5, 40)) if snap else dict(nodes=3)
    for seed in range(60):
        try:
            Sim(seed, SimConfig(**cfg), core_factory=broken).run()  # type: ignore[arg-type]
        except SimFailure as e:
            caught = str(e)
            break
    assert caught is not None, f"{broken.__name__} not caught in 60 seeds"
    assert caught.startswith("seed=") and "trace tail" in caught
    assert not expect or any(e in caught for e in expect.split("|")), caught[:300]
