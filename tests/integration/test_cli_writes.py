"""The CLI's writes and `prisn cluster remove` (issue 16, item 6), as real CLI processes.

- Every write carries an ``Idempotency-Key`` and a 503 is retried once with the same key
  (what the server's 503 message asks for); reads are neither keyed nor retried. Shown
  against a scripted HTTP server on a real socket (a real prisn server cannot be made to
  answer exactly one 503 on demand), and the key's effect against a real node: the retry of
  a create that did commit gets the first answer, not 409.
- `prisn cluster remove` asks on a terminal (a pseudo-terminal here), not when stdin is not
  a terminal, `--yes` skips the question, and `--wait` returns once the member is gone
  from the list the asked node reports; a 503 followed by a 404 means it was removed.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from prisn.client import Client
from tests.procs import (
    ServerProc,
    leader_of,
    on_a_terminal,
    single_node,
    start_cluster,
    wait_for,
)
from tests.scripted import DEP, UNAVAILABLE, Script, prisn

FAST = ["--write-timeout", "2s", "--election-timeout", "500ms"]

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def script():
    srv = Script()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()




def test_a_write_is_keyed_and_a_503_retried_once_with_the_same_key(script) -> None:
    script.answers[("POST", "/api/v1/deployments")] = [UNAVAILABLE, (201, {}, DEP)]
    p = prisn("deploy", "app.py", server=script.addr)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("created default/app")
    (m1, _, h1), (m2, _, h2) = script.seen
    assert m1 == m2 == "POST"
    assert len(h1["idempotency-key"]) >= 16 and h1["idempotency-key"] == h2["idempotency-key"]


def test_two_503s_fail_after_one_retry(script) -> None:
    script.answers[("POST", "/api/v1/deployments/app/scale")] = [UNAVAILABLE, UNAVAILABLE,
                                                                 (200, {}, DEP)]
    p = prisn("scale", "app", "3", server=script.addr)
    assert p.returncode == 1
    err = p.stderr.strip()
    assert "\n" not in err and err.startswith("prisn: error: no quorum is available"), err
    assert "HTTP 503, after one retry with the same Idempotency-Key" in err
    assert len(script.seen) == 2  # one retry, not more
    assert script.seen[0][2]["idempotency-key"] == script.seen[1][2]["idempotency-key"]


def test_each_write_gets_its_own_key_and_reads_none(script) -> None:
    script.answers[("DELETE", "/api/v1/deployments/app")] = [(204, {}, None), (204, {}, None)]
    script.answers[("GET", "/api/v1/deployments/app")] = [UNAVAILABLE, (200, {}, DEP)]
    assert prisn("delete", "app", server=script.addr).returncode == 0
    assert prisn("delete", "app", server=script.addr).returncode == 0
    p = prisn("status", "app", server=script.addr)
    assert p.returncode == 1 and "HTTP 503)" in p.stderr  # a read is not retried
    keys = [h.get("idempotency-key") for _m, _p, h in script.seen]
    assert keys[0] and keys[1] and keys[0] != keys[1] and keys[2] is None
    assert len(script.seen) == 3


def test_remove_503_then_404_means_removed(script) -> None:
    path = "/api/v1/cluster/nodes/n3"
    script.answers[("DELETE", path)] = [UNAVAILABLE, (404, {}, {
        "error": "Not Found", "message": "unknown node n3"})]
    p = prisn("cluster", "remove", "n3", server=script.addr)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "removed n3 from the cluster"
    # a plain 404 (no retry) is still an error
    script.answers[("DELETE", path)] = [(404, {}, {"error": "Not Found",
                                                   "message": "unknown node n3"})]
    p = prisn("cluster", "remove", "n3", server=script.addr)
    assert p.returncode == 1 and "unknown node n3 (HTTP 404)" in p.stderr


# ---------------------------------------------------------------------- real servers
def test_a_retried_create_gets_the_first_answer(tmp_path) -> None:
    """What the retry relies on: a create repeated with its key answers as the first did."""
    n = single_node(tmp_path, "solo", FAST).start()
    try:
        n.wait_ready()
        c = Client(f"127.0.0.1:{n.http_port}")
        key = {"Idempotency-Key": "cli-retry-0001"}
        first = c.request("POST", "/api/v1/deployments", {"name": "k", "source": "x"},
                          headers=key)
        again = c.request("POST", "/api/v1/deployments", {"name": "k", "source": "x"},
                          headers=key)
        assert first.status == again.status == 201 and first.body == again.body
    finally:
        n.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    nodes = start_cluster(tmp_path_factory.mktemp("cli-remove"), FAST)
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def members(n: ServerProc) -> set[str]:
    return {x["id"] for x in n.status()["nodes"]}


def test_remove_asks_on_a_terminal(cluster) -> None:
    leader = leader_of(cluster)
    a, b = [n for n in cluster if n is not leader]
    via = f"127.0.0.1:{a.http_port}"
    # "no" on a terminal: nothing removed
    code, shown = on_a_terminal(["--server", via, "cluster", "remove", b.node_id], "n")
    assert code == 1 and f"Remove {b.node_id} from the cluster" in shown, shown
    assert f"prisn: error: {b.node_id} not removed (answered no)" in shown
    assert b.node_id in members(leader) and b.node_id in members(a)
    # --yes on a terminal: no question; --wait: gone from the list the asked node reports
    code, shown = on_a_terminal(["--server", via, "cluster", "remove", b.node_id, "--yes",
                                 "--wait"], None)
    assert code == 0, shown
    assert "[y/N]" not in shown and f"removed {b.node_id} from the cluster" in shown
    assert b.node_id not in members(a)  # --wait returned only once a no longer lists it
    wait_for(lambda: b.node_id not in members(leader), 15, "leader's list without it")
    b.stop()
    # "y" on a terminal removes; stdin not a terminal never asks (exit 0 with no input)
    code, shown = on_a_terminal(["--server", f"127.0.0.1:{leader.http_port}", "cluster",
                                 "remove", a.node_id, "--wait"], "y")
    assert code == 0 and "[y/N]" in shown and f"removed {a.node_id}" in shown, shown
    assert members(leader) == {leader.node_id}
    a.stop()
    p = prisn("cluster", "remove", a.node_id, server=f"127.0.0.1:{leader.http_port}")
    assert p.returncode == 1 and "HTTP 404" in p.stderr and "[y/N]" not in p.stderr


def test_election_wait_asks_again_when_the_transfer_was_abandoned(script) -> None:
    """operations.md: a transfer the target does not win within an election timeout is
    abandoned and the old leader keeps leading. `--wait` then asks again (every
    ELECTION_RETRY_S) until --timeout, instead of waiting out the whole timeout on a transfer
    that no longer runs. Here the scripted leader changes only after a second request."""
    started = (202, {}, {"message": "leadership transfer to n2 started", "target": "n2"})
    script.answers[("POST", "/api/v1/cluster/election")] = [started, started]

    def status(srv: Script) -> tuple[int, dict[str, str], Any]:
        asked = sum(1 for m, p, _h in srv.seen if m == "POST")
        return 200, {}, {"leader": "n2" if asked >= 2 else "n1", "nodes": []}
    script.answers[("GET", "/api/v1/cluster/status")] = status
    p = prisn("--timeout", "20", "cluster", "election", "n2", "--wait", server=script.addr)
    assert p.returncode == 0, p.stderr
    assert "n2 is now the leader" in p.stdout
    assert sum(1 for m, _p, _h in script.seen if m == "POST") == 2


def test_election_wait_stops_on_a_final_refusal(script) -> None:
    """A 404 to a repeated request (the target was removed meanwhile) ends the wait at once
    with the server's message."""
    script.answers[("POST", "/api/v1/cluster/election")] = [
        (202, {}, {"message": "leadership transfer to n2 started", "target": "n2"}),
        (404, {}, {"error": "Not Found", "message": "unknown node n2"})]
    script.answers[("GET", "/api/v1/cluster/status")] = lambda srv: (
        200, {}, {"leader": "n1", "nodes": []})
    p = prisn("--timeout", "30", "cluster", "election", "n2", "--wait", server=script.addr)
    assert p.returncode == 1 and "unknown node n2" in p.stderr, p.stderr
    assert sum(1 for m, _p, _h in script.seen if m == "POST") == 2
