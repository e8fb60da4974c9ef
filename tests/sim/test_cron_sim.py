"""The cron core in the seeded simulator (see cron.py for what is checked): exactly one fire
or one recorded miss per scheduled time of an ``@every 1s`` job across leader crashes and
partitions.

A failure message starts with the seed; rerun one with `CronSim(seed, SimConfig(...)).run()`.
"""

from __future__ import annotations

import pytest

from prisn.fsm import executions
from tests.raftsim.sim import SimConfig
from tests.sim.cron import CronSim

SCENARIOS = {
    "3-crashes": dict(nodes=3, crash_rate=0.03),
    "3-chaos": dict(nodes=3, partition_rate=0.04, heal_rate=0.03, crash_rate=0.02),
    "5-partitions": dict(nodes=5, partition_rate=0.05, heal_rate=0.02),
}
# seed % 3 picks the concurrency policy, seed // 3 % 3 the starting deadline (60, 3, 0 s)
SEEDS = {"3-crashes": 6, "3-chaos": 6, "5-partitions": 3}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_cron_sim(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executions, "MAX_MISSES", 100_000)  # keep every record to count
    for seed in range(SEEDS[name]):
        s = CronSim(seed, SimConfig(**SCENARIOS[name])).run()
        assert s.cron_stats["checked"] >= 100, f"seed={seed}: {s.cron_stats}"
        assert s.cron_stats["fires"] > 0, f"seed={seed}: {s.cron_stats}"


def test_cron_sim_regressions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeds that once failed. 108: a chained fire refused because its miss did not apply
    was remembered under a key derived from its times alone, and answered that 409 forever
    once the mark reached its `after` (the job stopped firing)."""
    monkeypatch.setattr(executions, "MAX_MISSES", 100_000)
    s = CronSim(108, SimConfig(nodes=3, crash_rate=0.03)).run()
    assert s.cron_stats["checked"] >= 100, s.cron_stats


def test_cron_sim_is_deterministic() -> None:
    a = CronSim(3, SimConfig(nodes=3, crash_rate=0.03)).run()
    b = CronSim(3, SimConfig(nodes=3, crash_rate=0.03)).run()
    assert list(a.trace) == list(b.trace) and a.cron_stats == b.cron_stats
