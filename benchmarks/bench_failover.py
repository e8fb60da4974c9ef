"""Write unavailability when the leader dies: the longest gap between acknowledged writes.

    python -m benchmarks.bench_failover [--trials 20] [--nodes 3] [--signal KILL|TERM] [--etcd]

Each trial, on a healthy cluster:
  1. one client writes continuously: sequential creates (prisn: ``POST /api/v1/deployments``;
     etcd, with --etcd: ``POST /v3/kv/put``), each with a short timeout (--request-timeout);
     on an error, a timeout or a non-2xx answer it moves to the next node, round-robin over all;
  2. after --pre seconds of acknowledged writes, the leader gets the signal (SIGKILL by
     default; ``--signal TERM`` for a planned restart) and the benchmark waits for it to exit;
  3. writes go on until one is acknowledged after the exit, then --post seconds more;
  4. the trial's figure is the longest gap between consecutive acknowledged writes;
  5. the killed node is started again with its same command line and data directory, and the
     next trial waits until the whole cluster is healthy again (all up, one agreed leader).
Prints each trial and the p50/p99/max of the gaps (nearest rank). A trial with no write
acknowledged within --trial-timeout after the kill counts as that timeout and as failed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from benchmarks.cluster import EtcdCluster, EtcdNode, PrisnCluster, PrisnNode
from benchmarks.loadgen import (
    Config,
    HttpConnection,
    HttpProtocolError,
    RequestBuilder,
    make_builder,
    parse_target,
    percentile,
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

MAX_WRITES_PER_TRIAL = 5_000_000


@dataclass
class WriterStats:
    acks: list[float] = field(default_factory=list)  # perf_counter() of each 2xx answer
    errors: int = 0
    non_2xx: int = 0
    switches: int = 0


async def writer(
    targets: Sequence[str],
    build: RequestBuilder,
    stats: WriterStats,
    stop: asyncio.Event,
    request_timeout: float,
    deadline: float,
) -> None:
    """Sequential writes until ``stop`` or ``deadline`` (perf_counter); on failure, next node."""
    conns = [HttpConnection(*parse_target(t), connect_timeout=request_timeout) for t in targets]
    idx = 0
    try:
        for n in range(MAX_WRITES_PER_TRIAL):
            if stop.is_set() or time.perf_counter() >= deadline:
                break
            req = build(n, 0)
            ok = False
            try:
                resp = await conns[idx].request(
                    req.method, req.path, req.body, req.headers, request_timeout
                )
                ok = 200 <= resp.status < 300
                if not ok:
                    stats.non_2xx += 1
            except (OSError, HttpProtocolError, asyncio.IncompleteReadError):
                stats.errors += 1
            if ok:
                stats.acks.append(time.perf_counter())
            else:
                idx = (idx + 1) % len(conns)
                stats.switches += 1
                await asyncio.sleep(0.002)  # a refused connection fails at once: do not spin
    finally:
        for c in conns:
            await c.close()


@dataclass
class Trial:
    trial: int
    killed: str
    new_leader: str
    max_gap_ms: float
    kill_to_ack_ms: float  # signal sent -> first write acknowledged after the process exited
    exit_ms: float  # signal sent -> process gone
    writes: int
    errors: int
    non_2xx: int
    failed: bool


async def _wait_for(predicate: Callable[[], bool], timeout: float, poll: float = 0.02) -> bool:
    """Poll ``predicate`` (cheap, no I/O) until true or ``timeout`` s; False on timeout."""
    for _ in range(int(timeout / poll) + 2):
        if predicate():
            return True
        await asyncio.sleep(poll)
    return bool(predicate())


async def one_trial(
    number: int,
    cluster: PrisnCluster | EtcdCluster,
    cfg: Config,
    args: argparse.Namespace,
) -> Trial:
    leader: PrisnNode | EtcdNode = await asyncio.to_thread(cluster.wait_healthy, args.heal_timeout)
    recovered = False
    targets = [n.http_addr for n in cluster.nodes]
    build = make_builder(cfg)
    stats = WriterStats()
    stop = asyncio.Event()
    hard_deadline = time.perf_counter() + args.pre + args.trial_timeout + args.post + 30
    task = asyncio.create_task(
        writer(targets, build, stats, stop, args.request_timeout, hard_deadline)
    )
    try:
        t_start = time.perf_counter()
        warmed = await _wait_for(
            lambda: time.perf_counter() - t_start >= args.pre and len(stats.acks) >= 10,
            args.pre + args.trial_timeout,
        )
        if not warmed:
            raise RuntimeError(f"no steady writes before the kill: {stats}")
        sig = signal.SIGKILL if args.signal == "KILL" else signal.SIGTERM
        t_signal = time.perf_counter()
        await asyncio.to_thread(leader.kill, sig)  # returns once the process has exited
        t_exit = time.perf_counter()
        recovered = await _wait_for(
            lambda: bool(stats.acks) and stats.acks[-1] > t_exit, args.trial_timeout
        )
        if recovered:
            first_after = next(t for t in stats.acks if t > t_exit)
            await _wait_for(lambda: time.perf_counter() - first_after >= args.post, args.post + 1)
    finally:
        stop.set()
        await task

    acks = stats.acks
    gaps = [b - a for a, b in zip(acks, acks[1:], strict=False)]
    if recovered:
        max_gap = max(gaps) if gaps else 0.0
        kill_to_ack = next(t for t in acks if t > t_exit) - t_signal
    else:
        max_gap = kill_to_ack = args.trial_timeout + (t_exit - t_signal)
    new_leader = await asyncio.to_thread(cluster.leader)
    trial = Trial(
        trial=number,
        killed=leader.name,
        new_leader=new_leader.name if new_leader is not None else "?",
        max_gap_ms=max_gap * 1000,
        kill_to_ack_ms=kill_to_ack * 1000,
        exit_ms=(t_exit - t_signal) * 1000,
        writes=len(acks),
        errors=stats.errors,
        non_2xx=stats.non_2xx,
        failed=not recovered,
    )
    # bring the killed node back with its same command, then wait for a healthy cluster
    await asyncio.to_thread(leader.start)
    await asyncio.to_thread(cluster.wait_healthy, args.heal_timeout)
    return trial


async def run_trials(cluster: PrisnCluster | EtcdCluster, args: argparse.Namespace) -> list[Trial]:
    trials: list[Trial] = []
    for i in range(1, args.trials + 1):
        cfg = Config(
            targets=[n.http_addr for n in cluster.nodes],
            mode="etcd-put" if args.etcd else "prisn-create",
            spec_size=args.spec_size,
            replicas=args.replicas,
        )
        t = await one_trial(i, cluster, cfg, args)
        print(
            f"trial {i}: killed {t.killed} -> leader {t.new_leader}; max gap "
            f"{t.max_gap_ms:.0f} ms, kill->ack {t.kill_to_ack_ms:.0f} ms"
            + (" FAILED" if t.failed else ""),
            file=sys.stderr,
        )
        trials.append(t)
    return trials


def summary_table(trials: Sequence[Trial]) -> str:
    gaps = sorted(t.max_gap_ms for t in trials)
    recov = sorted(t.kill_to_ack_ms for t in trials)
    rows = [
        [
            "longest gap between acked writes",
            fmt(percentile(gaps, 50), 0),
            fmt(percentile(gaps, 99), 0),
            fmt(gaps[-1] if gaps else None, 0),
        ],
        [
            "signal → first ack after exit",
            fmt(percentile(recov, 50), 0),
            fmt(percentile(recov, 99), 0),
            fmt(recov[-1] if recov else None, 0),
        ],
    ]
    return markdown_table(["ms", "p50", "p99", "max"], rows)


def trials_table(trials: Sequence[Trial]) -> str:
    rows = [
        [
            str(t.trial),
            t.killed,
            t.new_leader,
            fmt(t.max_gap_ms, 0),
            fmt(t.kill_to_ack_ms, 0),
            fmt(t.exit_ms, 0),
            str(t.writes),
            f"{t.non_2xx}/{t.errors}",
            "yes" if t.failed else "",
        ]
        for t in trials
    ]
    headers = [
        "trial",
        "killed",
        "new leader",
        "max gap ms",
        "signal→ack ms",
        "exit ms",
        "acked writes",
        "non-2xx/err",
        "failed",
    ]
    return markdown_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_failover",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    p.add_argument("--signal", choices=("KILL", "TERM"), default="KILL")
    p.add_argument("--etcd", action="store_true", help="etcd instead of prisn")
    p.add_argument("--request-timeout", type=float, default=0.1, help="per-write timeout s (0.1)")
    p.add_argument("--pre", type=float, default=1.0, help="seconds of writes before the kill")
    p.add_argument("--post", type=float, default=1.0, help="seconds of writes after recovery")
    p.add_argument("--trial-timeout", type=float, default=30.0, help="give up on recovery after")
    p.add_argument("--heal-timeout", type=float, default=60.0, help="wait for a healthy cluster")
    p.add_argument("--spec-size", type=int, default=0, help="bytes of source / value")
    p.add_argument("--replicas", type=int, default=1, help="prisn: `replicas` of each deployment")
    p.add_argument("--keep-dir", action="store_true", help="keep data dirs and logs")
    p.add_argument("--json", metavar="PATH", help="also write all trials as JSON here")
    add_prisn_args_option(p)
    args = p.parse_args(argv)

    cluster: PrisnCluster | EtcdCluster
    cluster = (
        EtcdCluster(args.nodes, keep_dir=args.keep_dir)
        if args.etcd
        else PrisnCluster(args.nodes, keep_dir=args.keep_dir, extra_args=prisn_extra_args(args))
    )
    with cluster:
        print(
            f"{'etcd' if args.etcd else 'prisn'} cluster up in {cluster.base_dir}", file=sys.stderr
        )
        trials = asyncio.run(run_trials(cluster, args))

    system = "etcd" if args.etcd else "prisn"
    print(
        f"\n### {system} {args.nodes}-node failover, SIG{args.signal} of the leader, "
        f"{len(trials)} trials, write timeout {args.request_timeout:g} s\n\n"
        f"machine: {machine_line()}\n"
    )
    print(summary_table(trials))
    print()
    print(trials_table(trials))
    write_json(
        args.json, {"bench": "failover", "args": vars(args), "trials": [asdict(t) for t in trials]}
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
