"""Create throughput and latency of one prisn node, at several client concurrencies.

    python -m benchmarks.bench_single [--duration 10] [--levels 1,8,32,64] [--raft]

Starts one ``prisn server`` (plain, or with ``--raft`` a single-node Raft cluster that
bootstraps itself) on a loopback port in a temporary directory, then runs the
``prisn-create`` workload (``POST /api/v1/deployments``, unique names) at each concurrency
and prints a markdown table. The node keeps its state across the levels.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from benchmarks.cluster import PrisnCluster
from benchmarks.loadgen import Config, Result, run
from benchmarks.report import (
    add_prisn_args_option,
    fmt,
    machine_line,
    markdown_table,
    parse_levels,
    prisn_extra_args,
    run_main,
    write_json,
)


def results_table(results: Sequence[Result]) -> str:
    rows = [
        [
            str(r.concurrency),
            fmt(r.ops_per_s),
            fmt(r.p50_ms, 2),
            fmt(r.p90_ms, 2),
            fmt(r.p99_ms, 2),
            fmt(r.max_ms, 2),
            str(r.ok),
            str(r.non_2xx),
            str(r.errors),
        ]
        for r in results
    ]
    headers = ["c", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "ok", "non-2xx", "errors"]
    return markdown_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_single", description=__doc__)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level (default 10)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per level")
    p.add_argument("--levels", type=parse_levels, default=[1, 8, 32, 64], help="e.g. 1,8,32,64")
    p.add_argument("--spec-size", type=int, default=0, help="pad `source` to this many bytes")
    p.add_argument("--replicas", type=int, default=1, help="`replicas` of each deployment")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout seconds")
    p.add_argument("--raft", action="store_true", help="run as a 1-node Raft cluster")
    p.add_argument("--keep-dir", action="store_true", help="keep the data dir and log")
    p.add_argument("--json", metavar="PATH", help="also write all results as JSON here")
    add_prisn_args_option(p)
    args = p.parse_args(argv)

    results: list[Result] = []
    with PrisnCluster(
        1, clustered=args.raft, keep_dir=args.keep_dir, extra_args=prisn_extra_args(args)
    ) as cluster:
        node = cluster.wait_healthy()
        print(f"prisn node up at {node.http_addr} (data {cluster.base_dir})", file=sys.stderr)
        for c in args.levels:
            cfg = Config(
                targets=[node.http_addr],
                mode="prisn-create",
                concurrency=c,
                duration=args.duration,
                warmup=args.warmup,
                spec_size=args.spec_size,
                replicas=args.replicas,
                timeout=args.timeout,
            )
            r = asyncio.run(run(cfg))
            print(r.summary(), file=sys.stderr)
            results.append(r)
            node.ensure_running()

    mode = "1-node Raft" if args.raft else "single node"
    print(
        f"\n### prisn {mode}, creates, {args.duration:g} s per level, "
        f"spec {args.spec_size or 'minimal'} B\n\nmachine: {machine_line()}\n"
    )
    print(results_table(results))
    write_json(
        args.json,
        {"bench": "single", "args": vars(args), "results": [r.to_dict() for r in results]},
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
