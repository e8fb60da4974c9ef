"""The runner thread's CPU per process start and stop (issue 15: the runner's start cost).

    python -m benchmarks.bench_runner_start [--instances 100] [--rounds 5] [--json PATH]

One `RunnerActor` (actors/runner.py) in this process, on a fresh data dir. Each round sends
one `runner.desired` with `--instances` instances of an `sh` script that execs `sleep`, waits
until all have started (the runner's `starts` counter), then sends an empty desired list
and waits until all are reaped. The figure is the runner thread's own CPU time (utime +
stime of /proc/self/task/<tid>/stat, clock ticks) over the round, divided by the instances:
one start (resolve, fork with the PDEATHSIG preexec, pipes, records) plus one stop (SIGTERM,
reap, records) each. Prints the per-round figures and their median, and how many times
procs.json was written (`records_writes`, when the runner counts it). Run it `nice`d;
to compare with another checkout put that first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import zmq

from actors.runner import RunnerActor
from prisn.messages import RunnerDesired
from prisn.workloads.runner import RestartPolicy
from transport.mailbox import Outbox

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(tid: int) -> float:
    """Seconds of CPU (user + system) thread `tid` of this process has used."""
    data = Path(f"/proc/self/task/{tid}/stat").read_bytes()
    rest = data[data.rindex(b")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / TICK


def wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)


def run(instances: int, rounds: int, workdir: Path) -> dict[str, object]:
    scripts = workdir / "scripts"
    scripts.mkdir()
    (scripts / "idle.sh").write_text("exec sleep 600\n")
    ctx = zmq.Context()
    node = f"bench-runner-{os.getpid()}"
    r = RunnerActor(ctx, node, workdir / "data", policy=RestartPolicy(stop_grace=5.0),
                    on_status=lambda batch: None)
    r.start()
    if not r.started.wait(30) or r.failure is not None:
        raise RuntimeError(f"the runner did not start: {r.failure}")
    out = Outbox(ctx, node)
    per: list[float] = []
    try:
        assert r.native_id is not None
        for k in range(rounds):
            want = [{"id": f"r{k}-{i}", "deployment": "bench", "cwd": str(scripts),
                     "source": "idle.sh", "runtime": "sh"} for i in range(instances)]
            base = r.starts
            c0 = thread_cpu(r.native_id)
            out.send("runner", RunnerDesired(instances=want))
            wait(lambda b=base: r.starts >= b + instances, 300, "the starts")
            out.send("runner", RunnerDesired(instances=[]))
            wait(lambda: not r._procs and not r._draining, 300, "the stops")
            per.append((thread_cpu(r.native_id) - c0) / instances * 1000)
    finally:
        r.stop()
        r.join(60)
        out.close()
        ctx.term()
    return {"instances": instances, "rounds": rounds,
            "cpu_ms_per_start_stop": [round(x, 3) for x in per],
            "median_ms": round(statistics.median(per), 3),
            "records_writes": getattr(r, "records_writes", None),
            "start_failures": r.start_failures}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=100, help="instances per round (100)")
    p.add_argument("--rounds", type=int, default=5, help="rounds (5)")
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="prisn-bench-runner-") as d:
        res = run(max(1, args.instances), max(1, args.rounds), Path(d))
    print("| instances | rounds | runner CPU ms per start+stop (median) | rounds | "
          "procs.json writes |")
    print("|---|---|---|---|---|")
    print(f"| {res['instances']} | {res['rounds']} | {res['median_ms']} | "
          f"{res['cpu_ms_per_start_stop']} | {res['records_writes']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
