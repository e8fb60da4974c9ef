"""Instance output and the workload CLI on a real three-node cluster (issue 14 part 6): real
`prisn server` processes place and run a real Python script; its output, written by the
runner of the node that runs it, is read through ANOTHER node (over the peer link), with
the HTTP route and with `prisn logs`; `prisn deploy --wait`, `prisn status NAME`, `prisn
scale --wait` and `prisn delete --wait` against the real thing.

Needs the workloads wired into the server (the runner and scheduler): skipped on a server
without them."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prisn.config import ServerConfig
from tests.helpers import wait_for
from tests.procs import ServerProc, start_cluster

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif("no_workloads" not in {f.name for f in dataclasses.fields(ServerConfig)},
                       reason="this server runs no workloads yet"),
]

EXTRA = ["--node-down-after", "2s", "--stop-grace", "1s", "--write-timeout", "5s"]
WAIT = 90.0
TALKER = """\
import os
import time

print("hello from", os.environ["PRISN_INSTANCE"], "on", os.environ["PRISN_NODE"], flush=True)
print("caf\\u00e9", flush=True)
n = 0
while True:
    time.sleep(0.2)
    n += 1
    print("tick", n, flush=True)
"""


def prisn(*args: str, server: ServerProc) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISN_")}
    return subprocess.run([sys.executable, "-m", "prisn.cli", "--server",
                           f"127.0.0.1:{server.http_port}", *args], env=env,
                          capture_output=True, text=True, timeout=WAIT + 30,
                          stdin=subprocess.DEVNULL)


def instances(node: ServerProc, name: str) -> list[dict]:
    r = node.req("GET", f"/api/v1/deployments/{name}", timeout=10)
    if r.status != 200:
        return []
    st = r.json().get("status") or {}
    return st.get("instances") or []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    nodes = start_cluster(tmp_path_factory.mktemp("logs"), EXTRA)
    yield nodes
    for n in nodes:
        n.stop()


def test_logs_are_read_through_a_node_that_does_not_run_the_instance(
        cluster: list[ServerProc], tmp_path: Path) -> None:
    script = tmp_path / "talker.py"
    script.write_text(TALKER)
    p = prisn("deploy", str(script), "--name", "talker", "--type", "service", "--no-upload",
              "--wait", "--timeout", str(WAIT), server=cluster[0])
    assert p.returncode == 0, p.stdout + p.stderr
    assert "default/talker ready: 1/1 (Running)" in p.stdout
    (inst,) = instances(cluster[0], "talker")
    runs_on = inst["node"]
    other = next(n for n in cluster if n.node_id != runs_on)
    # the HTTP route of a node that does not run it: fetched over the peer link
    path = "/api/v1/deployments/talker/logs"

    def first_lines() -> dict | None:
        # strong: `other` may not have applied the placement yet (a local read would 404)
        r = other.req("GET", path, timeout=15, headers={"X-Prisn-Consistency": "strong"})
        assert r.status == 200, r.body[:300]
        body = r.json()
        return body if "café" in body["data"] else None

    body = wait_for(first_lines, WAIT, "the output through another node")
    assert body["instance"] == inst["id"] and body["node"] == runs_on
    assert body["offset"] == 0 and body["next_offset"] >= len(body["data"].encode())
    assert body["data"].startswith(f"hello from {inst['id']} on {runs_on}\ncafé\n")
    # follow: from next_offset, new output only
    r = other.req("GET", f"{path}?offset={body['next_offset']}&follow=true", timeout=15)
    more = r.json()
    assert r.status == 200 and more["offset"] == body["next_offset"]
    assert "tick" in more["data"] and more["next_offset"] > more["offset"]
    # the CLI through the other node: --tail, and status with the instance table
    p = prisn("logs", "talker", "--tail", "4096", server=other)
    assert p.returncode == 0 and "tick" in p.stdout, p.stderr
    p = prisn("logs", "talker", "--instance", "0", server=other)
    assert p.returncode == 0 and p.stdout.startswith(f"hello from {inst['id']}"), p.stderr
    p = prisn("status", "talker", server=other)
    assert p.returncode == 0, p.stderr
    row = next(line for line in p.stdout.splitlines() if line.startswith(inst["id"]))
    assert row.split()[1] == runs_on
    p = prisn("logs", "talker", "--instance", "5", server=other)
    assert p.returncode == 1 and "instance 5 of deployment default/talker" in p.stderr
    # scale and delete, waiting
    p = prisn("scale", "talker", "2", "--wait", "--timeout", str(WAIT), "-o", "json",
              server=other)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["status"]["ready_replicas"] == 2
    p = prisn("delete", "talker", "--wait", "--timeout", str(WAIT), server=other)
    assert p.returncode == 0, p.stderr
    wait_for(lambda: all(instances(n, "talker") == [] for n in cluster), WAIT, "gone")
