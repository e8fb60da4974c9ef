"""The scheduler core in the seeded simulator (see sched.py for what is checked).

A failure message starts with the seed; rerun one with `SchedSim(seed, SimConfig(...)).run()`.
"""

from __future__ import annotations

import pytest

from tests.raftsim.sim import SimConfig
from tests.sim.sched import SchedSim

SCENARIOS = {
    "3-static": dict(nodes=3),
    "5-static": dict(nodes=5),
    "3-membership": dict(nodes=3, membership_rate=0.03),
    "3-chaos": dict(nodes=3, partition_rate=0.04, heal_rate=0.03, crash_rate=0.02,
                    propose_rate=1.0),
}
# ~0.4 s a seed (CI share: the raft properties are covered by test_sim.py)
SEEDS = {"3-static": 12, "5-static": 5, "3-membership": 8, "3-chaos": 6}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_sched_sim(name: str) -> None:
    for seed in range(SEEDS[name]):
        s = SchedSim(seed, SimConfig(**SCENARIOS[name])).run()
        assert s.sched_stats["rounds"] > 0, f"seed={seed}: the scheduler never ran"


def test_sched_sim_is_deterministic_and_busy() -> None:
    a = SchedSim(3, SimConfig(nodes=3)).run()
    b = SchedSim(3, SimConfig(nodes=3)).run()
    assert list(a.trace) == list(b.trace) and a.sched_stats == b.sched_stats
    lid = a.live_leader()
    assert lid is not None and a.stores[lid].placements()
    assert a.stats["crashes"] > 1
