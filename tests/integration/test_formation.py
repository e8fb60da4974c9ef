"""Cluster formation cannot split, and joins that would lose durability are refused (issue 12
items 2-4), with real processes.

- the systemd env-file procedure (same --peers everywhere, --bootstrap on a node that is not
  the lowest address) forms ONE cluster;
- the lowest-address node of the static form, wiped while the others run, does not found a
  second cluster: it is refused as a wiped voter, and rejoins once removed;
- a joiner whose node id a member holds at another address is refused on both sides.
"""

from __future__ import annotations

import shutil

from tests.procs import ServerProc, cluster_node, free_port, wait_for

FAST = ["--heartbeat-interval", "20ms", "--election-timeout", "100ms"]


def _voters(n: ServerProc) -> int:
    return sum(x["state"] in ("leader", "follower") for x in n.status()["nodes"])


def test_env_file_procedure_forms_one_cluster_and_a_wiped_founder_never_splits(tmp_path):
    ports = [free_port() for _ in range(3)]
    peers = [f"127.0.0.1:{p}" for p in sorted(ports)]
    nodes = [cluster_node(tmp_path, f"e{i}", peers=peers, raft_port=sorted(ports)[i],
                          extra=FAST + (["--bootstrap"] if i == 1 else []))
             for i in range(3)]
    try:
        for n in reversed(nodes):  # the bootstrap node and the last one come up first
            n.start()
        for n in nodes:
            n.wait_ready(40)
        wait_for(lambda: all(_voters(n) == 3 for n in nodes), 40, "three voters")
        assert len({n.status()["cluster_id"] for n in nodes}) == 1
        assert "--bootstrap ignored" in nodes[1].log_path.read_text()
        cid = nodes[0].status()["cluster_id"]

        # wipe the lowest-address node (the static founder) while the others run
        low = nodes[0]
        low.stop()
        shutil.rmtree(low.data_dir)
        low.restart()
        wait_for(lambda: "is a voter of cluster" in low.log_path.read_text(), 30,
                 "the wiped founder refused")
        assert low.alive() and not low.ready()
        assert all(n.status()["cluster_id"] == cid for n in nodes[1:])
        assert any("refused the join of 'e0'" in n.log_path.read_text() for n in nodes[1:])
        # the documented replacement: remove it, it then rejoins the same cluster
        live = nodes[1]
        wait_for(lambda: live.req("DELETE", "/api/v1/cluster/nodes/e0").status in (204, 404),
                 30, "e0 removed")
        low.wait_ready(40)
        # the rejoined node learns the cluster id from the configuration it applies, which can
        # trail its first ready answer by a moment
        wait_for(lambda: low.status()["cluster_id"] == cid, 20, "e0 in the same cluster")
        wait_for(lambda: _voters(live) == 3, 40, "e0 a voter again")
    finally:
        for n in nodes:
            n.stop()


def test_duplicate_node_id_is_refused_on_both_sides(tmp_path):
    a = cluster_node(tmp_path, "d1", bootstrap=True, extra=FAST).start()
    dup = cluster_node(tmp_path / "other", "d1", peers=[a.raft_addr], extra=FAST)
    try:
        a.wait_ready(30)
        dup.start()
        wait_for(lambda: "is taken by the member at" in dup.log_path.read_text(), 30,
                 "the joiner's refusal")
        wait_for(lambda: "refused the join of 'd1'" in a.log_path.read_text(), 10,
                 "the leader's refusal")
        st = a.status()
        assert [(x["id"], x["address"]) for x in st["nodes"]] == [("d1", a.raft_addr)]
        assert len([ln for ln in dup.log_path.read_text().splitlines()
                    if "join refused" in ln]) == 1  # logged once
    finally:
        dup.stop()
        a.stop()


def test_startup_failures_sighup_and_file_modes(tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys

    from tests.procs import single_node

    # --cluster alone: bad configuration, exit 2, nothing created
    r = subprocess.run([sys.executable, "-m", "prisn.cli", "server", "--cluster", "--node-id",
                        "x", "--data-dir", str(tmp_path / "nope"), "--bind", "127.0.0.1:1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and not (tmp_path / "nope").exists(), r.stderr
    # a port in use: one line naming the address, exit 1, no traceback
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "prisn.cli", "server", "--node-id", "x",
                            "--data-dir", str(tmp_path / "busy"), "--bind",
                            f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr.splitlines()[-1]
    # a malformed --server URL: one usage line, exit 2
    r = subprocess.run([sys.executable, "-m", "prisn.cli", "--server", "http://[::1", "status"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    # SIGHUP is logged and the node keeps serving; data dir 0700, files 0600 whatever the umask
    old = os.umask(0o022)
    try:
        n = single_node(tmp_path).start()
    finally:
        os.umask(old)
    try:
        n.wait_ready(30)
        n.kill(signal.SIGHUP)
        wait_for(lambda: "received SIGHUP" in n.log_path.read_text(), 20, "SIGHUP logged")
        assert n.alive() and n.req("POST", "/api/v1/deployments",
                                   {"name": "h", "source": "x"}).status in (200, 201)
        assert "no request rate limit" not in n.log_path.read_text()
        assert (n.data_dir.stat().st_mode & 0o777) == 0o700
        for p in n.data_dir.rglob("*"):
            assert (p.stat().st_mode & 0o077) == 0, p
    finally:
        assert n.stop() == 0


def test_api_key_file_keygen_fingerprint_and_solo_election(tmp_path):
    import subprocess
    import sys

    from tests.procs import single_node

    r = subprocess.run([sys.executable, "-m", "prisn.cli", "keygen"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "fingerprint" in r.stderr and "fingerprint" not in r.stdout
    key = tmp_path / "api.key"
    key.write_text("k" * 24 + "\n")
    key.chmod(0o600)
    n = single_node(tmp_path, "solo", extra=["--api-key-file", str(key)]).start()
    try:
        n.wait_ready(30)
        assert n.req("GET", "/api/v1/deployments").status == 401
        auth = {"Authorization": "Bearer " + "k" * 24}
        assert n.req("GET", "/api/v1/deployments", headers=auth).status == 200
        r2 = n.req("POST", "/api/v1/cluster/election", headers=auth)
        assert r2.status == 409 and "no other voter" in r2.json()["message"], r2.body
        assert "raft: leader is solo" in n.log_path.read_text()
    finally:
        assert n.stop() == 0
