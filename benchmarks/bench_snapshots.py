"""Snapshot figures (issue 4 item 1), with real `prisn server` processes on loopback.

    python -m benchmarks.bench_snapshots install [--deployments 100000]
    python -m benchmarks.bench_snapshots restart [--entries 1000000]

`install`: a one-node cluster is started and stopped, then its data dir is seeded offline with
a snapshot of N deployments (built by the real `DeploymentStore`, written by the real
`SnapshotStore`, taken "at" index N in the node's current term), so no hour of HTTP writes is
needed. The node restarts from it (restart figure with snapshots), then a brand-new member
joins and must receive the whole state by InstallSnapshot: the figure is the time from the
joiner's process start until it serves all N deployments, plus the joiner's own log line
(verify + restore time).

`restart`: a one-node cluster is started and stopped, then N COMMAND entries (1,000 creates,
then scale commands on them) are appended offline to its RocksDB log and marked committed;
the figure is the time from process start to `/ready` (which latches once everything committed
at start has been applied), i.e. load + replay through the state machine.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from prisn.fsm.commands import CommandFactory, encode_entry
from prisn.fsm.deployments import DeploymentStore
from prisn.messages import EntryKind, StoreAppend
from prisn.raft.core import decode_config
from prisn.snapshots import SnapshotStore
from prisn.storage import LogStorage


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, root: Path, nid: str, extra: list[str]) -> None:
        self.nid = nid
        self.http = _free_port()
        self.raft = _free_port()
        self.data = root / nid
        self.log = root / f"{nid}.log"
        self.args = [sys.executable, "-m", "prisn.cli", "server", "--bind",
                     f"127.0.0.1:{self.http}", "--data-dir", str(self.data), "--node-id", nid,
                     "--cluster", "--raft-addr", f"127.0.0.1:{self.raft}", *extra]
        self.p: subprocess.Popen | None = None

    def start(self) -> float:
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        t0 = time.perf_counter()
        self.p = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        return t0

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=5) as r:
            return json.loads(r.read() or b"null")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.p is not None
            if self.p.poll() is not None:
                raise SystemExit(f"{self.nid} exited; see {self.log}")
            try:
                if cond():
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)
        raise SystemExit(f"timed out waiting for {what}; see {self.log}")

    def stop(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def _seed_node(root: Path, extra: list[str]) -> Proc:
    n1 = Proc(root, "n1", ["--bootstrap", *extra])
    n1.start()
    n1.wait(n1.ready, 30, "n1 ready")
    n1.stop()
    return n1


def bench_install(n: int, root: Path) -> dict:
    extra = ["--log-level", "info", "--snapshot-threshold", "8192", "--snapshot-interval", "0"]
    n1 = _seed_node(root, extra)
    st = LogStorage(str(n1.data / "raft"))
    boot = st.load()
    st.close()
    mem = decode_config(next(e[3] for e in boot.entries if e[2] == EntryKind.CONFIG))
    t0 = time.perf_counter()
    store = DeploymentStore()
    cf = CommandFactory()
    for i in range(1, n + 1):
        cmd = cf.create({"name": f"dep-{i:07d}", "source": f"echo {i}",
                         "env": {"K": str(i)}})
        store.apply(i, int(EntryKind.COMMAND), encode_entry("seed", i, cmd))
    data = store.snapshot()
    meta = SnapshotStore(n1.data / "snapshots").write(n, boot.term, mem, data)
    build = time.perf_counter() - t0
    t_start = n1.start()
    n1.wait(n1.ready, 120, "n1 ready after restore")
    restart_snap = time.perf_counter() - t_start
    n1.wait(lambda: n1.get("/api/v1/deployments?limit=1")["total"] == n, 30, "n1 holds all")
    pages = _page_times(n1, n)
    rss_ready = _rss_mb(n1)
    n2 = Proc(root, "n2", ["--peers", f"127.0.0.1:{n1.raft}", *extra])
    t_join = n2.start()
    try:
        n2.wait(lambda: n2.get("/api/v1/deployments?limit=1")["total"] == n, 600,
                "n2 caught up")
        join = time.perf_counter() - t_join
        rss_after_join = _rss_mb(n1)
        m = re.search(r"installed snapshot \d+ \(term \d+, (\d+) bytes\) in ([\d.]+) s",
                      n2.log.read_text())
    finally:
        n2.stop()
        n1.stop()
    return {"deployments": n, "snapshot_bytes": meta.size, "seed_build_s": round(build, 2),
            "restart_from_snapshot_to_ready_s": round(restart_snap, 2),
            "join_to_all_deployments_s": round(join, 2),
            "joiner_verify_restore_s": float(m.group(2)) if m else None,
            "rss_mb_ready": rss_ready, "rss_mb_after_sending_snapshot": rss_after_join,
            "paged_list_ms": pages}


def _rss_mb(p: Proc) -> float:
    """Resident set size of a node's process (VmRSS), in MB."""
    assert p.p is not None
    for line in Path(f"/proc/{p.p.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return -1.0


def _page_times(p: Proc, n: int, pages: int = 50) -> dict:
    """Wall time of `GET /api/v1/deployments?limit=100&offset=K` (local reads, a fresh
    connection each) at offsets spread over the whole list: p50 and max in ms."""
    rng = random.Random(7)
    took = []
    for _ in range(pages):
        off = rng.randrange(0, max(1, n - 100))
        t0 = time.perf_counter()
        body = p.get(f"/api/v1/deployments?limit=100&offset={off}")
        took.append(1000 * (time.perf_counter() - t0))
        assert body["count"] == 100, body["count"]
    took.sort()
    return {"pages": pages, "p50": round(took[len(took) // 2], 2), "max": round(took[-1], 2)}


def bench_restart(n: int, root: Path) -> dict:
    extra = ["--log-level", "info", "--snapshot-threshold", str(10 * n)]  # no snapshot
    n1 = _seed_node(root, extra)
    st = LogStorage(str(n1.data / "raft"))
    boot = st.load()
    last = boot.entries[-1][0]
    term = boot.term
    cf = CommandFactory()
    rng = random.Random(1)
    t0 = time.perf_counter()
    batch: list[list] = []
    seq = 0
    for k in range(n):
        if k < 1000:
            cmd = cf.create({"name": f"d{k:04d}", "source": "x"})
        else:
            cmd = cf.scale(f"d{rng.randrange(1000):04d}", {"replicas": rng.randrange(1, 50)})
        last += 1
        batch.append([last, term, int(EntryKind.COMMAND), encode_entry("seed", k, cmd)])
        if len(batch) == 20_000 or k == n - 1:
            seq += 1
            st.write([StoreAppend(seq=seq, term=term, vote=boot.vote, commit=last,
                                  entries=batch)])
            batch = []
    st.close()
    build = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in (n1.data / "raft").rglob("*") if f.is_file())
    t_start = n1.start()
    try:
        n1.wait(n1.ready, 1800, "n1 ready after replay")
        took = time.perf_counter() - t_start
        applied = n1.get("/api/v1/cluster/status")["applied_index"]
    finally:
        n1.stop()
    return {"entries": n, "log_bytes_on_disk": size, "seed_build_s": round(build, 1),
            "restart_to_ready_s": round(took, 2), "applied_index": applied}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["install", "restart"])
    ap.add_argument("--deployments", type=int, default=100_000)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--keep-dir", action="store_true")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="prisn-bench-snap-"))
    try:
        if a.what == "install":
            res = bench_install(a.deployments, root)
        else:
            res = bench_restart(a.entries, root)
        print(json.dumps(res, indent=2))
    finally:
        if a.keep_dir:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
