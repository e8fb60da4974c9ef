"""Jobs and cron jobs on a real three-node cluster (issue 15): real `prisn server` processes
run real Python scripts as executions placed by the leader, started once by a node's runner
and reported through Raft: on-demand runs (200 with the exit code), a failing script, a
timeout, a cancel, and an ``@every 1s`` cron job whose fires have distinct, consecutive
scheduled times, one execution each across a SIGKILL of the leader."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.faults.cronproof import check_cron
from tests.procs import ServerProc, leader_of, start_cluster, wait_for
from tests.scripted import prisn

EXTRA = ["--node-down-after", "2s", "--stop-grace", "1s", "--write-timeout", "5s"]
WAIT = 60.0
SCRIPTS = {
    "ok": "print('hello from a job', flush=True)\n",
    "fail": "import sys\nprint('failing', flush=True)\nsys.exit(3)\n",
    "sleep": "import time\ntime.sleep(120)\n",
    "tick": "print('tick', flush=True)\n",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    d = tmp_path_factory.mktemp("jobscripts")
    nodes = start_cluster(tmp_path_factory.mktemp("jobs"), EXTRA)
    for name, text in SCRIPTS.items():
        (d / f"{name}.py").write_text(text)
        kind = "cronjob" if name == "tick" else "job"
        body: dict[str, Any] = {"name": name, "type": kind, "source": str(d / f"{name}.py")}
        if kind == "cronjob":
            continue  # created by its test
        r = nodes[0].req("POST", "/api/v1/deployments", body, timeout=15)
        assert r.status == 201, r.body
    nodes[0].scripts = d  # type: ignore[attr-defined]
    yield nodes
    for n in nodes:
        n.stop()
    for dep in SCRIPTS:
        assert processes(dep) == [], f"{dep} left processes behind"


def processes(deployment: str) -> list[int]:
    """Pids of live processes whose environment names `deployment` (PRISN_DEPLOYMENT)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            state = (d / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != b"Z" and f"PRISN_DEPLOYMENT={deployment}".encode() in env:
            out.append(int(d.name))
    return sorted(out)


def execution(node: ServerProc, exec_id: str, strong: bool = False) -> dict:
    headers = {"X-Prisn-Consistency": "strong"} if strong else None
    r = node.req("GET", f"/api/v1/executions/{exec_id}", headers=headers, timeout=10)
    assert r.status == 200, r.body
    return r.json()


def live(nodes: list[ServerProc]) -> ServerProc:
    return next(n for n in nodes if n.alive())


def test_a_job_runs_on_demand_and_a_failing_one_reports_its_exit_code(
        cluster: list[ServerProc]) -> None:
    r = cluster[1].req("POST", "/api/v1/executions", {"name": "ok", "timeout": 60}, timeout=95)
    assert r.status == 200, r.body
    e = r.json()
    assert e["status"] == "Completed" and e["exit_code"] == 0, e
    assert e["node"] in {n.node_id for n in cluster} and e["started_at"] and e["completed_at"]
    for n in cluster:  # from any node: the running node's files, over the peer link
        # (strong: only cluster[1], which answered the run, surely applied it)
        r = n.req("GET", f"/api/v1/executions/{e['id']}/logs", timeout=15,
                  headers={"X-Prisn-Consistency": "strong"})
        assert r.status == 200, r.body
        assert r.json()["stdout"] == "hello from a job\n" and r.json()["stderr"] == ""
    r = cluster[2].req("POST", "/api/v1/executions", {"name": "fail", "timeout": 60},
                       timeout=95)
    assert r.status == 200, r.body
    e = r.json()
    assert e["status"] == "Failed" and e["exit_code"] == 3, e
    r = cluster[0].req("GET", "/api/v1/executions?status=Completed", timeout=10,
                       headers={"X-Prisn-Consistency": "strong"})
    assert r.status == 200 and r.json()["total"] >= 1


def test_timeout_and_cancel(cluster: list[ServerProc]) -> None:
    r = cluster[0].req("POST", "/api/v1/executions", {"name": "sleep", "timeout": 2},
                       timeout=95)
    assert r.status == 200, r.body
    e = r.json()
    assert e["status"] == "Failed" and e["error"] == "timed out", e
    r = cluster[0].req("POST", "/api/v1/executions", {"name": "sleep", "async": True},
                       timeout=15)
    assert r.status == 202 and r.json()["status"] == "Pending", r.body
    exec_id = r.json()["id"]
    wait_for(lambda: execution(cluster[0], exec_id)["status"] == "Running", WAIT,
             "sleep running")
    wait_for(lambda: len(processes("sleep")) == 1, WAIT, "its process")
    # cluster[1] may trail cluster[0]: the cancel looks again after a barrier
    r = cluster[1].req("POST", f"/api/v1/executions/{exec_id}/cancel", timeout=15)
    assert r.status == 200 and r.json()["status"] == "Cancelled", r.body
    wait_for(lambda: processes("sleep") == [], WAIT, "cancelled process stopped")
    assert execution(cluster[2], exec_id, strong=True)["status"] == "Cancelled"


def _fires(node: ServerProc) -> list[dict]:
    r = node.req("GET", "/api/v1/executions?limit=1000", timeout=10)
    assert r.status == 200, r.body
    return [e for e in r.json()["items"] if e["name"] == "tick"]


def _epoch(ts: str) -> int:
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())


def _epoch_f(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _check_once_each(node: ServerProc) -> list[int]:
    """Scheduled times of the fires: one execution each, consecutive seconds unless the gap
    is recorded missed (a leaderless moment); returns them sorted."""
    times = [_epoch(e["scheduled_at"]) for e in _fires(node)]
    counts = Counter(times)
    assert all(c == 1 for c in counts.values()), counts.most_common(3)
    return sorted(times)


def test_every_second_cron_fires_once_per_time_across_a_leader_sigkill(
        cluster: list[ServerProc]) -> None:
    src = str(cluster[0].scripts / "tick.py")  # type: ignore[attr-defined]
    r = leader_of(cluster).req("POST", "/api/v1/deployments",
                               {"name": "tick", "type": "cronjob", "source": src,
                                "schedule": "@every 1s"}, timeout=15)
    assert r.status == 201, r.body
    wait_for(lambda: len(_fires(cluster[0])) >= 4, WAIT, "four fires")
    times = _check_once_each(cluster[0])
    by_time = {_epoch(e["scheduled_at"]): e for e in _fires(cluster[0])}
    for a, b in zip(times, times[1:], strict=False):
        # consecutive, unless the run of `a` was still going at a + 1 (concurrency forbid,
        # the default, skips a run then and records it missed)
        done = by_time[a]["completed_at"]
        assert b == a + 1 or done is None or _epoch_f(done) >= a + 0.5, (a, b, by_time[a])
    assert all(e["status"] in ("Pending", "Running", "Completed")
               for e in _fires(cluster[0]))
    old = leader_of(cluster)
    old.kill()
    old.wait_exit()
    rest = [n for n in cluster if n is not old]
    leader_of(rest, timeout=30)
    before = len(times)
    wait_for(lambda: len(_fires(rest[0])) >= before + 4, WAIT, "fires after the failover")
    times = _check_once_each(rest[0])
    gaps = [b - a for a, b in zip(times, times[1:], strict=False) if b - a != 1]
    # a gap is a leaderless stretch the new leader recorded missed or skipped (forbid)
    print(f"cron fires: {len(times)}, gaps {gaps}")
    wait_for(lambda: sum(e["status"] == "Completed" for e in _fires(rest[0])) >= 4, WAIT,
             "fires complete")
    strong = {"X-Prisn-Consistency": "strong"}  # each time fired once or recorded missed
    dep = rest[0].req("GET", "/api/v1/deployments/tick", headers=strong, timeout=10).json()
    page = rest[0].req("GET", f"/api/v1/executions?deployment_id={dep['id']}&limit=1000",
                       headers=strong, timeout=10).json()
    check = check_cron(rest[0].node_id, _epoch(dep["created_at"]), dep["cron"],
                       [_epoch(e["scheduled_at"]) for e in page["items"]])
    assert not check.violations and check.times >= len(times), (check.violations[:20],
                                                                 check.window)
    r = leader_of(rest).req("DELETE", "/api/v1/deployments/tick", timeout=15)
    assert r.status == 204, r.body
    old.restart().wait_ready(WAIT)


def test_cli_run_prints_the_output_and_exits_with_the_job_exit_code(
        cluster: list[ServerProc]) -> None:
    server = f"127.0.0.1:{cluster[0].http_port}"
    p = prisn("run", "ok", "-e", "A=1", server=server)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "hello from a job\n" and "Completed" in p.stderr
    p = prisn("run", "fail", server=server)
    assert p.returncode == 3 and "failing" in p.stdout, (p.stdout, p.stderr)
    p = prisn("run", "sleep", "--async", server=server)
    assert p.returncode == 0, p.stderr
    exec_id = p.stdout.strip()
    p = prisn("cancel", exec_id, server=server)
    assert p.returncode == 0 and "Cancelled" in p.stdout, (p.stdout, p.stderr)
    p = prisn("executions", "fail", server=server)
    assert p.returncode == 0 and "Failed" in p.stdout and "Completed" not in p.stdout
    p = prisn("execution", exec_id, server=server)
    assert p.returncode == 0 and "status: Cancelled" in p.stdout
    wait_for(lambda: processes("sleep") == [], WAIT, "cancelled process stopped")
    p = prisn("run", "nope", server=server)
    assert p.returncode == 1 and "not found" in p.stderr
    # the forms: trigger [--wait], logs EXEC_ID; and the execution metrics
    p = prisn("trigger", "fail", "--wait", server=server)
    assert p.returncode == 3 and "failing" in p.stdout, (p.stdout, p.stderr)
    p = prisn("trigger", "ok", server=server)
    assert p.returncode == 0, p.stderr
    exec_id = p.stdout.strip()
    wait_for(lambda: cluster[0].req("GET", f"/api/v1/executions/{exec_id}").json().get(
        "status") == "Completed", WAIT, "the triggered run completes")
    p = prisn("logs", exec_id, server=server)
    assert p.returncode == 0 and p.stdout == "hello from a job\n", (p.stdout, p.stderr)
    text = cluster[0].req("GET", "/metrics").body.decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("prisn_executions_total", (("status", "Completed"),))] >= 2
    assert samples[("prisn_executions_total", (("status", "Cancelled"),))] >= 1
    assert samples[("prisn_execution_duration_seconds_count", ())] >= 3


def test_an_execution_on_a_node_that_dies_becomes_lost_and_is_not_rerun(
        cluster: list[ServerProc]) -> None:
    leader = leader_of(cluster)
    r = leader.req("POST", "/api/v1/executions", {"name": "sleep", "async": True}, timeout=15)
    assert r.status == 202, r.body
    exec_id = r.json()["id"]
    e = wait_for(lambda: (x := execution(leader, exec_id))["status"] == "Running" and x,
                 WAIT, "sleep running")
    if e["node"] == leader.node_id:  # keep the leader: the test is about a worker dying
        r = leader.req("POST", f"/api/v1/executions/{exec_id}/cancel", timeout=15)
        assert r.status == 200
        wait_for(lambda: processes("sleep") == [], WAIT, "cancelled process stopped")
        r = leader.req("POST", "/api/v1/executions", {"name": "sleep", "async": True},
                       timeout=15)
        exec_id = r.json()["id"]
        e = wait_for(lambda: (x := execution(leader, exec_id))["status"] == "Running" and x,
                     WAIT, "sleep running")
    victim = next(n for n in cluster if n.node_id == e["node"])
    if victim is leader:
        pytest.skip("placed on the leader twice")
    victim.kill()
    victim.wait_exit()
    wait_for(lambda: processes("sleep") == [], WAIT, "its process died with its node")
    lost = wait_for(lambda: (x := execution(leader, exec_id))["status"] == "Lost" and x,
                    WAIT, "execution Lost")
    assert lost["error"] == f"node {victim.node_id} went down" and lost["attempt"] == 1
    victim.restart().wait_ready(WAIT)
    wait_for(lambda: victim.status().get("leader"), WAIT, "victim rejoined")
    # a strong read: a local one may still show the victim's log before it caught up
    assert execution(victim, exec_id, strong=True)["status"] == "Lost"
    assert processes("sleep") == []  # not re-run on any node


@pytest.mark.soak
def test_soak_one_execution_per_scheduled_time_over_100_times_with_leader_kills(
        cluster: list[ServerProc]) -> None:
    """The issue's figure: at least 100 scheduled times of an @every 1s job with a leader
    SIGKILL (and restart) every ~15 s; one execution per scheduled time."""
    src = str(cluster[0].scripts / "tick.py")  # type: ignore[attr-defined]
    r = leader_of(cluster).req("POST", "/api/v1/deployments",
                               {"name": "soaktick", "type": "cronjob", "source": src,
                                "schedule": "@every 1s"}, timeout=15)
    assert r.status == 201, r.body

    def scheduled(node: ServerProc) -> list[int]:
        r = node.req("GET", "/api/v1/executions?limit=1000", timeout=10)
        return [_epoch(e["scheduled_at"]) for e in r.json()["items"]
                if e["name"] == "soaktick"]

    t0 = time.monotonic()
    kills = 0
    while time.monotonic() - t0 < 130:
        time.sleep(15)  # the fault schedule (a kill every 15 s), not a wait for a condition
        old = leader_of(cluster, timeout=30)
        old.kill()
        old.wait_exit()
        kills += 1
        old.restart().wait_ready(WAIT)
    times = scheduled(live(cluster))
    counts = Counter(times)
    span = max(times) - min(times) + 1
    print(f"soak: {len(times)} fires over {span} scheduled times, {kills} leader kills")
    assert span >= 100 and all(c == 1 for c in counts.values()), counts.most_common(3)
    # and every scheduled time since the creation has its fire or lies in a miss record
    # (strong reads; tests/faults/test_cron_exactly_once.py adds pauses and partitions)
    node = live(cluster)
    strong = {"X-Prisn-Consistency": "strong"}
    dep = node.req("GET", "/api/v1/deployments/soaktick", headers=strong, timeout=10).json()
    page = node.req("GET", f"/api/v1/executions?deployment_id={dep['id']}&limit=1000",
                    headers=strong, timeout=10).json()
    check = check_cron(node.node_id, _epoch(dep["created_at"]), dep["cron"],
                       [_epoch(e["scheduled_at"]) for e in page["items"]])
    print(f"soak: {check.times} scheduled times checked, {check.fires} fired, "
          f"missed {check.missed}")
    assert not check.violations, check.violations[:20]
    r = leader_of(cluster).req("DELETE", "/api/v1/deployments/soaktick", timeout=15)
    assert r.status == 204
