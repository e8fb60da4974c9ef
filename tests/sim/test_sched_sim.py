"""The scheduler core in the seeded simulator (see sched.py for what is checked)."""

from __future__ import annotations

import pytest

from tests.sim.sched import SchedSim
from tests.sim.sim import SimConfig

SCENARIOS = {
    "3-static": dict(nodes=3),
    "5-static": dict(nodes=5),
    "3-membership": dict(nodes=3, membership_rate=0.03),
}
SEEDS = {"3-static": 12, "5-static": 5, "3-membership": 8}


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
