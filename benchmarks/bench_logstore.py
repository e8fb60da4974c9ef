"""Micro-benchmark of the log store (not run by CI).

1. Synced batch latency: `LogStorage.write` of ONE request holding 1, 16 or 128 entries of
   300 bytes; p50/p99/max over `--writes` writes.
2. Group commit: the real `LogStoreActor` thread fed over inproc by a producer that keeps up to
   `--window` single-entry StoreAppends in flight (as raft would with many clients), versus the
   one-request-per-synced-write ceiling. Reports entries/s and the mean batch size.

Usage: python benchmarks/bench_logstore.py [--dir /path/on/the/disk/to/measure]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.logstore import LogStoreActor  # noqa: E402
from prisn.messages import StoreAppend, StoreSynced  # noqa: E402
from prisn.storage import LogStorage  # noqa: E402
from transport.codec import decode, encode  # noqa: E402
from transport.mailbox import inproc_address  # noqa: E402

PAYLOAD = b"p" * 300


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def bench_latency(base: str, writes: int) -> None:
    print(
        f"synced write latency, one request per write, {len(PAYLOAD)}-byte entries, "
        f"{writes} writes each"
    )
    print(f"{'entries/batch':>13} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'entries/s':>10}")
    for size in (1, 16, 128):
        store = LogStorage(f"{base}/lat{size}")
        try:
            nxt = 1
            lat: list[float] = []
            for seq in range(1, writes + 1):
                r = StoreAppend(
                    seq=seq,
                    term=1,
                    vote="n1",
                    commit=0,
                    entries=[[i, 1, 0, PAYLOAD] for i in range(nxt, nxt + size)],
                )
                t0 = time.perf_counter()
                store.write([r])
                lat.append(time.perf_counter() - t0)
                nxt += size
            p50 = statistics.median(lat)
            print(
                f"{size:>13} {p50 * 1e3:>8.3f} {pct(lat, 0.99) * 1e3:>8.3f} "
                f"{max(lat) * 1e3:>8.3f} {size / p50:>10.0f}"
            )
        finally:
            store.close()


def bench_group_commit(base: str, total: int, window: int) -> None:
    ctx = zmq.Context()
    node = f"bench{uuid.uuid4().hex[:8]}"
    store = LogStorage(f"{base}/group{window}")
    batches: list[int] = []
    fsync_s: list[float] = []

    def observe(s: float, n: int) -> None:
        fsync_s.append(s)
        batches.append(n)

    actor = LogStoreActor(store, ctx, node, observe_fsync=observe)
    raft = ctx.socket(zmq.PULL)
    raft.bind(inproc_address(node, "raft"))
    push = ctx.socket(zmq.PUSH)
    try:
        actor.start()
        actor.started.wait(5)
        push.connect(inproc_address(node, "logstore"))
        sent = acked = 0
        t0 = time.perf_counter()
        while acked < total:
            while sent < total and sent - acked < window:
                sent += 1
                push.send(
                    encode(
                        StoreAppend(
                            seq=sent, term=1, vote="n1", commit=0, entries=[[sent, 1, 0, PAYLOAD]]
                        )
                    )
                )
            if not raft.poll(5000):
                raise RuntimeError(f"no ack within 5 s (acked {acked} of {total})")
            msg = decode(raft.recv())
            if not isinstance(msg, StoreSynced):
                raise RuntimeError(f"unexpected {msg}")
            acked = msg.seq
        elapsed = time.perf_counter() - t0
    finally:
        actor.stop()
        actor.join(5)
        push.close(0)
        raft.close(0)
        ctx.term()
        store.close()
    print(
        f"{window:>7} {total / elapsed:>10.0f} {len(batches):>8} "
        f"{statistics.mean(batches):>10.1f} {statistics.median(fsync_s) * 1e3:>9.3f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="parent directory for the databases")
    ap.add_argument("--writes", type=int, default=2000)
    ap.add_argument("--total", type=int, default=50_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as base:
        bench_latency(base, args.writes)
        print()
        print(
            f"group commit through the actor thread, 1 entry per StoreAppend, {args.total} entries"
        )
        print(f"{'window':>7} {'entries/s':>10} {'writes':>8} {'mean batch':>10} {'fsync p50':>9}")
        for window in (1, 16, 128, 1024):
            bench_group_commit(base, args.total if window > 1 else args.total // 10, window)


if __name__ == "__main__":
    main()
