"""Artifacts on a real three-node cluster (issue 14 part 1): an upload on a follower is
replicated to every node, `prisn deploy DIR` packs and uploads and creates the deployment,
a snapshot carries the artifact to a restarted node, and deleting the deployment collects
the artifact on every node."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from prisn.workloads.artifacts import ArtifactFile, digest_of, pack, pack_dir
from tests.procs import ServerProc, leader_of, start_cluster, wait_for

EXTRA = ["--write-timeout", "5s", "--election-timeout", "500ms", "--snapshot-threshold", "4",
         "--snapshot-interval", "0", "--max-artifact-bytes", "1MiB"]
OCTET = {"Content-Type": "application/octet-stream"}
WAIT = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    nodes = start_cluster(tmp_path_factory.mktemp("artifacts"), EXTRA)
    yield nodes
    for n in nodes:
        n.stop()


def _get(node: ServerProc, digest: str) -> bytes | None:
    r = node.req("GET", f"/api/v1/artifacts/{digest}", timeout=5)
    if r.status == 404:
        return None
    assert r.status == 200, (r.status, r.body[:200])
    return r.body


def _cli(*args: str, server: ServerProc, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PRISN_SERVER"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return subprocess.run([sys.executable, "-m", "prisn.cli", "--server",
                           f"127.0.0.1:{server.http_port}", *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=cwd)


def test_upload_on_a_follower_reaches_every_node(cluster: list[ServerProc]) -> None:
    leader = leader_of(cluster)
    follower = next(n for n in cluster if n is not leader)
    data = pack([ArtifactFile("main.py", False, b"print('hello from an artifact')\n")])
    digest = digest_of(data)
    r = follower.req("POST", "/api/v1/artifacts", data,
                     headers={**OCTET, "X-Prisn-Digest": digest}, timeout=30)
    assert r.status == 201, r.body
    assert r.json()["digest"] == digest and r.json()["size"] == len(data)
    for n in cluster:
        assert wait_for(lambda n=n: _get(n, digest) == data, WAIT, f"artifact on {n.node_id}")
    # the same bytes again: stored once
    r = leader.req("POST", "/api/v1/artifacts", data, headers=OCTET, timeout=30)
    assert r.status == 200, r.body
    listing = follower.req("GET", "/api/v1/artifacts",
                           headers={"X-Prisn-Consistency": "strong"}).json()
    assert [a["digest"] for a in listing["items"]].count(digest) == 1
    # a corrupted upload and an oversize one change nothing
    r = follower.req("POST", "/api/v1/artifacts", data,
                     headers={**OCTET, "X-Prisn-Digest": "0" * 64})
    assert r.status == 400 and "digest mismatch" in r.json()["message"]
    # over --max-artifact-bytes: refused from the Content-Length, before the body is read
    with socket.create_connection(("127.0.0.1", follower.http_port), timeout=30) as s:
        s.sendall(b"POST /api/v1/artifacts HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/octet-stream\r\n"
                  b"Content-Length: 1200000\r\n\r\n")
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"message"' in answer and b"1048576" in answer


def test_deploy_dir_then_delete_collects_everywhere(cluster: list[ServerProc],
                                                    tmp_path: Path) -> None:
    leader = leader_of(cluster)
    follower = next(n for n in cluster if n is not leader)
    app = tmp_path / "webapp"
    (app / "lib").mkdir(parents=True)
    (app / "main.py").write_text("import lib.util\nprint(lib.util.X)\n")
    (app / "lib" / "util.py").write_text("X = 42\n")
    data, entry = pack_dir(app)
    digest = digest_of(data)
    p = _cli("deploy", str(app), "--port", "18080", "--replicas", "2", "--env", "MODE=prod",
             "-o", "json", server=follower, cwd=tmp_path)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert '"artifact": "' + digest in p.stdout and '"source": "main.py"' in p.stdout
    # deploying again (same code) updates in place; the artifact is still stored once
    p = _cli("deploy", str(app), "--port", "18080", "--replicas", "3", server=follower,
             cwd=tmp_path)
    assert p.returncode == 0 and "updated" in p.stdout and "already stored" in p.stdout, \
        (p.stdout, p.stderr)
    for n in cluster:
        def seen(n: ServerProc = n) -> bool:
            dep = n.req("GET", "/api/v1/deployments/webapp").json()
            return dep.get("artifact") == digest and dep.get("replicas") == 3 and \
                _get(n, digest) == data
        wait_for(seen, WAIT, f"deployment and artifact on {n.node_id}")
    info = leader.req("GET", "/api/v1/artifacts").json()["items"]
    assert [a["refs"] for a in info if a["digest"] == digest] == [1]

    # a restarted node gets the artifact back from its snapshot and log
    victim = next(n for n in cluster if n is not leader and n is not follower)
    victim.stop()
    for i in range(6):  # enough writes for snapshots (--snapshot-threshold 4)
        r = leader.req("POST", "/api/v1/deployments", {"name": f"filler{i}", "source": "x"})
        assert r.status == 201, r.body
    victim.restart().wait_ready(WAIT)
    wait_for(lambda: _get(victim, digest) == data, WAIT, "artifact after restart")

    p = _cli("delete", "webapp", server=follower, cwd=tmp_path)
    assert p.returncode == 0, (p.stdout, p.stderr)
    for n in cluster:
        wait_for(lambda n=n: _get(n, digest) is None, WAIT, f"artifact gone on {n.node_id}")
    assert entry == "main.py"


def test_deploy_refuses_what_it_cannot_pack_before_any_request(tmp_path: Path) -> None:
    """No server is listening at all: the packing error comes first, and says why."""
    empty = tmp_path / "noentry"
    empty.mkdir()
    (empty / "app.rb").write_text("puts 1\n")
    nobody = ServerProc("none", tmp_path, 1, 0, [])  # port 1: nothing answers there
    p = _cli("deploy", str(empty), server=nobody, cwd=tmp_path)
    assert p.returncode == 1 and "cannot pack" in p.stderr and "--entry" in p.stderr, p.stderr
    p = _cli("deploy", "not-here.py", "--entry", "x.py", server=nobody, cwd=tmp_path)
    assert p.returncode == 2 and "--entry needs SOURCE" in p.stderr, p.stderr
