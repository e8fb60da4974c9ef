"""Services on a 3-node cluster (issue 14): deploy and failover times, and the cost at rest.

    python -m benchmarks.bench_workloads [--trials 20] [--node-down-after 5s] [--services 300]
                                         [--window 30] [--json PATH]

On a fresh `--nodes` prisn cluster (benchmarks.cluster), started with `--node-down-after`
(default 5s, the server's default) and `--stop-grace 1s`:
  (a)+(b) each of `--trials` trials creates a one-replica service with a fixed port (the
     Python HTTP script of benchmarks.workloads) on the leader and times
     (a) create sent -> its one instance `Running` in `status` (polled on the leader);
     then SIGKILLs the node that runs it and times
     (b) SIGKILL sent -> a surviving node's `status` says Running on another node AND the
     service answers on its port. Then the deployment is deleted, its process awaited gone,
     the killed node started again with its data dir, and the next trial waits for a healthy
     cluster (all up, one leader, no learner). Target for (b): < --node-down-after + 2 s.
  (c) `--services` port-less one-replica services (a sleeping Python script) are created;
     once all are Running (status and /proc) and `--settle` s have passed, for `--window` s:
     each node's server process CPU (% of one core: utime+stime of /proc/<pid>/stat, its own
     threads only, children excluded) and RSS, its instances' CPU and RSS summed separately,
     and Raft log entries per minute at rest (growth of the leader's commit_index from
     `GET /api/v1/cluster/status`; at rest commit == last index).
Percentiles are nearest rank (with fewer than 100 trials p99 is the max). `--trials 0` or
`--services 0` skips a part. Prints markdown tables; `--json` also writes everything.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.cluster import PrisnCluster, PrisnNode, free_ports, try_http_json, wait_until
from benchmarks.loadgen import percentile
from benchmarks.report import (
    add_prisn_args_option,
    fmt,
    machine_line,
    markdown_table,
    prisn_extra_args,
    run_main,
    write_json,
)
from benchmarks.workloads import IDLE, WEB, answer, instance_processes, processes, running_status

CLK_TCK = os.sysconf("SC_CLK_TCK")
WAIT = 120.0  # any one wait for a condition (a loaded, shared machine)


@dataclass
class Trial:
    name: str
    deploy_s: float  # create sent -> Running
    failover_s: float  # SIGKILL sent -> Running elsewhere and answering
    victim: str
    victim_was_leader: bool
    new_node: str


def dep_status(node: PrisnNode, name: str) -> dict | None:
    """`status` of deployment `name` as `node` reports it, None if it does not answer."""
    res = try_http_json(node.http_port, "GET", f"/api/v1/deployments/{name}", timeout=5.0)
    if res is None or res[0] != 200 or not isinstance(res[1], dict):
        return None
    st = res[1].get("status")
    return st if isinstance(st, dict) else None


def running_on(node: PrisnNode, name: str, n: int) -> dict | None:
    st = dep_status(node, name)
    return running_status(st, n) if st is not None else None


def create(node: PrisnNode, name: str, source: Path, port: int = 0) -> None:
    doc = {"name": name, "type": "service", "source": str(source), "port": port, "replicas": 1}
    res = try_http_json(node.http_port, "POST", "/api/v1/deployments", doc, timeout=15.0)
    if res is None or res[0] != 201:
        raise RuntimeError(f"create {name} on {node.node_id}: {res}")


def delete(nodes: Sequence[PrisnNode], name: str) -> None:
    """DELETE `name` through the first live node that accepts it."""
    def attempt() -> bool | None:
        for n in nodes:
            if n.alive():
                res = try_http_json(n.http_port, "DELETE", f"/api/v1/deployments/{name}",
                                    timeout=15.0)
                if res is not None and res[0] in (204, 404):
                    return True
        return None
    wait_until(attempt, WAIT, f"delete {name}", interval=0.5)


def failover_trial(cluster: PrisnCluster, name: str, script: Path) -> Trial:
    """One deploy + SIGKILL trial on a healthy cluster; leaves it healthy (victim restarted)."""
    leader = cluster.wait_healthy(WAIT)
    port = free_ports(1)[0]
    t0 = time.monotonic()
    create(leader, name, script, port)
    st = wait_until(lambda: running_on(leader, name, 1), WAIT, f"{name} Running", interval=0.02)
    deploy = time.monotonic() - t0
    victim = cluster.node(st["instances"][0]["node"])
    assert victim is not None, st
    others = [n for n in cluster.nodes if n is not victim]

    def moved() -> str | None:
        for n in others:
            s = running_on(n, name, 1)
            if s and s["instances"][0]["node"] != victim.node_id and answer(port, 0.5):
                return str(s["instances"][0]["node"])
        return None

    t0 = time.monotonic()
    victim.send_signal(signal.SIGKILL)
    victim.wait(15.0)
    new_node = wait_until(moved, WAIT, f"{name} replacement", interval=0.02)
    failover = time.monotonic() - t0
    delete(others, name)
    wait_until(lambda: True if not processes(name, str(script.parent)) else None, WAIT,
               f"{name} stopped")
    cluster.restart(victim)
    cluster.wait_healthy(WAIT)
    return Trial(name, round(deploy, 3), round(failover, 3), victim.node_id,
                 victim is leader, new_node)


def cpu_ticks(pid: int) -> int:
    """utime + stime of `pid` (its own threads, not its children), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # fields 14, 15 of stat(5)


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def commit_index(cluster: PrisnCluster) -> int:
    leader = cluster.wait_for_leader(WAIT)
    st = leader.status()
    if st is None or "commit_index" not in st:
        raise RuntimeError(f"no commit_index from {leader.node_id}: {st}")
    return int(st["commit_index"])


def at_rest(cluster: PrisnCluster, services: int, script: Path, window: float,
            settle: float, prefix: str = "rest-") -> dict[str, Any]:
    """Part (c): `services` port-less services, then a `window`-second measurement."""
    leader = cluster.wait_healthy(WAIT)
    names = [f"{prefix}{i:04d}" for i in range(services)]
    t0 = time.monotonic()
    for name in names:
        create(leader, name, script)
    created = time.monotonic() - t0

    def all_up() -> bool | None:
        mine = [p for p in instance_processes(str(script.parent)) if p[1].startswith(prefix)]
        return True if len({d for _, d, _ in mine}) == services == len(mine) else None

    wait_until(all_up, WAIT + services, "every instance process up", interval=0.5)
    pending = list(names)

    def statuses_running() -> bool | None:
        pending[:] = [n for n in pending if running_on(leader, n, 1) is None]
        return True if not pending else None

    wait_until(statuses_running, WAIT + services, "every status Running", interval=0.5)
    all_running = time.monotonic() - t0
    time.sleep(settle)  # a quiet period before the window, not a wait for a condition

    def per_node() -> dict[str, list[int]]:
        out: dict[str, list[int]] = {n.node_id: [] for n in cluster.nodes}
        for pid, dep, node in instance_processes(str(script.parent)):
            if dep.startswith(prefix) and node in out:
                out[node].append(pid)
        return out

    pids0 = per_node()
    ci0 = commit_index(cluster)
    srv0 = {n.node_id: cpu_ticks(n.pid or 0) for n in cluster.nodes}
    inst0 = {k: {p: cpu_ticks(p) for p in v} for k, v in pids0.items()}
    w0 = time.monotonic()
    time.sleep(window)  # the measurement window itself
    elapsed = time.monotonic() - w0
    srv1 = {n.node_id: cpu_ticks(n.pid or 0) for n in cluster.nodes}
    inst1 = {k: {p: cpu_ticks(p) for p in v} for k, v in pids0.items()}
    ci1 = commit_index(cluster)
    nodes = []
    for n in cluster.nodes:
        pids = pids0[n.node_id]
        inst_ticks = sum(inst1[n.node_id][p] - inst0[n.node_id][p] for p in pids)
        nodes.append({
            "node": n.node_id,
            "leader": n is cluster.leader(),
            "instances": len(pids),
            "server_cpu_pct": round(100 * (srv1[n.node_id] - srv0[n.node_id])
                                    / CLK_TCK / elapsed, 2),
            "server_rss_mb": round(rss_mb(n.pid or 0), 1),
            "instances_cpu_pct": round(100 * inst_ticks / CLK_TCK / elapsed, 2),
            "instances_rss_mb": round(sum(rss_mb(p) for p in pids), 1),
        })
    return {"services": services, "create_s": round(created, 2),
            "all_running_s": round(all_running, 2), "window_s": round(elapsed, 2),
            "commit_index": [ci0, ci1],
            "raft_entries_per_min": round((ci1 - ci0) * 60 / elapsed, 2), "nodes": nodes}


def summary(xs: list[float]) -> dict[str, float | None]:
    s = sorted(xs)
    return {"p50": percentile(s, 50), "p99": percentile(s, 99), "max": s[-1] if s else None}


def load_line() -> str:
    try:
        return "load average " + Path("/proc/loadavg").read_text().split(" ", 3)[2]
    except OSError:
        return ""


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every part on one cluster; returns the JSON document."""
    web, idle = workdir / "web.py", workdir / "idle.py"
    web.write_text(WEB)
    idle.write_text(IDLE)
    extra = ["--node-down-after", args.node_down_after, "--stop-grace", "1s",
             *prisn_extra_args(args)]
    doc: dict[str, Any] = {"nodes": args.nodes, "node_down_after": args.node_down_after,
                           "machine": machine_line(), "load_before": load_line()}
    with PrisnCluster(args.nodes, extra_args=extra, keep_dir=args.keep_dir,
                      ready_timeout=WAIT) as cluster:
        if args.keep_dir:
            print(f"data dirs and logs: {cluster.base_dir}", file=sys.stderr)
        trials = []
        for i in range(args.trials):
            t = failover_trial(cluster, f"fo-{i:03d}", web)
            print(f"trial {i + 1}/{args.trials}: deploy {t.deploy_s:.2f}s, failover "
                  f"{t.failover_s:.2f}s ({t.victim}{' leader' if t.victim_was_leader else ''}"
                  f" -> {t.new_node})", file=sys.stderr)
            trials.append(t)
        doc["trials"] = [asdict(t) for t in trials]
        if trials:
            doc["deploy_s"] = summary([t.deploy_s for t in trials])
            doc["failover_s"] = summary([t.failover_s for t in trials])
        if args.services:
            doc["at_rest"] = at_rest(cluster, args.services, idle, args.window, args.settle)
    left = instance_processes(str(workdir))
    doc["left_behind"] = len(left)
    doc["load_after"] = load_line()
    return doc


def render(doc: dict[str, Any]) -> str:
    out = [f"{doc['nodes']} nodes, --node-down-after {doc['node_down_after']}; "
           f"{doc['machine']}; {doc['load_before']} before, {doc['load_after']} after"]
    if doc.get("trials"):
        n = len(doc["trials"])
        rows = [[f"deploy -> first instance Running ({n} trials)",
                 *(fmt(doc["deploy_s"][k], 2) for k in ("p50", "p99", "max"))],
                [f"SIGKILL of its node -> replacement Running and answering ({n} trials)",
                 *(fmt(doc["failover_s"][k], 2) for k in ("p50", "p99", "max"))]]
        out += ["", markdown_table(["seconds", "p50", "p99", "max"], rows)]
    rest = doc.get("at_rest")
    if rest:
        rows = [[r["node"] + (" (leader)" if r["leader"] else ""), str(r["instances"]),
                 fmt(r["server_cpu_pct"], 2), fmt(r["server_rss_mb"]),
                 fmt(r["instances_cpu_pct"], 2), fmt(r["instances_rss_mb"])]
                for r in rest["nodes"]]
        out += ["", f"{rest['services']} services x 1 replica at rest, {rest['window_s']:.0f} s "
                f"window (created in {rest['create_s']:.1f} s, all Running after "
                f"{rest['all_running_s']:.1f} s): Raft entries per minute "
                f"**{rest['raft_entries_per_min']:.1f}** (commit index "
                f"{rest['commit_index'][0]} -> {rest['commit_index'][1]})", "",
                markdown_table(["node", "instances", "server CPU % of a core",
                                "server RSS MB", "instances CPU %", "instances RSS MB"],
                               rows)]
    out += ["", f"instance processes left after the cluster stopped: {doc['left_behind']}"]
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20, help="deploy + SIGKILL trials (20)")
    p.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    p.add_argument("--node-down-after", default="5s", help="server flag (5s, its default)")
    p.add_argument("--services", type=int, default=300, help="services at rest (300)")
    p.add_argument("--window", type=float, default=30.0, help="at-rest window, s (30)")
    p.add_argument("--settle", type=float, default=5.0, help="quiet s before the window (5)")
    p.add_argument("--keep-dir", action="store_true", help="keep data dirs and logs")
    p.add_argument("--json", metavar="PATH", help="also write everything as JSON here")
    add_prisn_args_option(p)
    args = p.parse_args(argv)
    if args.trials < 0 or args.services < 0 or args.window <= 0 or args.settle < 0:
        p.error("--trials/--services must be >= 0, --window > 0, --settle >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="prisn-bench-wl-") as tmp:
        doc = run(args, Path(tmp))
    print(render(doc))
    write_json(args.json, doc)
    return 0 if doc["left_behind"] == 0 else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
