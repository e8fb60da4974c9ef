"""Scale through the API: N deployments created over HTTP, then the leader restarted.

    python -m benchmarks.bench_scale [--deployments 100000] [--nodes 3] [--json PATH]

A `--nodes` prisn cluster on loopback (benchmarks.cluster) gets N creates to the leader at
c = 64 (the load generator's `prisn-create`, 1 KiB-free specs like bench_cluster's), so the
state, the idempotency table, the log kept since the last snapshot and any snapshot are what
real writes leave, unlike `bench_snapshots install` (a seeded snapshot and no log tail). Then:
  * each node's RSS (VmRSS) once the writes are done;
  * the leader is stopped (SIGTERM) and started again with its data dir: seconds from the
    process start to `/ready` (which latches once everything committed at boot is applied,
    i.e. snapshot restore plus log replay) and its RSS then;
  * a paged list (`GET /api/v1/deployments?limit=100&offset=K`, 50 random offsets) on the
    restarted node: p50 and max ms.
Stdlib only, like the rest of benchmarks/; nothing here runs in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

from benchmarks import loadgen
from benchmarks.cluster import PrisnCluster, http_call


def rss_mb(pid: int | None) -> float:
    """VmRSS of a process in MB (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def paged_list_ms(port: int, total: int, pages: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    times = []
    for _ in range(pages):
        off = rng.randrange(max(1, total - 100))
        t = time.perf_counter()
        status, _body = http_call(port, "GET", f"/api/v1/deployments?limit=100&offset={off}")
        times.append((time.perf_counter() - t) * 1000)
        if status != 200:
            raise RuntimeError(f"paged list answered {status}")
    times.sort()
    return {"pages": pages, "p50": round(times[len(times) // 2], 2), "max": round(times[-1], 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deployments", type=int, default=100_000)
    ap.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    out: dict = {"deployments": args.deployments, "nodes": args.nodes, "seed": args.seed}
    with PrisnCluster(args.nodes) as cluster:
        leader = cluster.wait_for_leader()
        cfg = loadgen.Config(targets=[leader.http_addr], mode="prisn-create", concurrency=64,
                             requests=args.deployments, warmup=0)
        res = asyncio.run(loadgen.run(cfg))
        if res.ok != args.deployments:
            print(f"only {res.ok} of {args.deployments} creates succeeded", file=sys.stderr)
            return 1
        out["create_ops_per_s"] = round(res.ops_per_s)
        out["rss_mb_after_creates"] = {n.node_id: rss_mb(n.pid) for n in cluster.alive_nodes()}
        leader.stop()
        t0 = time.monotonic()
        leader.start()
        cluster._wait_ready(leader)  # noqa: SLF001 - the harness's own deadline-bounded wait
        out["leader_restart_to_ready_s"] = round(time.monotonic() - t0, 2)
        out["leader_rss_mb_after_restart"] = rss_mb(leader.pid)
        out["paged_list_ms"] = paged_list_ms(leader.http_port, args.deployments, 50, args.seed)
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
