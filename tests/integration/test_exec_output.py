"""Execution output on a real three-node cluster with a cluster key (issue 15): stdout and
stderr kept apart; ``?follow=true`` streams both until the execution ends; the output and
exit code of a finished execution are read from another node after the node that ran it
is SIGKILLed (they went through Raft with the result); a job that prints its secret shows
``***`` and no RocksDB or snapshot file of any node holds the value."""

from __future__ import annotations

import http.client
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.procs import ServerProc, leader_of, start_cluster, wait_for

pytestmark = pytest.mark.timeout(400)

EXTRA = ["--node-down-after", "2s", "--stop-grace", "1s", "--write-timeout", "5s",
         "--snapshot-threshold", "4", "--snapshot-interval", "0"]
WAIT = 60.0
SEED = int(os.environ.get("PRISN_TEST_SEED", "0")) or random.SystemRandom().randrange(1, 2**32)
SCRIPTS = {
    "both": "import sys\nprint('to stdout', flush=True)\n"
            "print('to stderr', file=sys.stderr, flush=True)\nsys.exit(3)\n",
    "slow": "import sys, time\nprint('first', flush=True)\ntime.sleep(1.5)\n"
            "print('second', file=sys.stderr, flush=True)\n",
    "big": "import sys\nsys.stdout.buffer.write(b'\\xc3\\xa9' * 100000 + b'END\\n')\n"
           "sys.stdout.flush()\n",
    "leak": "import os, sys\nv = os.environ['TOKEN']\nprint('token=' + v, flush=True)\n"
            "print('err token=' + v, file=sys.stderr, flush=True)\n",
}


def _keygen(path: Path) -> Path:
    r = subprocess.run([sys.executable, "-m", "prisn.cli", "keygen", "--out", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return path


def _files_holding(root: Path, needle: bytes, skip: str) -> list[str]:
    """Every regular file under `root` (not under `root/skip`) whose bytes hold `needle`."""
    found = []
    for dirpath, dirs, files in os.walk(root):
        if Path(dirpath) == root and skip in dirs:
            dirs.remove(skip)
        for f in files:
            p = Path(dirpath) / f
            try:
                if needle in p.read_bytes():
                    found.append(str(p))
            except OSError:
                pass  # removed while walking (RocksDB compaction)
    return found


def _run(node: ServerProc, name: str) -> dict:
    r = node.req("POST", "/api/v1/executions", {"name": name, "timeout": 60}, timeout=95)
    assert r.status == 200, r.body
    return r.json()


def _logs(node: ServerProc, exec_id: str) -> tuple[int, Any]:
    r = node.req("GET", f"/api/v1/executions/{exec_id}/logs", timeout=20,
                 headers={"X-Prisn-Consistency": "strong"})
    return r.status, r.json()


def _follow(node: ServerProc, exec_id: str) -> list[dict]:
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=60)
    try:
        # strong: this node may not have applied the create yet (a local read would 404)
        conn.request("GET", f"/api/v1/executions/{exec_id}/logs?follow=true",
                     headers={"X-Prisn-Consistency": "strong"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        assert resp.getheader("Content-Type", "").startswith("application/x-ndjson")
        return [json.loads(line) for line in resp.read().splitlines() if line.strip()]
    finally:
        conn.close()


def test_streams_follow_secrets_and_output_surviving_its_node(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    value = f"tok-{rng.getrandbits(64):016x}-secret"
    key = _keygen(tmp_path / "cluster.key")
    nodes = start_cluster(tmp_path / "c", [*EXTRA, "--cluster-key-file", str(key)])
    try:
        leader = leader_of(nodes)
        r = leader.req("POST", "/api/v1/secrets", {"name": "s", "data": {"TOKEN": value}})
        assert r.status == 201, r.body
        for name, text in SCRIPTS.items():
            (tmp_path / f"{name}.py").write_text(text)
            body: dict[str, Any] = {"name": name, "type": "job",
                                    "source": str(tmp_path / f"{name}.py")}
            if name == "leak":
                body["secrets"] = ["s"]
            r = leader.req("POST", "/api/v1/deployments", body, timeout=15)
            assert r.status == 201, r.body

        # follow: both streams as they come, then the final status line
        r = nodes[1].req("POST", "/api/v1/executions", {"name": "slow", "async": True},
                         timeout=15)
        assert r.status == 202, r.body
        lines = _follow(nodes[2], r.json()["id"])
        out = "".join(x["data"] for x in lines if x.get("stream") == "stdout")
        err = "".join(x["data"] for x in lines if x.get("stream") == "stderr")
        assert (out, err) == ("first\n", "second\n"), lines
        assert lines[-1]["status"] == "Completed" and lines[-1]["exit_code"] == 0, lines
        assert sum("status" in x for x in lines) == 1

        # secrets: redacted in what the node proposes and in what it answers
        e = _run(nodes[0], "leak")
        assert e["status"] == "Completed", e
        for n in nodes:
            code, body = _logs(n, e["id"])
            assert code == 200, body
            assert (body["stdout"], body["stderr"]) == ("token=***\n", "err token=***\n")
            assert value not in json.dumps(body)
        lines = _follow(nodes[1], e["id"])  # terminal already: from the record
        assert "".join(x.get("data", "") for x in lines) == "token=***\nerr token=***\n"

        # a large output: the record keeps the last 64 KiB, cut at a character boundary
        e = _run(nodes[2], "big")
        assert e["status"] == "Completed", e
        code, body = _logs(nodes[0], e["id"])
        assert code == 200 and body["source"] == "record", body
        assert body["stdout_truncated"] and body["stdout"].endswith("\u00e9END\n")
        assert 60 << 10 < len(body["stdout"].encode()) <= 64 << 10
        assert set(body["stdout"][:-4]) == {"\u00e9"}  # no half character at the cut

        # exit 3, both streams; then the node that ran it dies
        e = _run(nodes[1], "both")
        assert e["status"] == "Failed" and e["exit_code"] == 3, e
        ran = next(n for n in nodes if n.node_id == e["node"])
        listing = nodes[0].req("GET", "/api/v1/executions?limit=10").json()
        assert all("stdout" not in x and "stderr" not in x for x in listing["items"])
        for i in range(8):  # --snapshot-threshold 4: every node snapshots the outputs
            r = leader_of(nodes).req("POST", "/api/v1/deployments",
                                     {"name": f"filler{i}", "source": "x"}, timeout=15)
            assert r.status == 201, r.body
        ran.kill()
        ran.wait_exit()
        rest = [n for n in nodes if n is not ran]
        for n in rest:
            code, body = _logs(n, e["id"])
            assert code == 200, body
            assert (body["stdout"], body["stderr"], body["source"]) == (
                "to stdout\n", "to stderr\n", "record"), body
            r = n.req("GET", f"/api/v1/executions/{e['id']}", timeout=10)
            assert r.json()["exit_code"] == 3 and r.json()["status"] == "Failed"
        for n in nodes:
            wait_for(lambda n=n: (n.data_dir / "snapshots").exists()
                     and any((n.data_dir / "snapshots").iterdir()), WAIT,
                     f"a snapshot on {n.node_id}")
    finally:
        for n in nodes:
            n.stop()
    for n in nodes:
        # the runner's own files hold what the process printed; nothing replicated does
        assert _files_holding(n.data_dir, value.encode(), "instances") == [], (
            n.node_id, f"seed {SEED}")
        assert value not in n.log_path.read_text(errors="replace"), n.node_id
