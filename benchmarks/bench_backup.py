"""Online backup and restore figures (issue 16, item 1), with real processes on loopback.

    python -m benchmarks.bench_backup [--deployments 100000] [--keep-dir]

A one-node cluster is seeded offline with a snapshot of N deployments (as
`bench_snapshots install`: the real `DeploymentStore` and `SnapshotStore`, no hour of HTTP
writes) and started. Then, each as a real `prisn` CLI process:

- `prisn snapshot save FILE` from the running node (wall time of the process: request,
  encode on the server, download, fsync, full verification of the file);
- the file's size;
- `prisn snapshot restore FILE --data-dir D --node-id r1` (wall time: verification, parse,
  writing the new data dir);
- a node started from D: time to `/ready` and to serving all N deployments;
- `prisn snapshot save` from the restored node: its state hash must equal the first one
  (the benchmark exits 1 otherwise).

Not run by CI. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_snapshots import Proc, _seed_node
from prisn.fsm.commands import CommandFactory, encode_entry
from prisn.fsm.deployments import DeploymentStore
from prisn.messages import EntryKind
from prisn.raft.core import decode_config
from prisn.snapshots import SnapshotStore
from prisn.storage import LogStorage


def _cli(*args: str) -> tuple[float, dict[str, Any]]:
    """(wall seconds, parsed -o json output) of one `prisn` CLI process; exit on failure."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISN_")}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "prisn.cli", *args, "-o", "json"], env=env,
                       capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"prisn {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    return wall, json.loads(p.stdout)


def _seed(n1: Proc, n: int) -> float:
    """Write a snapshot of `n` deployments into the stopped node's data dir; seconds taken."""
    st = LogStorage(str(n1.data / "raft"))
    boot = st.load()
    st.close()
    mem = decode_config(next(e[3] for e in boot.entries if e[2] == EntryKind.CONFIG))
    t0 = time.perf_counter()
    store = DeploymentStore()
    cf = CommandFactory()
    for i in range(1, n + 1):
        cmd = cf.create({"name": f"dep-{i:07d}", "source": f"echo {i}", "env": {"K": str(i)}})
        store.apply(i, int(EntryKind.COMMAND), encode_entry("seed", i, cmd))
    SnapshotStore(n1.data / "snapshots").write(n, boot.term, mem, store.snapshot())
    return time.perf_counter() - t0


def _total(p: Proc) -> int:
    return int(p.get("/api/v1/deployments?limit=1")["total"])


def bench(n: int, root: Path) -> dict[str, Any]:
    extra = ["--log-level", "warning", "--snapshot-interval", "0"]
    n1 = _seed_node(root, extra)
    seed_s = _seed(n1, n)
    n1.start()
    r1: Proc | None = None
    try:
        n1.wait(n1.ready, 600, "n1 ready")
        n1.wait(lambda: _total(n1) == n, 60, "n1 holds every deployment")
        file = root / "backup.snap"
        save_s, saved = _cli("snapshot", "save", str(file), "--server",
                             f"127.0.0.1:{n1.http}", "--timeout", "600")
        size = file.stat().st_size
        n1.stop()
        r1 = Proc(root, "r1", extra)
        restore_s, restored = _cli("snapshot", "restore", str(file), "--data-dir",
                                   str(r1.data), "--node-id", "r1", "--raft-addr",
                                   f"127.0.0.1:{r1.raft}")
        t_start = r1.start()
        r1.wait(r1.ready, 600, "r1 ready")
        ready_s = time.perf_counter() - t_start
        r1.wait(lambda: _total(r1) == n, 60, "r1 holds every deployment")
        serving_s = time.perf_counter() - t_start
        _again_s, again = _cli("snapshot", "save", str(root / "again.snap"), "--server",
                               f"127.0.0.1:{r1.http}", "--timeout", "600")
    finally:
        n1.stop()
        if r1 is not None:
            r1.stop()
    same = again["state_hash"] == saved["state_hash"] == restored["state_hash"]
    return {"deployments": n, "seed_build_s": round(seed_s, 2),
            "save_s": round(save_s, 2), "save_reported_s": saved["seconds"],
            "file_bytes": size, "file_mb": round(size / 2**20, 1),
            "restore_s": round(restore_s, 2), "restore_reported_s": restored["seconds"],
            "restored_start_to_ready_s": round(ready_s, 2),
            "restored_start_to_serving_all_s": round(serving_s, 2),
            "state_hash": saved["state_hash"], "state_hash_equal_after_restore": same,
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--deployments", type=int, default=100_000)
    ap.add_argument("--keep-dir", action="store_true")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="prisn-bench-backup-"))
    try:
        res = bench(a.deployments, root)
        print(json.dumps(res, indent=2))
        if not res["state_hash_equal_after_restore"]:
            raise SystemExit("the restored node's state hash differs from the backup's")
    finally:
        if a.keep_dir:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
