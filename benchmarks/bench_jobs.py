"""Jobs and cron jobs on a 3-node cluster (issue 15): trigger latency, 200 `@every 1s` cron
jobs, and fires per leader failover.

    python -m benchmarks.bench_jobs [--runs 100] [--cron-jobs 200] [--window 60]
                                    [--failovers 5] [--quick] [--json PATH]

On a fresh `--nodes` prisn cluster (benchmarks.cluster, real processes on loopback), started
with `--node-down-after 2s --stop-grace 1s`, driven only through the public HTTP API. Every
job is the bash stamp script of benchmarks.jobs: it appends its PRISN_INSTANCE (which names
the execution) and `$EPOCHREALTIME` (its own start, as seen by bash) to a file.
  (a) `--runs` on-demand runs, one after another, of a job deployment: time.time() just
      before `POST /api/v1/executions {"name", "async": true}` to the leader -> the 202,
      -> the process's own stamp, and -> `Completed` observed (GET of the execution on the
      leader, polled every 10 ms).
  (b) `--cron-jobs` cron deployments `@every 1s` (created on the leader, then `--settle` s);
      over a `--window` s window: each server's CPU (% of one core, utime+stime of
      /proc/<pid>/stat: its own threads; and cutime+cstime: its reaped children, i.e. the job
      processes), the fires whose scheduled time is in the window (fires per second, and
      the scheduled (deployment, time) pairs with no execution: missing), the leader's
      prisn_cron_missed_total growth, and per fire the lateness started_at - scheduled_at
      (the API's) and stamp - scheduled_at (the process's). After the window the cluster gets
      up to 30 s to start the window's fires (those still not started are counted); then the
      cron deployments are deleted.
  (c) one `@every 1s` cron deployment; `--failovers` times: once the cluster is healthy and
      two more fires happened, SIGKILL the leader, wait for a new one and three fires after
      it, start the old leader again (same data dir), wait healthy. Then, over every
      scheduled time from the first fire to the last, the executions per time (must be 1,
      or 0 when recorded missed: prisn_cron_missed_total) and the process stamps per time;
      per failover the same for the times from 2 s before the kill to 3 s after the new
      leader was known, and how many of those executions ended Lost (their node died).
Percentiles are nearest rank (with fewer than 100 samples p99 is the max). `--runs 0`,
`--cron-jobs 0` or `--failovers 0` skips a part; `--quick` is the CI size (5 runs, 10 cron
jobs for 5 s, 1 failover). Prints markdown tables; `--json` also writes everything. Exit
code 1 when a scheduled time got more than one execution or a process ran twice.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.bench_workloads import load_line, summary
from benchmarks.cluster import PrisnCluster, PrisnNode, try_http_json, wait_until
from benchmarks.jobs import (
    cpu_ticks,
    create_deployment,
    delete_deployment,
    epoch,
    executions_of,
    machine_ticks,
    metric_values,
    read_stamps,
    stamp_counts,
    stamp_script,
)
from benchmarks.report import (
    add_prisn_args_option,
    fmt,
    machine_line,
    markdown_table,
    prisn_extra_args,
    run_main,
    write_json,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
WAIT = 120.0  # any one wait for a condition (a loaded, shared machine)
TERMINAL = ("Completed", "Failed", "Lost", "Cancelled")
# where a fire's time goes: scheduled time -> the fire's proposal (the execution's
# created_at, the leader's clock) -> the process's stamp -> the Completed proposal
# (completed_at, the running node's clock; all nodes share this machine's clock)
STAGES = {"due_to_fire": "scheduled_at -> fire proposed (created_at)",
          "fire_to_process": "fire proposed -> process stamp (commit, assignment, start)",
          "process_to_completed": "process stamp -> Completed proposed (completed_at)"}
FIRES, MISSED = "prisn_cron_fires_total", "prisn_cron_missed_total"


def ms(xs: list[float]) -> dict[str, float | None]:
    """p50/p99/max of seconds, in ms."""
    return {k: (None if v is None else round(v * 1000, 1)) for k, v in summary(xs).items()}


def get_execution(node: PrisnNode, exec_id: str) -> dict[str, Any] | None:
    res = try_http_json(node.http_port, "GET", f"/api/v1/executions/{exec_id}", timeout=15.0)
    return res[1] if res is not None and res[0] == 200 and isinstance(res[1], dict) else None


# --------------------------------------------------------------------------- (a) on demand
def on_demand(cluster: PrisnCluster, workdir: Path, runs: int) -> dict[str, Any]:
    """Part (a): `runs` async runs one after another through the leader."""
    leader = cluster.wait_healthy(WAIT)
    stamps, script = workdir / "run.stamps", workdir / "run.sh"
    script.write_text(stamp_script(stamps))
    create_deployment(leader, {"name": "jb-run", "type": "job", "source": str(script)})
    post, start, done, bad = [], [], [], []
    for _ in range(runs):
        t0 = time.time()
        res = try_http_json(leader.http_port, "POST", "/api/v1/executions",
                            {"name": "jb-run", "async": True, "timeout": 60}, timeout=30.0)
        t_post = time.time()
        if res is None or res[0] != 202 or not isinstance(res[1], dict):
            raise RuntimeError(f"POST /api/v1/executions on {leader.node_id}: {res}")
        exec_id = res[1]["id"]

        def finished(eid: str = exec_id) -> dict[str, Any] | None:
            e = get_execution(leader, eid)
            return e if e is not None and e.get("status") in TERMINAL else None

        e = wait_until(finished, WAIT, f"execution {exec_id} finished", interval=0.01)
        t_done = time.time()
        if e["status"] != "Completed":
            bad.append(e)
            continue
        st = wait_until(lambda eid=exec_id: read_stamps(stamps).get(eid), WAIT,
                        f"stamp of {exec_id}")
        post.append(t_post - t0)
        start.append(st - t0)
        done.append(t_done - t0)
    delete_deployment(leader, "jb-run")
    return {"runs": runs, "not_completed": len(bad), "post_ms": ms(post),
            "start_ms": ms(start), "completed_ms": ms(done)}


# --------------------------------------------------------------------------- (b) cron load
def cron_load(cluster: PrisnCluster, workdir: Path, jobs: int, window: float,
              settle: float, concurrency: str | None = None) -> dict[str, Any]:
    """Part (b): `jobs` `@every 1s` cron deployments measured over `window` s."""
    leader = cluster.wait_healthy(WAIT)
    stamps, script = workdir / "cron.stamps", workdir / "cron.sh"
    script.write_text(stamp_script(stamps))
    names = [f"cr-{i:03d}" for i in range(jobs)]
    c0 = time.monotonic()
    spec: dict[str, Any] = {"type": "cronjob", "source": str(script), "schedule": "@every 1s"}
    if concurrency:
        spec["concurrency"] = concurrency
    deps = [create_deployment(leader, {"name": n, **spec}) for n in names]
    created = time.monotonic() - c0
    time.sleep(settle)  # let the first fires start before the window (not a condition wait)
    leader = cluster.wait_for_leader(WAIT)
    m0 = metric_values(leader, (FIRES, MISSED))
    cpu0 = {n.node_id: cpu_ticks(n.pid or 0) for n in cluster.nodes}
    mach0 = machine_ticks()
    w0, ws = time.monotonic(), time.time()
    time.sleep(window)  # the measurement window itself
    we, elapsed = time.time(), time.monotonic() - w0
    cpu1 = {n.node_id: cpu_ticks(n.pid or 0) for n in cluster.nodes}
    mach1 = machine_ticks()
    leader_end = cluster.wait_for_leader(WAIT)
    m1 = metric_values(leader_end, (FIRES, MISSED))
    times = list(range(math.ceil(ws), math.ceil(we)))  # scheduled times inside the window
    lo, hi = times[0], times[-1]

    def in_window(node: PrisnNode) -> list[dict[str, Any]] | None:
        out: list[dict[str, Any]] = []
        for d in deps:
            items = executions_of(node, d["id"])
            if items is None:
                return None
            out += [e for e in items if (s := epoch(e.get("scheduled_at"))) is not None
                    and lo <= s <= hi]
        return out

    def all_started() -> list[dict[str, Any]] | None:
        got = in_window(leader_end)
        if got is None or any(not e.get("started_at") and e.get("status") not in TERMINAL
                              for e in got):
            return None
        return got

    g0 = time.monotonic()
    try:
        fires = wait_until(all_started, 30.0, "the window's fires started", interval=1.0)
    except TimeoutError:
        fires = in_window(leader_end) or []
    grace = time.monotonic() - g0
    st = read_stamps(stamps)
    api_late, proc_late, not_started = [], [], 0
    stages: dict[str, list[float]] = {k: [] for k in STAGES}
    per_time: Counter[tuple[str, int]] = Counter()
    for e in fires:
        s = epoch(e["scheduled_at"])
        assert s is not None
        per_time[(e["deployment_id"], int(s))] += 1
        started = epoch(e.get("started_at"))
        if started is None:
            not_started += 1
            continue
        api_late.append(started - s)
        fired, done, stamp = epoch(e.get("created_at")), epoch(e.get("completed_at")), \
            st.get(e["id"])
        if stamp is not None:
            proc_late.append(stamp - s)
        if fired is not None:
            stages["due_to_fire"].append(fired - s)
            if stamp is not None:
                stages["fire_to_process"].append(stamp - fired)
        if done is not None and stamp is not None:
            stages["process_to_completed"].append(done - stamp)
    expected = jobs * len(times)
    nodes = []
    for n in cluster.nodes:
        own = cpu1[n.node_id][0] - cpu0[n.node_id][0]
        kids = cpu1[n.node_id][1] - cpu0[n.node_id][1]
        nodes.append({"node": n.node_id, "leader": n is leader_end,
                      "server_cpu_pct": round(100 * own / CLK_TCK / elapsed, 1),
                      "children_cpu_pct": round(100 * kids / CLK_TCK / elapsed, 1),
                      "ran": sum(1 for e in fires if e.get("node") == n.node_id)})
    for n in names:
        wait_until(lambda n=n: True if any(delete_deployment(x, n) for x in
                                           cluster.alive_nodes()) else None,
                   WAIT, f"delete {n}", interval=0.5)
    return {
        "jobs": jobs, "concurrency": concurrency or "default", "create_s": round(created, 2), "window_s": round(elapsed, 2),
        "scheduled_times": len(times), "expected_fires": expected, "fires": len(fires),
        "fires_per_s": round(len(fires) / elapsed, 1),
        "missing": sum(1 for d in deps for t in times if per_time[(d["id"], t)] == 0),
        "duplicates": sum(1 for c in per_time.values() if c > 1),
        "missed_metric": round(m1.get(MISSED, 0) - m0.get(MISSED, 0)),
        "fires_metric": round(m1.get(FIRES, 0) - m0.get(FIRES, 0)),
        "not_started": not_started, "grace_s": round(grace, 1),
        "api_lateness_ms": ms(api_late), "process_lateness_ms": ms(proc_late),
        "stages_ms": {k: ms(v) for k, v in stages.items()},
        "leader_changed": leader_end is not leader, "nodes": nodes,
        "machine_cpu_pct": round(100 * (mach1[0] - mach0[0]) / max(1, mach1[1] - mach0[1]), 1),
    }


# --------------------------------------------------------------------------- (c) failovers
def fired_since(node: PrisnNode, dep_id: str, since: float, count: int) -> bool | None:
    """Whether `node` lists at least `count` fires scheduled at or after `since`."""
    items = executions_of(node, dep_id)
    if items is None:
        return None
    n = sum(1 for e in items if (s := epoch(e.get("scheduled_at"))) is not None and s >= since)
    return True if n >= count else None


def failovers(cluster: PrisnCluster, workdir: Path, k: int) -> dict[str, Any]:
    """Part (c): `k` leader SIGKILLs under one `@every 1s` cron job."""
    leader = cluster.wait_healthy(WAIT)
    stamps, script = workdir / "fo.stamps", workdir / "fo.sh"
    script.write_text(stamp_script(stamps))
    dep = create_deployment(leader, {"name": "fo-tick", "type": "cronjob",
                                     "source": str(script), "schedule": "@every 1s"})
    dep_id = dep["id"]
    wait_until(lambda: fired_since(leader, dep_id, 0, 3), WAIT, "three fires", interval=0.2)
    rounds = []
    for i in range(k):
        leader = cluster.wait_healthy(WAIT)
        missed0 = metric_values(leader, (MISSED,)).get(MISSED, 0)
        now = time.time()
        wait_until(lambda ld=leader, t=now: fired_since(ld, dep_id, t, 2), WAIT,
                   "two fires before the kill", interval=0.1)
        t_kill = time.time()
        leader.send_signal(signal.SIGKILL)
        leader.wait(15.0)
        new = cluster.wait_for_leader(WAIT, exclude=[leader])
        t_new = time.time()
        wait_until(lambda n=new, t=t_new: fired_since(n, dep_id, t, 3), WAIT,
                   "three fires after the failover", interval=0.1)
        cluster.restart(leader)
        healthy = cluster.wait_healthy(WAIT)
        missed1 = metric_values(healthy, (MISSED,)).get(MISSED, 0)
        rounds.append({"victim": leader.node_id, "new_leader": new.node_id,
                       "kill": t_kill, "new_leader_known": t_new,
                       "election_s": round(t_new - t_kill, 2),
                       "missed_recorded": round(missed1 - missed0)})
        print(f"failover {i + 1}/{k}: {leader.node_id} -> {new.node_id} in "
              f"{t_new - t_kill:.2f}s", file=sys.stderr)
    leader = cluster.wait_healthy(WAIT)
    now = time.time()
    wait_until(lambda: fired_since(leader, dep_id, now, 2), WAIT, "two last fires", interval=0.2)
    items = executions_of(leader, dep_id) or []
    missed_total = round(metric_values(leader, (MISSED,)).get(MISSED, 0))
    delete_deployment(leader, "fo-tick")
    counts: Counter[int] = Counter()
    lost: Counter[int] = Counter()
    for e in items:
        s = epoch(e.get("scheduled_at"))
        if s is not None:
            counts[int(s)] += 1
            lost[int(s)] += e.get("status") == "Lost"
    stamped = stamp_counts(stamps)
    starts: Counter[int] = Counter()
    for e in items:
        s = epoch(e.get("scheduled_at"))
        if s is not None:
            starts[int(s)] += stamped.get(e["id"], 0)
    first, last = min(counts), max(counts)

    def tally(a: int, b: int) -> dict[str, int]:
        ts = range(a, b + 1)
        return {"times": len(ts), "one": sum(1 for t in ts if counts[t] == 1),
                "none": sum(1 for t in ts if counts[t] == 0),
                "more": sum(1 for t in ts if counts[t] > 1),
                "ran_twice": sum(1 for t in ts if starts[t] > 1),
                "lost": sum(lost[t] for t in ts)}

    for r in rounds:
        r.update(tally(max(first, int(r["kill"]) - 2), min(last, int(r["new_leader_known"]) + 3)))
        r["kill"], r["new_leader_known"] = round(r["kill"], 3), round(r["new_leader_known"], 3)
    return {"failovers": k, "rounds": rounds, "all": tally(first, last),
            "missed_total": missed_total, "executions": len(items)}


# --------------------------------------------------------------------------- driver
def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every part on one cluster; returns the JSON document."""
    extra = ["--node-down-after", "2s", "--stop-grace", "1s", *prisn_extra_args(args)]
    doc: dict[str, Any] = {"nodes": args.nodes, "machine": machine_line(),
                           "load_before": load_line()}
    with PrisnCluster(args.nodes, extra_args=extra, keep_dir=args.keep_dir,
                      ready_timeout=WAIT) as cluster:
        if args.keep_dir:
            print(f"data dirs and logs: {cluster.base_dir}", file=sys.stderr)
        if args.runs:
            doc["on_demand"] = on_demand(cluster, workdir, args.runs)
            print(f"on demand: {doc['on_demand']}", file=sys.stderr)
        if args.cron_jobs:
            doc["cron"] = cron_load(cluster, workdir, args.cron_jobs, args.window, args.settle)
            print(f"cron: {doc['cron']}", file=sys.stderr)
        if args.failovers:
            doc["failover"] = failovers(cluster, workdir, args.failovers)
    doc["load_after"] = load_line()
    return doc


def failed(doc: dict[str, Any]) -> bool:
    """More than one execution for a scheduled time, or a process run twice."""
    fo = doc.get("failover")
    return bool((doc.get("cron") or {}).get("duplicates") or
                (fo and (fo["all"]["more"] or fo["all"]["ran_twice"])))


def render(doc: dict[str, Any]) -> str:
    out = [f"{doc['nodes']} nodes; {doc['machine']}; {doc['load_before']} before, "
           f"{doc['load_after']} after"]
    od = doc.get("on_demand")
    if od:
        rows = [[label, *(fmt(od[key][k]) for k in ("p50", "p99", "max"))] for label, key in (
            ("POST (async) -> 202", "post_ms"),
            ("POST -> process started (its own stamp)", "start_ms"),
            ("POST -> Completed observed (10 ms polls)", "completed_ms"))]
        out += ["", f"on-demand runs: {od['runs']} (not Completed: {od['not_completed']})", "",
                markdown_table(["ms", "p50", "p99", "max"], rows)]
    cr = doc.get("cron")
    if cr:
        out += ["", f"{cr['jobs']} cron jobs `@every 1s` (concurrency {cr['concurrency']}), "
                f"{cr['window_s']:.0f} s window "
                f"({cr['scheduled_times']} scheduled times, created in {cr['create_s']:.1f} s"
                f"{', leader changed' if cr['leader_changed'] else ''}): fires "
                f"**{cr['fires']}** of {cr['expected_fires']} = **{cr['fires_per_s']}/s**, "
                f"missing {cr['missing']}, duplicates {cr['duplicates']}, "
                f"prisn_cron_missed_total +{cr['missed_metric']}, "
                f"prisn_cron_fires_total +{cr['fires_metric']}, not started "
                f"{cr['not_started']} after {cr['grace_s']} s; the machine's CPUs were "
                f"{cr['machine_cpu_pct']} % busy (all processes)", "",
                markdown_table(["lateness, ms", "p50", "p99", "max"], [
                    [label, *(fmt(cr[key][k]) for k in ("p50", "p99", "max"))]
                    for label, key in (("started_at - scheduled_at (API)", "api_lateness_ms"),
                                       ("process stamp - scheduled_at", "process_lateness_ms"))]
                    + [[f"stage: {label}", *(fmt(cr["stages_ms"][key][k])
                                              for k in ("p50", "p99", "max"))]
                       for key, label in STAGES.items()]),
                "", markdown_table(
                    ["node", "server CPU % of a core", "its job processes' CPU %",
                     "fires run"],
                    [[r["node"] + (" (leader)" if r["leader"] else ""),
                      fmt(r["server_cpu_pct"]), fmt(r["children_cpu_pct"]), str(r["ran"])]
                     for r in cr["nodes"]])]
    fo = doc.get("failover")
    if fo:
        rows = [[str(i + 1), f"{r['victim']} -> {r['new_leader']}", fmt(r["election_s"], 2),
                 str(r["times"]), str(r["one"]), str(r["more"]), str(r["none"]),
                 str(r["missed_recorded"]), str(r["lost"]), str(r["ran_twice"])]
                for i, r in enumerate(fo["rounds"])]
        a = fo["all"]
        rows.append(["all", "", "", str(a["times"]), str(a["one"]), str(a["more"]),
                     str(a["none"]), str(fo["missed_total"]), str(a["lost"]),
                     str(a["ran_twice"])])
        out += ["", f"leader SIGKILLs under one `@every 1s` cron job: {fo['failovers']} "
                f"({fo['executions']} executions); per failover the scheduled times from 2 s "
                "before the kill to 3 s after the new leader", "",
                markdown_table(["failover", "leader", "kill -> new leader s", "times",
                                "1 execution", "> 1", "0", "recorded missed",
                                "of them Lost", "process ran twice"], rows)]
    out += ["", "exactly one execution per scheduled time: "
            + ("**NO**" if failed(doc) else "yes")]
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=100, help="on-demand runs (100)")
    p.add_argument("--cron-jobs", type=int, default=200, help="@every 1s cron jobs (200)")
    p.add_argument("--window", type=float, default=60.0, help="cron window, s (60)")
    p.add_argument("--settle", type=float, default=5.0, help="s after the creates (5)")
    p.add_argument("--failovers", type=int, default=5, help="leader SIGKILLs (5)")
    p.add_argument("--quick", action="store_true",
                   help="CI size: 5 runs, 10 cron jobs for 5 s, settle 1 s, 1 failover")
    p.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    p.add_argument("--keep-dir", action="store_true", help="keep data dirs and logs")
    p.add_argument("--json", metavar="PATH", help="also write everything as JSON here")
    add_prisn_args_option(p)
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.cron_jobs, args.window, args.settle, args.failovers = 5, 10, 5.0, 1.0, 1
    if min(args.runs, args.cron_jobs, args.failovers) < 0 or args.window < 2 or args.settle < 0:
        p.error("--runs/--cron-jobs/--failovers must be >= 0, --window >= 2, --settle >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="prisn-bench-jobs-") as tmp:
        doc = run(args, Path(tmp))
    print(render(doc))
    write_json(args.json, doc)
    return 1 if failed(doc) else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
