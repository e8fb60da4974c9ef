"""The operator CLI (`prisn cluster ...`, `prisn deploy/status/scale/delete`) run as a real
subprocess against a live single node and a live three-node cluster (issue 6, item 6).

One single node and one cluster per module (module-scoped fixtures) to keep the suite light.
The cluster tests run in file order; the last one (`test_cluster_remove_then_unhealthy`)
removes and kills members, so it must stay last.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.procs import (
    ServerProc,
    free_port,
    leader_of,
    single_node,
    start_cluster,
    wait_for,
)

# A longer election timeout than the default 150ms: these tests are about the CLI, and the
# machine running them may be busy; a starved leader should not step down mid-test.
FAST = ["--write-timeout", "2s", "--election-timeout", "500ms"]
CLI_TIMEOUT = 60  # seconds a CLI subprocess may take before the test fails


def prisn(*args: str, server: ServerProc | str | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `prisn ARGS` as a subprocess. `server` is passed as a leading global --server;
    PRISN_SERVER is removed from the environment unless `env` sets it."""
    e = {k: v for k, v in os.environ.items() if k != "PRISN_SERVER"}
    e.update(env or {})
    pre: list[str] = []
    if server is not None:
        pre = ["--server", server if isinstance(server, str) else addr(server)]
    # stdin not a terminal (as in a script), even when pytest runs on one: no prompts
    return subprocess.run([sys.executable, "-m", "prisn.cli", *pre, *args], env=e,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT,
                          stdin=subprocess.DEVNULL)


def addr(n: ServerProc) -> str:
    return f"127.0.0.1:{n.http_port}"


def ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    return p.stdout


def fails(p: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """Assert exit `code` and a one-line `prisn: error:` message containing `needles`."""
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    err = p.stderr.strip()
    assert err.startswith("prisn: error: ") and "\n" not in err, err
    for s in needles:
        assert s in err, (s, err)
    return err


def js(p: subprocess.CompletedProcess) -> object:
    return json.loads(ok(p))


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = single_node(tmp_path_factory.mktemp("cli-single"), "solo").start()
    try:
        n.wait_ready()
        yield n
    finally:
        n.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    nodes = start_cluster(tmp_path_factory.mktemp("cli-cluster"), FAST)
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()


# ---------------------------------------------------------------------- single node
def test_deployment_lifecycle_table_and_json(node):
    out = ok(prisn("deploy", "app.py", "--port", "8080", "--replicas", "2", "--env", "MODE=prod",
                   "--env", "EMPTY=", "--arg", "--verbose", "--arg", "two words",
                   "--runtime", "python3", server=node))
    assert out.strip() == "created default/app (service, 2 replicas, port 8080, generation 1)"
    # name given, namespace, schedule; -o json is the server's deployment
    d = js(prisn("deploy", "echo hi", "--name", "nightly", "--namespace", "ops",
                 "--schedule", "0 3 * * *", "-o", "json", server=node))
    assert d["name"] == "nightly" and d["namespace"] == "ops" and d["type"] == "cronjob"
    assert d["schedule"] == "0 3 * * *" and d["source"] == "echo hi" and d["generation"] == 1
    app = js(prisn("status", "app", "-o", "json", server=node))
    assert app["env"] == {"MODE": "prod", "EMPTY": ""}
    assert app["args"] == ["--verbose", "two words"]
    assert (app["port"], app["replicas"], app["runtime"], app["source"]) == (8080, 2, "python3",
                                                                             "app.py")
    # list: table and JSON
    table = ok(prisn("status", server=node)).splitlines()
    assert table[0].split() == ["NAMESPACE", "NAME", "TYPE", "REPLICAS", "READY", "PHASE",
                                "PORT", "RUNTIME", "SCHEDULE", "GEN", "UPDATED"]
    rows = {tuple(line.split()[:4]) for line in table[1:]}
    assert rows == {("default", "app", "service", "2"), ("ops", "nightly", "cronjob", "1")}
    listing = js(prisn("status", "-o", "json", server=node))
    assert listing["total"] == listing["count"] == 2
    assert {(x["namespace"], x["name"]) for x in listing["items"]} == {("default", "app"),
                                                                      ("ops", "nightly")}
    only_ops = js(prisn("status", "--namespace", "ops", "-o", "json", server=node))
    assert [x["name"] for x in only_ops["items"]] == ["nightly"]
    detail = ok(prisn("status", "nightly", "--namespace", "ops", "--strong", server=node))
    assert "name:" in detail and "nightly" in detail and "schedule:   0 3 * * *" in detail
    # scale: table then JSON, generation bumps
    out = ok(prisn("scale", "app", "5", server=node))
    assert out.strip() == "scaled default/app (service, 5 replicas, port 8080, generation 2)"
    d = js(prisn("scale", "nightly", "0", "--namespace", "ops", "-o", "json", server=node))
    assert d["replicas"] == 0 and d["generation"] == 2
    # delete
    assert ok(prisn("delete", "app", server=node)).strip() == "deleted default/app"
    assert js(prisn("delete", "nightly", "--namespace", "ops", "-o", "json", server=node)) == {
        "deleted": "nightly", "namespace": "ops"}
    assert ok(prisn("status", server=node)).strip() == "no deployments"
    assert js(prisn("status", "-o", "json", server=node))["items"] == []


def test_server_errors_are_shown_with_exit_1(node):
    ok(prisn("deploy", "x", "--name", "dup", server=node))
    fails(prisn("deploy", "y", "--name", "dup", server=node), 1,
          "deployment default/dup already exists", "HTTP 409")
    fails(prisn("deploy", "x", "--name", "big", "--replicas", "5000", server=node), 1,
          "replicas: must be between 0 and 1000", "HTTP 400")
    fails(prisn("deploy", "x", "--name", "np", "--port", "80", server=node), 1,
          "port: must be 0 or between 1024 and 65535", "HTTP 400")
    fails(prisn("deploy", "x", "--name", "ev", "--env", "1BAD=x", server=node), 1,
          "env: key '1BAD'", "HTTP 400")
    fails(prisn("deploy", "x", "--name", "bad name", server=node), 1, "name:", "HTTP 400")
    fails(prisn("scale", "dup", "5000", server=node), 1, "replicas: must be between 0 and 1000")
    fails(prisn("delete", "ghost", server=node), 1, "deployment default/ghost not found",
          "HTTP 404")
    fails(prisn("scale", "ghost", "1", server=node), 1, "not found", "HTTP 404")
    fails(prisn("status", "ghost", server=node), 1, "deployment ghost not found", "HTTP 404")
    fails(prisn("cluster", "remove", "ghost", server=node), 1, "unknown node ghost", "HTTP 404")
    fails(prisn("cluster", "election", "ghost", server=node), 1, "unknown node ghost")
    # nothing refused was written
    names = [x["name"] for x in js(prisn("status", "-o", "json", server=node))["items"]]
    assert names == ["dup"]
    ok(prisn("delete", "dup", server=node))


def test_bad_usage_exits_2_without_contacting_a_server(node):
    fails(prisn("deploy", server=node), 2, "Missing argument")
    fails(prisn("deploy", "x", "--env", "NOEQUALS", server=node), 2, "'--env'", "KEY=VALUE")
    fails(prisn("deploy", "x", "--replicas", "many", server=node), 2, "--replicas")
    fails(prisn("deploy", "some script text", server=node), 2, "--name is required")
    fails(prisn("scale", "app", server=node), 2, "Missing argument")
    fails(prisn("status", "-o", "yaml", server=node), 2, "--output")
    fails(prisn("cluster", "bogus", server=node), 2, "No such command")
    fails(prisn("status", server="127.0.0.1:99999"), 2, "--server has a bad port")
    fails(prisn("status", server="ftp://127.0.0.1:1"), 2, "http:// or https://")
    fails(prisn("status", env={"PRISN_SERVER": "not a host"}), 2, "--server")
    assert js(prisn("status", "-o", "json", server=node))["items"] == []


def test_no_server_answers():
    port = free_port()  # nothing listens there
    err = fails(prisn("status", server=f"127.0.0.1:{port}"), 1)
    assert err == (f"prisn: error: cannot reach prisn server at http://127.0.0.1:{port}: "
                   "connection refused")
    fails(prisn("cluster", "health", server=f"127.0.0.1:{port}"), 1, "cannot reach")
    fails(prisn("deploy", "x", "--name", "a", env={"PRISN_SERVER": f"127.0.0.1:{port}"}), 1,
          f"cannot reach prisn server at http://127.0.0.1:{port}: connection refused")
    # a server that accepts connections but never answers: --timeout bounds the wait
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        mport = mute.getsockname()[1]
        t0 = time.monotonic()
        fails(prisn("--timeout", "0.5", "status", server=f"127.0.0.1:{mport}"), 1,
              f"cannot reach prisn server at http://127.0.0.1:{mport}: no answer within 0.5s")
        fails(prisn("scale", "a", "1", "--timeout", "0.5", server=f"127.0.0.1:{mport}"), 1,
              "no answer within 0.5s (the request may still be applied)")
        assert time.monotonic() - t0 < 20


def test_an_http_server_that_is_not_prisn():
    """A 200 that is not a JSON object, and an HTML 404, give one clear line (exit 1)."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            code, body = (200, b"<html>hello</html>") if self.path.startswith(
                "/api/v1/deployments") else (404, b"<html>Not here</html>")
            self.send_response(code)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        here = f"127.0.0.1:{srv.server_address[1]}"
        fails(prisn("status", server=here), 1, "unexpected answer (HTTP 200, not a JSON object)")
        fails(prisn("cluster", "status", server=here), 1, "Not Found: <html>Not here</html>",
              "HTTP 404")
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def test_server_selection_env_flag_url_and_position(node):
    here = addr(node)
    dead = f"127.0.0.1:{free_port()}"
    # PRISN_SERVER alone
    st = js(prisn("cluster", "status", "-o", "json", env={"PRISN_SERVER": here}))
    assert st["node_id"] == "solo"
    # the flag beats the variable, at the root, on the group or on the command
    env = {"PRISN_SERVER": dead}
    assert js(prisn("--server", here, "-o", "json", "cluster", "status", env=env))["leader"] == "solo"
    assert js(prisn("cluster", "--server", here, "status", "-o", "json", env=env))["leader"] == "solo"
    assert js(prisn("cluster", "status", "--server", here, "-o", "json", env=env))["leader"] == "solo"
    # the innermost flag wins
    fails(prisn("--server", here, "status", "--server", dead), 1, f"http://{dead}")
    # URL forms, with and without a trailing slash
    assert js(prisn("status", "-o", "json", server=f"http://{here}/"))["items"] == []
    assert js(prisn("status", "-o", "json", server=f"http://{here}"))["items"] == []
    # without any server setting the default is localhost:7331
    p = prisn("status")
    if p.returncode != 0:  # (unless something on this machine serves it)
        fails(p, 1, "cannot reach prisn server at http://localhost:7331")


def test_single_node_cluster_commands(node):
    lines = ok(prisn("cluster", "status", server=node)).splitlines()
    assert lines[0].split() == ["NODE", "ADDRESS", "STATE", "LAG"]
    parts = lines[1].split()
    assert parts[:2] == ["solo", "*"] and parts[3] == "leader" and parts[4] == "-"
    assert "leader: solo" in lines[-1] and "healthy" in lines[-1]
    out = ok(prisn("cluster", "health", server=node))
    assert out.startswith("cluster healthy: leader solo, 1 voter, quorum 1")
    h = js(prisn("cluster", "health", "-o", "json", server=node))
    assert h["healthy"] is True and h["leader"] == "solo"
    # issue 12: no 202 "transfer started" on a one-voter cluster
    fails(prisn("cluster", "election", "solo", server=node), 1, "no other voter", "HTTP 409")


# ---------------------------------------------------------------------- three nodes
def test_cluster_status_on_every_node(cluster):
    leader = leader_of(cluster)
    for n in cluster:
        st = js(prisn("cluster", "status", "-o", "json", server=n))
        assert st["leader"] == leader.node_id and st["node_id"] == n.node_id
        assert {x["id"]: x["address"] for x in st["nodes"]} == {m.node_id: m.raft_addr
                                                                for m in cluster}
        lines = ok(prisn("cluster", "status", server=n)).splitlines()
        assert lines[0].split() == ["NODE", "ADDRESS", "STATE", "LAG"]
        rows = {line.split()[0]: line.split() for line in lines[1:4]}
        assert set(rows) == {"n1", "n2", "n3"}
        assert rows[leader.node_id][1] == "*" and rows[leader.node_id][3] == "leader"
        assert f"leader: {leader.node_id}" in lines[-1] and f"answered by {n.node_id}" in lines[-1]
        for nid, row in rows.items():
            if nid == leader.node_id:
                continue
            assert row[1] == next(m.raft_addr for m in cluster if m.node_id == nid)
            if n is leader:  # the leader knows each follower's lag, in entries
                assert row[2] in ("follower", "unreachable") and row[3].isdigit(), row
            else:  # a follower does not
                assert row[-1] == "-", row


def test_cluster_health_and_writes_through_any_node(cluster):
    for n in cluster:
        out = ok(prisn("cluster", "health", server=n))
        assert out.startswith("cluster healthy: leader ") and "3 voters, quorum 2" in out
        h = js(prisn("cluster", "health", "-o", "json", server=n))
        assert h["healthy"] is True and h["voters"] == 3 and h["quorum"] == 2
    leader = leader_of(cluster)
    follower = next(n for n in cluster if n is not leader)
    other = next(n for n in cluster if n not in (leader, follower))
    d = js(prisn("deploy", "svc.py", "--port", "9000", "-o", "json", server=follower))
    assert d["name"] == "svc" and d["type"] == "service"
    fails(prisn("deploy", "svc.py", server=other), 1, "already exists", "HTTP 409")
    assert js(prisn("status", "svc", "--strong", "-o", "json", server=other))["id"] == d["id"]
    assert js(prisn("scale", "svc", "3", "-o", "json", server=other))["replicas"] == 3
    ok(prisn("delete", "svc", server=leader))
    fails(prisn("status", "svc", "--strong", server=follower), 1, "not found", "HTTP 404")


def test_cluster_election_to_any_member_from_any_node(cluster):
    leader = leader_of(cluster)
    target, via = [n for n in cluster if n is not leader]
    # asked on a node that is neither the leader nor the target
    out = ok(prisn("cluster", "election", target.node_id, "--wait", server=via))
    assert out.strip() == f"{target.node_id} is now the leader"
    assert leader_of(cluster) is target
    # asked on the target itself, without waiting; JSON answer
    back = leader
    r = js(prisn("cluster", "election", back.node_id, "-o", "json", server=back))
    assert r["target"] == back.node_id and "leadership transfer" in r["message"]
    wait_for(lambda: leader_of(cluster) is back, 15, f"{back.node_id} leads again")
    # a member that does not exist
    fails(prisn("cluster", "election", "n9", server=via), 1, "unknown node n9", "HTTP 404")


def test_cluster_remove_then_unhealthy(cluster):
    """Last test of the module: removes one member and kills another."""
    leader = leader_of(cluster)
    victim, survivor = [n for n in cluster if n is not leader]
    rest = [leader, survivor]

    def removed() -> bool:
        p = prisn("cluster", "remove", victim.node_id, server=survivor)
        if p.returncode == 0:
            assert p.stdout.strip() == f"removed {victim.node_id} from the cluster"
            return True
        # 503 "outcome unknown" (leadership changed meanwhile) is a legitimate answer: retry;
        # a retry after a removal that did commit answers 404
        fails(p, 1, "HTTP 503" if "503" in p.stderr else f"unknown node {victim.node_id}")
        return "404" in p.stderr

    wait_for(removed, 30, f"{victim.node_id} removed", interval=0.2)
    for n in rest:
        wait_for(lambda n=n: {x["id"] for x in n.status()["nodes"]} == {m.node_id for m in rest},
                 15, "membership without the victim")
    victim.stop()
    st = js(prisn("cluster", "status", "-o", "json", server=leader))
    assert {x["id"] for x in st["nodes"]} == {leader.node_id, survivor.node_id}
    fails(prisn("cluster", "remove", victim.node_id, "-o", "json", server=leader), 1,
          f"unknown node {victim.node_id}", "HTTP 404")
    assert "2 voters, quorum 2" in ok(prisn("cluster", "health", server=leader))
    # kill the only other voter: the leader loses its quorum and steps down
    survivor.kill(signal.SIGKILL)
    survivor.wait_exit()
    wait_for(lambda: prisn("cluster", "health", server=leader).returncode == 1, 15,
             "health reports the lost quorum")
    p = prisn("cluster", "health", server=leader)
    assert p.returncode == 1 and p.stdout.startswith("cluster unhealthy: "), p
    assert "2 voters, quorum 2" in p.stdout and survivor.node_id in p.stdout
    h = json.loads(prisn("cluster", "health", "-o", "json", server=leader).stdout)
    assert h["healthy"] is False and h["message"].startswith("cluster unhealthy")
    # the status still answers (exit 0) and says so
    assert "UNHEALTHY" in ok(prisn("cluster", "status", server=leader))


# ---------------------------------------------------------------------- docs
def test_docs_list_every_flag_and_command():
    """docs/configuration.md names every `prisn server` flag with its variable, and the
    operator options; docs/operations.md every operator command."""
    from pathlib import Path

    from prisn.cli import cli

    docs = Path(__file__).resolve().parents[2] / "docs"
    conf = (docs / "configuration.md").read_text()
    server = cli.commands["server"]
    for p in server.params:
        if p.name == "help":
            continue
        flag = max(p.opts, key=len)
        row = next((line for line in conf.splitlines() if line.startswith(f"| `{flag}` |")), "")
        assert f"`{p.envvar}`" in row, f"{flag} / {p.envvar} missing in configuration.md"
        if p.default not in (None, "", False):
            assert f"`{p.default}`" in row, f"default of {flag} ({p.default}) not documented"
    for opt in ("`--server`", "`PRISN_SERVER`", "`localhost:7331`", "`--output`", "`--timeout`",
                "`--ca-file`", "`PRISN_CA_FILE`", "`--token`", "`PRISN_TOKEN`"):
        assert opt in conf
    ops = (docs / "operations.md").read_text()
    for cmd in ("prisn cluster status", "prisn cluster health", "prisn cluster remove",
                "prisn cluster election", "prisn deploy", "prisn status", "prisn scale",
                "prisn delete", "prisn keygen"):
        assert cmd in ops, cmd
