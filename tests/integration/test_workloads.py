"""Workloads on a real three-node cluster (issue 14): real `prisn server` processes run a
real Python HTTP service script, placed by the leader's scheduler, supervised by each node's
runner, reported through Raft in `status`; scale, delete, crash loops, SIGKILL of the node
running an instance (failover, and the returning node runs nothing it should not) and of the
leader during a scale.

Every node runs on this machine, so a fixed port means one instance at a time: each
deployment with a fixed port has one replica and its own port; replicas > 1 are port-less.
Processes are found by their environment (`PRISN_DEPLOYMENT`, `PRISN_NODE`) in /proc."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from benchmarks import bench_workloads
from benchmarks.workloads import IDLE, WEB, answer, running_status
from benchmarks.workloads import processes as _processes
from tests.procs import ServerProc, free_port, leader_of, start_cluster, wait_for

FAULT_ENV = "PRISN_TEST_FAULTS"
NDA = 2.0  # --node-down-after
EXTRA = ["--node-down-after", f"{NDA:g}s", "--stop-grace", "1s", "--write-timeout", "5s"]
WAIT = 60.0

CRASH = "import sys\nprint('failing on purpose', flush=True)\nsys.exit(3)\n"


# this module's scripts directory (set by the `scripts` fixture): only the instances started
# from it are ours; other sessions on the machine may run deployments of the same names
_SCRIPTS_DIR: list[str] = []


def processes(deployment: str) -> list[tuple[int, str]]:
    """(pid, PRISN_NODE) of this module's live instance processes of `deployment`."""
    return _processes(deployment, _SCRIPTS_DIR[0] if _SCRIPTS_DIR else None)


def status(node: ServerProc, name: str, strong: bool = False) -> dict:
    headers = {"X-Prisn-Consistency": "strong"} if strong else None
    r = node.req("GET", f"/api/v1/deployments/{name}", headers=headers, timeout=10)
    assert r.status == 200, (r.status, r.body[:300])
    return r.json()["status"]


def status_if_any(node: ServerProc, name: str) -> dict | None:
    """`status`, or None while `node` has not applied the deployment yet (a local read)."""
    r = node.req("GET", f"/api/v1/deployments/{name}", timeout=10)
    if r.status == 404:
        return None
    assert r.status == 200, (r.status, r.body[:300])
    return r.json()["status"]


def running(node: ServerProc, name: str, n: int) -> dict | None:
    """The status once `n` instances of `name` are Running (and the phase agrees)."""
    try:
        s = status(node, name)
    except (OSError, AssertionError):
        return None
    return running_status(s, n)


def create(node: ServerProc, name: str, source: Path, *, replicas: int = 1,
           port: int = 0) -> None:
    r = node.req("POST", "/api/v1/deployments", {"name": name, "type": "service",
                                                 "source": str(source), "port": port,
                                                 "replicas": replicas}, timeout=15)
    assert r.status == 201, r.body


def scale(node: ServerProc, name: str, replicas: int) -> None:
    r = node.req("POST", f"/api/v1/deployments/{name}/scale", {"replicas": replicas},
                 timeout=15)
    assert r.status == 200, r.body


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("scripts")
    out = {}
    for name, text in (("web", WEB), ("idle", IDLE), ("crash", CRASH)):
        (d / f"{name}.py").write_text(text)
        out[name] = d / f"{name}.py"
    _SCRIPTS_DIR[:] = [str(d)]
    return out


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The TEST-ONLY peer-link fault control file every node reads (transport/faults.py);
    empty: no fault. `partition` rewrites it."""
    path = tmp_path_factory.mktemp("faults") / "faults.json"
    path.write_text(json.dumps({"seed": 1, "links": []}))
    return path


def partition(faults: Path, node: str | None) -> None:
    """Cut every peer link to and from `node` (None: heal), atomically."""
    links = [] if node is None else [{"src": node, "dst": "*", "drop": 1.0},
                                     {"src": "*", "dst": node, "drop": 1.0}]
    tmp = faults.with_suffix(".tmp")
    tmp.write_text(json.dumps({"seed": 1, "links": links}))
    os.replace(tmp, faults)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, scripts: dict[str, Path], faults: Path):
    os.environ[FAULT_ENV] = str(faults)
    try:
        nodes = start_cluster(tmp_path_factory.mktemp("workloads"), EXTRA)
    finally:
        del os.environ[FAULT_ENV]
    for n in nodes:
        n.env[FAULT_ENV] = str(faults)  # restarts too
    # started first: its backoff (1 s doubling) takes ~15 s to reach CrashLoopBackOff,
    # checked by the last test while the others run
    create(nodes[0], "crasher", scripts["crash"])
    yield nodes
    for n in nodes:
        n.stop()
    for dep in ("web", "idle", "crasher", "fail", "roller"):
        assert processes(dep) == [], f"{dep} left processes behind"


def test_service_runs_scales_and_deletes(cluster: list[ServerProc],
                                         scripts: dict[str, Path]) -> None:
    leader = leader_of(cluster)
    follower = next(n for n in cluster if n is not leader)
    port = free_port()
    t0 = time.monotonic()
    create(follower, "web", scripts["web"], port=port)
    s = wait_for(lambda: running(follower, "web", 1), WAIT, "web running")
    first_running = time.monotonic() - t0
    inst = s["instances"][0]
    assert s["phase"] == "Running" and s["desired_replicas"] == 1
    assert inst["pid"] > 0 and inst["started_at"] > 0 and inst["restarts"] == 0
    # the service answers on its port, from the node the status names
    text = wait_for(lambda: answer(port), WAIT, "web answers")
    assert text == f"{inst['node']} {inst['id']}"
    assert processes("web") == [(inst["pid"], inst["node"])]
    # the same status from every node
    for n in cluster:
        wait_for(lambda n=n: (st := status_if_any(n, "web")) is not None
                 and st["instances"] == s["instances"], WAIT, f"status on {n.node_id}")

    # port-less replicas: scale up, down, to 0
    create(leader, "idle", scripts["idle"], replicas=2)
    wait_for(lambda: running(leader, "idle", 2), WAIT, "idle 2 running")
    assert len({i["node"] for i in status(leader, "idle")["instances"]}) == 2  # spread
    scale(follower, "idle", 3)
    wait_for(lambda: running(leader, "idle", 3) and len(processes("idle")) == 3, WAIT,
             "idle 3 running")
    assert {node for _, node in processes("idle")} == {n.node_id for n in cluster}
    scale(leader, "idle", 1)
    wait_for(lambda: running(leader, "idle", 1) and len(processes("idle")) == 1, WAIT,
             "idle 1")
    scale(leader, "idle", 0)
    wait_for(lambda: processes("idle") == [], WAIT, "idle stopped")
    s = status(leader, "idle")
    assert s["phase"] == "Stopped" and s["instances"] == []

    r = follower.req("DELETE", "/api/v1/deployments/web", timeout=15)
    assert r.status == 204
    wait_for(lambda: processes("web") == [] and answer(port) is None, WAIT, "web gone")
    print(f"deploy -> first instance Running: {first_running:.2f}s")


def test_sigkill_of_the_node_running_an_instance(cluster: list[ServerProc],
                                                 scripts: dict[str, Path]) -> None:
    leader = leader_of(cluster)
    port = free_port()
    create(leader, "web", scripts["web"], port=port)
    s = wait_for(lambda: running(leader, "web", 1), WAIT, "web running")
    victim = next(n for n in cluster if n.node_id == s["instances"][0]["node"])
    old_pid = s["instances"][0]["pid"]
    t0 = time.monotonic()
    victim.kill()
    victim.wait_exit()
    # the child dies with its node (PR_SET_PDEATHSIG)
    wait_for(lambda: processes("web") == [], 10, "old instance gone with its node")
    others = [n for n in cluster if n is not victim]

    def moved() -> dict | None:
        st = running(others[0], "web", 1) or running(others[1], "web", 1)
        if st and st["instances"][0]["node"] != victim.node_id and answer(port):
            return st
        return None

    s2 = wait_for(moved, WAIT, "web running on another node")
    took = time.monotonic() - t0
    new = s2["instances"][0]
    assert new["pid"] != old_pid and answer(port) == f"{new['node']} {new['id']}"
    print(f"SIGKILL -> replacement Running: {took:.2f}s (node down after {NDA:g}s)")
    assert took < NDA + 20  # generous on a loaded machine; the figure is printed

    # the node comes back and runs nothing it should not
    victim.restart().wait_ready(WAIT)
    wait_for(lambda: all(v["state"] in ("leader", "follower")
                         for v in victim.status()["nodes"]), WAIT, "victim rejoined")
    deadline = time.monotonic() + 3 * NDA
    while time.monotonic() < deadline:
        assert [node for _, node in processes("web")] == [new["node"]]
        time.sleep(0.2)
    # strong: "rejoined" is the membership; its local state may still trail the move
    assert status(victim, "web", strong=True)["instances"][0]["node"] == new["node"]
    r = leader_of(cluster).req("DELETE", "/api/v1/deployments/web", timeout=15)
    assert r.status == 204
    wait_for(lambda: processes("web") == [], WAIT, "web gone")


def test_sigkill_of_the_leader_during_a_scale(cluster: list[ServerProc],
                                              scripts: dict[str, Path]) -> None:
    for n in cluster:
        if not n.alive():
            n.restart().wait_ready(WAIT)
    leader = leader_of(cluster)
    create(leader, "idle", scripts["idle"], replicas=1) if status_missing(leader, "idle") \
        else scale(leader, "idle", 1)
    wait_for(lambda: running(leader, "idle", 1), WAIT, "idle 1 running")
    scale(leader, "idle", 4)
    leader.kill()
    leader.wait_exit()
    others = [n for n in cluster if n is not leader]
    new_leader = leader_of(others, WAIT)

    def done() -> bool:
        s = running(new_leader, "idle", 4)
        return bool(s) and all(i["node"] != leader.node_id for i in s["instances"]) \
            and len(processes("idle")) == 4
    wait_for(done, WAIT, "the new leader completes the scale")
    leader.restart().wait_ready(WAIT)
    r = new_leader.req("DELETE", "/api/v1/deployments/idle", timeout=15)
    assert r.status == 204
    wait_for(lambda: processes("idle") == [], WAIT, "idle gone")


def test_crashing_script_reaches_crash_loop_backoff(cluster: list[ServerProc]) -> None:
    leader = leader_of(cluster)

    def looping() -> dict | None:
        s = status(leader, "crasher")
        return s if s["phase"] == "CrashLoopBackOff" else None

    s = wait_for(looping, WAIT, "crasher in CrashLoopBackOff")
    inst = s["instances"][0]
    assert inst["state"] == "CrashLoopBackOff" and inst["exit_code"] == 3
    assert inst["restarts"] >= 4 and s["restarts"] == inst["restarts"]
    assert "CrashLoopBackOff" in s["phase"] and s["ready_replicas"] == 0
    # backoff holds it: restarts grow slowly, not in a spin
    before = inst["restarts"]
    time.sleep(1.0)  # a window to count restarts in, not a wait for a condition
    assert status(leader, "crasher")["instances"][0]["restarts"] <= before + 1
    r = leader.req("DELETE", "/api/v1/deployments/crasher", timeout=15)
    assert r.status == 204


def status_missing(node: ServerProc, name: str) -> bool:
    return node.req("GET", f"/api/v1/deployments/{name}", timeout=10).status == 404


def test_a_partitioned_node_fences_before_its_replacement_starts(
        cluster: list[ServerProc], scripts: dict[str, Path], faults: Path) -> None:
    """Every peer link of the node running an instance is cut (the TEST-ONLY fault layer
    drops its frames both ways): it stops the instance (fencing) before the majority's
    leader starts a replacement, measured from /proc (overlap <= 0); after healing it runs
    nothing the log placed elsewhere."""
    for n in cluster:
        if not n.alive():
            n.restart().wait_ready(WAIT)
    leader = leader_of(cluster)
    port = free_port()
    create(leader, "web", scripts["web"], port=port)
    s = wait_for(lambda: running(leader, "web", 1), WAIT, "web running")
    holder = s["instances"][0]["node"]
    others = [n for n in cluster if n.node_id != holder]
    t0 = time.monotonic()
    partition(faults, holder)
    old_gone = new_up = None
    try:
        deadline = t0 + WAIT
        while (old_gone is None or new_up is None) and time.monotonic() < deadline:
            nodes = {node for _, node in processes("web")}
            now = time.monotonic()
            if old_gone is None and holder not in nodes:
                old_gone = now
            if new_up is None and nodes - {holder}:
                new_up = now
            time.sleep(0.01)  # the /proc sampling period, not a wait for a condition
        assert old_gone is not None and new_up is not None, (old_gone, new_up)
        overlap = old_gone - new_up
        print(f"partition -> old stopped {old_gone - t0:.2f}s, replacement started "
              f"{new_up - t0:.2f}s: overlap {overlap:.2f}s (<= 0)")
        assert overlap <= 0
        wait_for(lambda: running(others[0], "web", 1) and answer(port), WAIT, "replacement")
        new_node = status(others[0], "web")["instances"][0]["node"]
        assert new_node != holder
    finally:
        partition(faults, None)
    back = next(n for n in cluster if n.node_id == holder)
    wait_for(lambda: status(back, "web")["instances"][0]["node"] == new_node, WAIT,
             "the healed node applied the move")
    deadline = time.monotonic() + 2 * NDA
    while time.monotonic() < deadline:  # a window in which nothing may change
        assert [node for _, node in processes("web")] == [new_node]
        time.sleep(0.2)
    r = back.req("DELETE", "/api/v1/deployments/web", timeout=15)
    assert r.status == 204
    wait_for(lambda: processes("web") == [], WAIT, "web gone")


def env_of(pid: int) -> dict[bytes, bytes]:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    return dict(e.split(b"=", 1) for e in env if b"=" in e)


def test_update_rolls_one_instance_at_a_time_across_nodes(cluster: list[ServerProc],
                                                          scripts: dict[str, Path]) -> None:
    """3 port-less replicas, one per node; an env update restarts them one at a time, slot
    by slot, each only after the previous one ran at the new generation for a few seconds:
    ready_replicas never drops below 2 (never 0), and at no sample do two instances run
    something other than Running, nor two slots lack a process."""
    leader = leader_of(cluster)
    r = leader.req("POST", "/api/v1/deployments", {
        "name": "roller", "type": "service", "source": str(scripts["idle"]), "port": 0,
        "replicas": 3, "env": {"MODE": "a"}}, timeout=15)
    assert r.status == 201, r.body
    s = wait_for(lambda: running(leader, "roller", 3), WAIT, "roller 3 running")
    assert len({i["node"] for i in s["instances"]}) == 3
    gen0 = s["observed_generation"]
    r = leader.req("PATCH", "/api/v1/deployments/roller", {"env": {"MODE": "b"}}, timeout=15)
    assert r.status == 200, r.body
    gen1 = r.json()["generation"]
    assert gen1 > gen0
    samples: list[tuple[float, dict]] = []
    min_procs = 3
    switched: dict[int, float] = {}  # slot -> when status first showed it at gen1
    t0 = time.monotonic()
    deadline = t0 + WAIT
    while True:
        s = status(cluster[1], "roller")
        now = time.monotonic() - t0
        samples.append((now, s))
        for i in s["instances"]:
            if i["generation"] == gen1:
                switched.setdefault(i["index"], now)
        min_procs = min(min_procs, len(processes("roller")))
        if s["observed_generation"] == gen1 and s["ready_replicas"] == 3:
            break
        assert time.monotonic() < deadline, f"roll not done: {s}"
        time.sleep(0.05)  # sampling interval of the observation, not a wait for a condition
    took = time.monotonic() - t0
    ready = [x["ready_replicas"] for _, x in samples]
    not_running = [sum(i["state"] != "Running" for i in x["instances"]) for _, x in samples]
    assert min(ready) >= 2, ready  # never zero, never two down at once
    assert max(not_running) <= 1, not_running
    assert min_procs >= 2  # at most one slot without a process at any sample
    # slot by slot, each after the previous had run a while at the new generation
    assert sorted(switched) == [0, 1, 2]
    assert switched[0] < switched[1] < switched[2], switched
    # (3 s of roll_min_ready, less the lag of the status: a loose bound on a loaded machine)
    assert switched[1] - switched[0] >= 1.0 and switched[2] - switched[1] >= 1.0, switched
    # every process now runs the new env
    pids = processes("roller")
    assert len(pids) == 3 and all(env_of(p).get(b"MODE") == b"b" for p, _ in pids)
    print(f"rolling update of 3 replicas on 3 nodes: {took:.1f}s, switch times {switched}")
    r = leader.req("DELETE", "/api/v1/deployments/roller", timeout=15)
    assert r.status == 204
    wait_for(lambda: processes("roller") == [], WAIT, "roller gone")


def test_a_no_workloads_node_votes_but_is_never_placed_on(cluster: list[ServerProc],
                                                          scripts: dict[str, Path]) -> None:
    """Last: it restarts a node with --no-workloads (its instances move away)."""
    leader = leader_of(cluster)
    voter = next(n for n in cluster if n is not leader)
    assert voter.stop() == 0
    voter.args.append("--no-workloads")
    voter.restart().wait_ready(WAIT)
    create(leader, "idle", scripts["idle"], replicas=3)

    def placed_elsewhere() -> bool:
        s = running(leader, "idle", 3)
        procs = processes("idle")
        return bool(s) and len(procs) == 3 and all(
            i["node"] != voter.node_id for i in s["instances"]) and all(
            node != voter.node_id for _, node in procs)

    wait_for(placed_elsewhere, WAIT, "idle on the two workload nodes only")
    assert voter.status()["leader"] == leader_of(cluster).node_id  # it still takes part
    r = voter.req("DELETE", "/api/v1/deployments/idle", timeout=15)
    assert r.status == 204
    wait_for(lambda: processes("idle") == [], WAIT, "idle gone")


@pytest.mark.soak
def test_failover_figures_over_many_trials(tmp_path: Path) -> None:
    """Soak (not in CI): SIGKILL the node running a one-replica service, 20 times, on a fresh
    3-node cluster (benchmarks/bench_workloads.py's trials); prints p50/p99 of SIGKILL ->
    replacement Running (status and answering) and of deploy -> first instance Running."""
    doc = bench_workloads.run(bench_workloads.parse_args(
        ["--trials", "20", "--services", "0", "--node-down-after", f"{NDA:g}s"]), tmp_path)
    print(bench_workloads.render(doc))
    assert doc["left_behind"] == 0
    assert doc["failover_s"]["p50"] < NDA + 5
