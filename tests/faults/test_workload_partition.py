"""A partitioned node stops its instances before their replacements start (issue 14 proof),
with REAL network namespaces: three `prisn server` processes, one per namespace, and the node
running a single-replica service cut off from the other two by nft drop rules both ways.

The old instance's end and the replacement's start are measured twice: by sampling /proc from
the host (the namespaces share the PID namespace) and by the script's own marks (wall-clock
start time, and stop time written on SIGTERM). Both overlaps must be <= 0. After the heal the
returning node runs nothing the log placed elsewhere. Needs root; skips cleanly otherwise."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from benchmarks.workloads import processes
from tests.faults import netns
from tests.faults.harness import Cluster, RunConfig
from tests.faults.netns import _netns_or_skip
from tests.helpers import wait_for

pytestmark = pytest.mark.netns

NDA = 2.0  # --node-down-after
WAIT = 30.0
ELECTION_MS = 300

# sleeps; writes `<node>-<pid>.start` (time.time()) at start, `.stop` on SIGTERM
MARKED = """\
import os, signal, sys, time
base = os.path.join(os.environ["MARKS"], os.environ["PRISN_NODE"] + "-" + str(os.getpid()))
def mark(kind):
    tmp = base + "." + kind + ".tmp"
    with open(tmp, "w") as f:
        f.write(repr(time.time()))
    os.replace(tmp, base + "." + kind)
def stop(*_):
    mark("stop")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
mark("start")
while True:
    time.sleep(1)
"""


class WorkloadCluster(Cluster):
    """The fault suite's cluster with the workload flags this test needs."""

    @property
    def extra(self) -> list[str]:
        return [*super().extra, "--node-down-after", f"{NDA:g}s", "--stop-grace", "2s"]


def marks(d: Path, kind: str) -> dict[str, float]:
    """`<node>-<pid>` -> the time the script wrote for `kind` (start/stop)."""
    out = {}
    for p in d.glob(f"*.{kind}"):
        text = p.read_text()
        if text:
            out[p.name[: -len(kind) - 1]] = float(text)
    return out


def status(node, name: str) -> dict:
    r = node.req("GET", f"/api/v1/deployments/{name}", timeout=5)
    assert r.status == 200, (r.status, r.body[:300])
    return r.json()["status"]


def one_running(node, name: str) -> dict | None:
    s = status(node, name)
    inst = [i for i in s.get("instances", ()) if i.get("state") == "Running"]
    return inst[0] if len(inst) == 1 and s.get("ready_replicas") == 1 else None


def test_a_partitioned_node_in_a_namespace_fences_before_its_replacement_starts(
        tmp_path: Path):
    _netns_or_skip()
    seed = int(os.environ.get("PRISN_FAULT_SEED") or 1414)
    net = netns.Netns(seed, 3)
    cfg = RunConfig("workload-partition", seed, faults=(), netns=True,
                    election_ms=ELECTION_MS, heartbeat_ms=60, write_timeout_s=2.0)
    control = tmp_path / "faults.json"
    control.write_text('{"links": []}')
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    script = scripts / "marked.py"
    script.write_text(MARKED)
    mk = tmp_path / "marks"
    mk.mkdir()
    under = str(scripts)
    cluster = WorkloadCluster(cfg, tmp_path, control, net)
    try:
        net.setup()
        cluster.start()
        leader = wait_for(cluster.agreed_leader, WAIT, "a leader")[0]
        r = leader.req("POST", "/api/v1/deployments", {
            "name": "svc", "type": "service", "source": str(script), "port": 0,
            "replicas": 1, "env": {"MARKS": str(mk)}}, timeout=15)
        assert r.status == 201, r.body
        inst = wait_for(lambda: one_running(leader, "svc"), WAIT, "svc running")
        holder = inst["node"]
        old = wait_for(lambda: processes("svc", under), WAIT, "the instance process")
        assert [node for _, node in old] == [holder], old
        old_pid = old[0][0]
        wait_for(lambda: f"{holder}-{old_pid}" in marks(mk, "start"), WAIT, "start mark")
        hs = cluster.slot_of[holder]
        others = {cluster.slot_of[n.node_id]: 100 for n in cluster.nodes
                  if n.node_id != holder}
        survivors = [n for n in cluster.nodes if n.node_id != holder]

        t0 = time.monotonic()
        net.apply({hs: {"in": others, "out": others}})
        old_gone = new_up = None
        try:
            deadline = t0 + WAIT
            while (old_gone is None or new_up is None) and time.monotonic() < deadline:
                live = processes("svc", under)  # zombies excluded
                nodes = {node for _, node in live}
                now = time.monotonic()
                if old_gone is None and old_pid not in {pid for pid, _ in live}:
                    old_gone = now
                if new_up is None and nodes - {holder}:
                    new_up = now
                time.sleep(0.01)  # the /proc sampling period, not a wait for a condition
            assert new_up is not None, f"no replacement started within {WAIT:g}s"
            assert old_gone is not None, (
                f"the partitioned node's instance (pid {old_pid}) still ran "
                f"{time.monotonic() - new_up:.1f}s after its replacement started: not fenced")
            proc_overlap = old_gone - new_up

            new = wait_for(lambda: next((i for n in survivors
                                         if (i := one_running(n, "svc")) is not None), None),
                           WAIT, "the replacement Running, read through a survivor")
            new_node = new["node"]
            assert new_node != holder
            (new_key,) = [k for k in marks(mk, "start") if k.startswith(f"{new_node}-")]
            new_started = marks(mk, "start")[new_key]
            old_stopped = marks(mk, "stop").get(f"{holder}-{old_pid}")  # None: SIGKILLed
            print(f"\nseed={seed}: partition of {holder} -> old gone {old_gone - t0:.2f}s, "
                  f"replacement on {new_node} up {new_up - t0:.2f}s: /proc overlap "
                  f"{proc_overlap:+.3f}s; script marks: old stopped "
                  f"{old_stopped!r}, new started {new_started!r}"
                  + ("" if old_stopped is None
                     else f", overlap {old_stopped - new_started:+.3f}s")
                  + f"; status started_at {new.get('started_at')}")
            assert proc_overlap <= 0, f"old copy outlived the replacement's start by " \
                                      f"{proc_overlap:.3f}s"
            if old_stopped is not None:
                assert old_stopped - new_started <= 0
        finally:
            net.heal()
        back = next(n for n in cluster.nodes if n.node_id == holder)
        wait_for(lambda: status(back, "svc")["instances"][0]["node"] == new_node, WAIT,
                 "the healed node applied the move")
        deadline = time.monotonic() + 2 * NDA
        while time.monotonic() < deadline:  # a window in which nothing may change
            live = processes("svc", under)
            assert [node for _, node in live] == [new_node], live
            assert old_pid not in {pid for pid, _ in live}
            time.sleep(0.2)
        r = back.req("DELETE", "/api/v1/deployments/svc", timeout=15)
        assert r.status == 204, r.body
        wait_for(lambda: processes("svc", under) == [], WAIT, "svc gone")
    finally:
        cluster.stop_all(graceful=False)
        net.teardown()
    wait_for(lambda: processes("svc", under) == [], 10, "no instance outlives its node")
