"""Replicated write/read throughput: a prisn cluster next to an etcd cluster of the same size.

    python -m benchmarks.bench_cluster [--nodes 3|5] [--spec-size 1024|65536] [--duration 10]
                                       [--levels 1,8,32,64] [--read-concurrency 64]
                                       [--skip-prisn | --skip-etcd] [--json PATH]
                                       [--cluster-key]

prisn (``--nodes`` servers, n1 bootstraps, the others join with --peers):
  * creates (``POST /api/v1/deployments``, `source` padded to --spec-size) at each level,
    all connections to the leader, then spread round-robin over all nodes;
  * strong reads (``GET /api/v1/deployments/{name}`` with ``X-Prisn-Consistency: strong``)
    at --read-concurrency, spread over all nodes.
etcd (``--nodes`` members of /usr/bin/etcd, default timeouts), the same generator:
  * puts (``POST /v3/kv/put``, value of --spec-size bytes) to the leader, then spread;
  * linearizable range reads (``POST /v3/kv/range``) at --read-concurrency, spread.
The clusters run one after the other, never together. Between etcd runs the benchmark keys are
deleted, compacted and defragmented so the 2 GiB backend quota is not hit. Prints a markdown
table with prisn/etcd ratios (throughput ratio > 1: prisn faster; latency ratio < 1: prisn
faster).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks.cluster import EtcdCluster, PrisnCluster
from benchmarks.loadgen import Config, Result, run
from benchmarks.report import (
    add_prisn_args_option,
    fmt,
    machine_line,
    markdown_table,
    parse_levels,
    prisn_extra_args,
    ratio,
    run_main,
    write_json,
)


@dataclass(frozen=True)
class Case:
    workload: str  # "write" | "read"
    spread: str  # "leader" | "all"
    concurrency: int

    @property
    def label(self) -> str:
        what = "create / put" if self.workload == "write" else "strong read / range"
        return f"{what} → {'leader' if self.spread == 'leader' else 'all nodes'}"


def cases(levels: Sequence[int], read_concurrency: int) -> list[Case]:
    out = [Case("write", "leader", c) for c in levels]
    out += [Case("write", "all", c) for c in levels]
    out.append(Case("read", "all", read_concurrency))
    return out


def _run_cases(
    system: str,
    all_cases: Sequence[Case],
    targets_for: Callable[[Case], list[str]],
    base: Config,
    between: Callable[[], None] | None = None,
) -> dict[Case, Result]:
    results: dict[Case, Result] = {}
    for case in all_cases:
        if between is not None:
            between()
        if system == "prisn":
            mode = "prisn-create" if case.workload == "write" else "prisn-read"
        else:
            mode = "etcd-put" if case.workload == "write" else "etcd-read"
        cfg = Config(
            targets=targets_for(case),
            mode=mode,
            concurrency=case.concurrency,
            duration=base.duration,
            warmup=base.warmup,
            spec_size=base.spec_size,
            replicas=base.replicas,
            timeout=base.timeout,
        )
        r = asyncio.run(run(cfg))
        print(f"[{system}] {case.label}: {r.summary()}", file=sys.stderr)
        results[case] = r
    return results


def run_prisn(
    args: argparse.Namespace, all_cases: Sequence[Case], base: Config
) -> dict[Case, Result]:
    with PrisnCluster(
        args.nodes,
        keep_dir=args.keep_dir,
        extra_args=prisn_extra_args(args),
        cluster_key=args.cluster_key,
    ) as cluster:
        cluster.wait_healthy()
        print(f"prisn cluster up in {cluster.base_dir}", file=sys.stderr)

        def targets_for(case: Case) -> list[str]:
            leader = cluster.wait_healthy()  # the leader may have moved; all must be up
            return [leader.http_addr] if case.spread == "leader" else cluster.http_targets()

        return _run_cases("prisn", all_cases, targets_for, base)


def run_etcd(
    args: argparse.Namespace, all_cases: Sequence[Case], base: Config
) -> dict[Case, Result]:
    quota = 8 * 1024**3 if args.spec_size > 4096 else None
    with EtcdCluster(args.nodes, keep_dir=args.keep_dir, quota_backend_bytes=quota) as cluster:
        print(f"etcd cluster up in {cluster.base_dir}", file=sys.stderr)

        def targets_for(case: Case) -> list[str]:
            leader = cluster.wait_healthy()
            return [leader.http_addr] if case.spread == "leader" else cluster.http_targets()

        return _run_cases("etcd", all_cases, targets_for, base, between=cluster.reset_keys)


def results_table(
    all_cases: Sequence[Case], prisn: dict[Case, Result], etcd: dict[Case, Result]
) -> str:
    rows: list[list[str]] = []
    for case in all_cases:
        p, e = prisn.get(case), etcd.get(case)
        rows.append(
            [
                case.label,
                str(case.concurrency),
                fmt(p.ops_per_s if p else None),
                fmt(p.p50_ms if p else None, 2),
                fmt(p.p99_ms if p else None, 2),
                f"{p.non_2xx}/{p.errors}" if p else "—",
                fmt(e.ops_per_s if e else None),
                fmt(e.p50_ms if e else None, 2),
                fmt(e.p99_ms if e else None, 2),
                f"{e.non_2xx}/{e.errors}" if e else "—",
                ratio(p.ops_per_s if p else None, e.ops_per_s if e else None),
                ratio(p.p99_ms if p else None, e.p99_ms if e else None),
            ]
        )
    headers = [
        "workload",
        "c",
        "prisn ops/s",
        "prisn p50 ms",
        "prisn p99 ms",
        "prisn non-2xx/err",
        "etcd ops/s",
        "etcd p50 ms",
        "etcd p99 ms",
        "etcd non-2xx/err",
        "ops/s prisn/etcd",
        "p99 prisn/etcd",
    ]
    return markdown_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    p.add_argument("--spec-size", type=int, default=1024, help="bytes of source / value")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per run")
    p.add_argument("--levels", type=parse_levels, default=[1, 8, 32, 64], help="e.g. 1,8,32,64")
    p.add_argument("--read-concurrency", type=int, default=64)
    p.add_argument("--replicas", type=int, default=1, help="prisn: `replicas` of each deployment")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout seconds")
    p.add_argument("--skip-prisn", action="store_true", help="etcd only")
    p.add_argument("--skip-etcd", action="store_true", help="prisn only")
    p.add_argument("--keep-dir", action="store_true", help="keep data dirs and logs")
    p.add_argument("--json", metavar="PATH", help="also write all results as JSON here")
    p.add_argument("--cluster-key", action="store_true",
                   help="prisn: CurveZMQ peers (a `prisn keygen` key on every node)")
    add_prisn_args_option(p)
    args = p.parse_args(argv)

    all_cases = cases(args.levels, args.read_concurrency)
    base = Config(
        targets=[],
        duration=args.duration,
        warmup=args.warmup,
        spec_size=args.spec_size,
        replicas=args.replicas,
        timeout=args.timeout,
    )
    prisn = {} if args.skip_prisn else run_prisn(args, all_cases, base)
    etcd = {} if args.skip_etcd else run_etcd(args, all_cases, base)

    print(
        f"\n### {args.nodes}-node clusters, spec/value {args.spec_size} B, "
        f"{args.duration:g} s per run\n\nmachine: {machine_line()}\n"
    )
    print(results_table(all_cases, prisn, etcd))
    write_json(
        args.json,
        {
            "bench": "cluster",
            "args": vars(args),
            "results": [
                {
                    "workload": c.workload,
                    "spread": c.spread,
                    "concurrency": c.concurrency,
                    "prisn": prisn[c].to_dict() if c in prisn else None,
                    "etcd": etcd[c].to_dict() if c in etcd else None,
                }
                for c in all_cases
            ],
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
