"""The fault suite's CI profile (short seeded runs) and its soak profile (`pytest -m soak`).

Seeds: each run has a fixed seed; PRISN_FAULT_SEED=<n> replaces them all (to replay a failure
or explore). Every run prints one line (seed, operations checked, faults injected, verdict);
a failing run keeps its directory (history, samples, events, node logs and data dirs) and
names it in the assertion message.
"""

from __future__ import annotations

import os

import pytest

from tests.faults.harness import PARTITIONS, RunConfig, run
from tests.faults.netns import _netns_or_skip


def _seed(default: int) -> int:
    return int(os.environ.get("PRISN_FAULT_SEED") or default)


def _check(cfg: RunConfig) -> None:
    report = run(cfg)
    assert report.as_expected, (f"{cfg.name} seed={cfg.seed} failed; history and data dirs "
                                f"kept in {report.run_dir}:\n" + "\n".join(report.violations))


# ------------------------------------------------------------------ CI profile
def test_kill_and_wipe():
    """SIGKILL of the leader or a random node, restart with the same command; a node wiped
    and replaced under a new id (removed first, then joined with --peers); forced elections."""
    _check(RunConfig("kill-wipe", _seed(1101), faults=("kill-leader", "kill", "wipe", "transfer"),
                     duration=12))


def test_pause_leader():
    """SIGSTOP/SIGCONT of the leader: once awake it must neither serve a stale strong read
    nor commit alone (the history and the leader-per-term checks)."""
    _check(RunConfig("pause-leader", _seed(2202), faults=("pause-leader",), duration=12,
                     fault_s=(0.8, 2.5)))


def test_link_delay_duplication_reordering():
    """The transport fault layer: per-link delay with jitter, duplication, reordering, loss."""
    _check(RunConfig("net-chaos", _seed(3303), faults=("net",), duration=12,
                     fault_s=(2.0, 4.0), gap_s=(0.5, 1.0)))


def test_negative_control_local_reads_are_caught():
    """The suite must be able to fail: reads WITHOUT `X-Prisn-Consistency: strong` are local
    and may be stale (as documented); with 40 ms on every link, followers trail the leader and
    the checker must report the history as not linearizable."""
    _check(RunConfig("negative-control-local-reads", _seed(5505), faults=(), duration=8,
                     strong_reads=False, expect_violation=True,
                     start_links=[{"src": "*", "dst": "*", "delay_ms": 40}]))


@pytest.mark.netns
def test_netns_partitions():
    """One namespace per node: leader isolated, random halves, one-way and lossy links."""
    _netns_or_skip()
    _check(RunConfig("netns-partitions", _seed(4404), faults=PARTITIONS, duration=12,
                     netns=True))


# ------------------------------------------------------------------ soak profile
SOAK_SEEDS = range(int(os.environ.get("PRISN_SOAK_RUNS") or 6))
ALL_LOOPBACK = ("kill-leader", "kill", "pause-leader", "wipe", "net", "transfer")
# background link chaos for odd soak runs, under the nemesis's own faults
MILD_CHAOS = [{"src": "*", "dst": "*", "delay_ms": 3, "jitter_ms": 3, "dup": 0.03,
               "reorder": 0.05, "reorder_ms": 30}]


@pytest.mark.soak
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("i", SOAK_SEEDS)
def test_soak_loopback(i):
    nodes = 5 if i % 2 else 3
    _check(RunConfig(f"soak-loopback-{nodes}n", _seed(90_000 + i), faults=ALL_LOOPBACK,
                     duration=float(os.environ.get("PRISN_SOAK_SECONDS") or 60), nodes=nodes,
                     clients=6, keys=4, start_links=MILD_CHAOS if i % 2 else [],
                     fault_s=(0.5, 4.0), gap_s=(0.3, 2.0)))


@pytest.mark.soak
@pytest.mark.netns
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("i", SOAK_SEEDS)
def test_soak_netns(i):
    _netns_or_skip()
    nodes = 5 if i % 2 else 3
    _check(RunConfig(f"soak-netns-{nodes}n", _seed(95_000 + i),
                     faults=PARTITIONS + ("kill-leader", "pause-leader", "net", "transfer"),
                     duration=float(os.environ.get("PRISN_SOAK_SECONDS") or 60), nodes=nodes,
                     clients=6, keys=4, netns=True))
