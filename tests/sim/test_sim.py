"""Deterministic simulation runs (see sim.py for the invariants checked after every step).

CI runs a few hundred seeds (~40 s); `-m soak` runs thousands. A failure message starts
with the seed; rerun one with `Sim(seed, SimConfig(...)).run()`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from prisn.raft.core import RaftCore
from tests.raftsim.sim import UNITS_PER_TICK, Sim, SimConfig, SimFailure

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
    # snapshot installs over divergent tails: nothing kept behind a snapshot, tiny
    # thresholds, frequent partitions and crashes (deposed leaders keep long uncommitted
    # tails that a snapshot from the next leader must replace)
    "3-snap-diverge": dict(nodes=3, snapshots=(2, 8), trailing_logs=0, partition_rate=0.04,
                           heal_rate=0.03, crash_rate=0.02, propose_rate=1.0),
    "5-snap-diverge": dict(nodes=5, snapshots=(2, 8), trailing_logs=0, partition_rate=0.04,
                           heal_rate=0.03, crash_rate=0.02, propose_rate=1.0),
    "5-snap": dict(nodes=5, snapshots=(5, 60)),
    # disk faults: a node's log write fails (unknown outcome), it recovers later
    "1-disk": dict(nodes=1, disk_fail_rate=0.03, partition_rate=0.0, crash_rate=0.01,
                   max_down=1),
    "3-disk": dict(nodes=3, disk_fail_rate=0.02),
    "5-disk": dict(nodes=5, disk_fail_rate=0.03),
    "3-snap-disk": dict(nodes=3, snapshots=(5, 40), disk_fail_rate=0.02),
    "3-membership-disk": dict(nodes=3, membership_rate=0.05, disk_fail_rate=0.02),
}
# Seeds per scenario: the soak profile runs 25 x SEEDS (from seed 1000); CI runs CI_SHARE of
# them (from seed 0) so that the whole suite stays well inside CI's 15-minute limit.
CI_SHARE = 0.2
SEEDS = {"3-static": 250, "5-static": 80, "3-join": 150, "3-membership": 250,
            "5-membership": 60, "3-snap": 80, "3-join-snap": 60, "3-membership-snap": 80,
            "3-snap-diverge": 60, "5-snap-diverge": 30,
            "5-snap": 30, "1-disk": 100, "3-disk": 120, "5-disk": 50, "3-snap-disk": 80,
            "3-membership-disk": 80}
CI_SEEDS = {name: max(10, round(CI_SHARE * n)) for name, n in SEEDS.items()}


# The digest of every CI seed's whole trace (Trace.digest, first 16 hex digits), recorded
# with PRISN_SIM_RECORD=1. A change of the Raft core that is meant to be a pure refactor must
# leave every one unchanged (issue 13: "safe by construction"); a change of behaviour re-records
# them in the same commit, which then shows in review.
TRACES = Path(__file__).with_name("trace_digests.json")
RECORD = os.environ.get("PRISN_SIM_RECORD") == "1"


def _recorded() -> dict[str, list[str]]:
    return json.loads(TRACES.read_text()) if TRACES.exists() else {}


def run_seeds(name: str, seeds: range) -> list[str]:
    return [Sim(seed, SimConfig(**SCENARIOS[name])).run().trace.digest()[:16]
            for seed in seeds]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_sim(name: str) -> None:
    got = run_seeds(name, range(CI_SEEDS[name]))
    if RECORD:
        table = _recorded()
        table[name] = got
        TRACES.write_text(json.dumps(dict(sorted(table.items())), indent=1) + "\n")
        return
    want = _recorded().get(name)
    assert want is not None, f"no recorded trace digests for {name}: run PRISN_SIM_RECORD=1"
    changed = [seed for seed, (a, b) in enumerate(zip(got, want, strict=False)) if a != b]
    assert not changed and len(want) == len(got), (
        f"{name}: the trace of seeds {changed[:10]} changed ({len(changed)} of {len(got)}; "
        f"{len(want)} recorded). A refactor must not change the core's behaviour; if this "
        f"change is meant to, re-record with PRISN_SIM_RECORD=1 and say so in the commit.")


@pytest.mark.soak
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_sim_soak(name: str) -> None:
    run_seeds(name, range(1000, 1000 + 25 * SEEDS[name]))


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


def test_sim_exercises_disk_faults() -> None:
    total: dict[str, int] = {}
    for seed in range(10):
        s = Sim(seed, SimConfig(**SCENARIOS["3-snap-disk"])).run()  # type: ignore[arg-type]
        for k, v in s.disk_stats.items():
            total[k] = total.get(k, 0) + v
    # failures with landed and void writes, leaders stepping down, recoveries and resumes
    # (retries: the logstore's RetryPolicy backed off while the disk was still full)
    assert all(total[k] > 10 for k in ("failures", "landed", "voided", "recoveries",
                                       "retries", "resumes", "leader_stepdowns")), total
    assert total["deferred"] > 0, total


def test_sim_snapshot_interval_holds_snapshots_back() -> None:
    """The simulator drives the state machine's SnapshotTimer: a min interval between
    snapshots (sim time) means fewer snapshots, all invariants still holding."""
    def taken(interval: int) -> int:
        return sum(Sim(seed, SimConfig(**SCENARIOS["3-snap"],  # type: ignore[arg-type]
                                       snapshot_interval=interval)).run().snap_stats["taken"]
                   for seed in range(4))
    free, held = taken(0), taken(40 * UNITS_PER_TICK)
    assert 0 < held < free, (held, free)


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


# ------------------------------------------------------------------ disk faults: the checker can fail
class FailedCountsAsSynced(RaftCore):
    """Broken: a failed write is taken as done (StoreFailed handled like StoreSynced)."""

    def _on_store_failed(self, m):  # type: ignore[no-untyped-def]
        from prisn.messages import StoreSynced
        self._on_synced(StoreSynced(seq=m.seq))


class ResumeWithoutRewrite(RaftCore):
    """Broken: after a recovery only what was never sent is written (the void writes are
    taken as written)."""

    def _on_store_recovered(self, m):  # type: ignore[no-untyped-def]
        trunc, unsaved = self._trunc_from, self._unsaved_from
        super()._on_store_recovered(m)
        self._trunc_from, self._unsaved_from = trunc, unsaved


class AckWhileBroken(RaftCore):
    """Broken: a node with a broken disk still grants votes and acknowledges appends."""

    def _send_durable(self, msg, index):  # type: ignore[no-untyped-def]
        if self._disk_error:
            self._out_peer.append(msg)
            return
        super()._send_durable(msg, index)


class KeepLeading(RaftCore):
    """Broken: a leader whose disk fails carries on."""

    def _disk_step_down(self) -> None:
        pass


@pytest.mark.parametrize("broken,nodes", [
    (FailedCountsAsSynced, 1), (FailedCountsAsSynced, 3), (ResumeWithoutRewrite, 1),
    (ResumeWithoutRewrite, 3), (AckWhileBroken, 3), (KeepLeading, 3),
])
def test_checker_catches_broken_disk_handling(broken, nodes) -> None:
    cfg = dict(SCENARIOS["1-disk"] if nodes == 1 else SCENARIOS["3-disk"], disk_fail_rate=0.05)
    # up to 300 seeds (as the message says): a 1-node leader that loses its disk steps down
    # and drops its unsynced tail, so a core skipping the rewrite is rarely wrong there
    for seed in range(300):
        try:
            Sim(seed, SimConfig(**cfg), core_factory=broken).run()  # type: ignore[arg-type]
        except SimFailure:
            return
    raise AssertionError(f"{broken.__name__} not caught in 300 seeds")


# ------------------------------------------------------------------ persist before speak, per message
class KeepStableOnInstall(RaftCore):
    """Broken (issue 12 item 7, the old core): a snapshot install over a longer conflicting
    log keeps the old durable mark and in-flight write bookkeeping, so appends after it are
    acknowledged (and applied) before they are synced."""

    def _install_point(self, index, term, mem, ref):  # type: ignore[no-untyped-def]
        stable, writes = self._stable, list(self._writes)
        super()._install_point(index, term, mem, ref)
        self._stable = max(stable, self._stable)
        self._writes.clear()
        self._writes.extend(writes)


@pytest.mark.parametrize("broken,scenario", [
    (KeepStableOnInstall, "3-snap-diverge"),
    (SpeakBeforePersist, "3-static"),
])
def test_checker_catches_speaking_before_persisting(broken, scenario) -> None:
    """The message-level check names the message that left too early. The loop ends at the
    first seed caught; the broken install is hit about once in 60 seeds of 3-snap-diverge
    (first at seed 107 since forwarded writes are confirmed and resent), hence the bound."""
    for seed in range(300):
        try:
            Sim(seed, SimConfig(**SCENARIOS[scenario]), core_factory=broken).run()
        except SimFailure as e:
            assert "persist before speak" in str(e), str(e)[:300]
            return
    raise AssertionError(f"{broken.__name__} not caught in 300 seeds")


def test_trace_digest_does_not_depend_on_the_hash_seed() -> None:
    """The recorded digests are compared across processes: a run must not depend on
    PYTHONHASHSEED (set or dict orders of strings reaching the trace)."""
    import subprocess
    import sys
    code = ("from tests.raftsim.sim import Sim, SimConfig; print(Sim(7, SimConfig(nodes=3, "
            "membership_rate=0.05, snapshots=(5, 40))).run().trace.digest())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": h},
                           cwd=Path(__file__).resolve().parents[2]).stdout
            for h in ("1", "2", "3")}
    assert len(outs) == 1, outs
