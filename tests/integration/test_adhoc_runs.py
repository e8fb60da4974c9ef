"""Ad-hoc executions on a real three-node cluster (issue 15: `prisn run SCRIPT`, inline
`source`): a local script uploaded by the CLI as an artifact runs once on a node the leader
picks, `--wait` exits with its exit code, it is listed by `prisn executions` and its output is
readable from any node; an inline source posted with `async: true` answers 202 and then
completes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.procs import CLI_TIMEOUT, ServerProc, start_cluster, wait_for

pytestmark = pytest.mark.timeout(300)

EXTRA = ["--node-down-after", "2s", "--stop-grace", "1s", "--write-timeout", "5s"]
WAIT = 60.0
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    nodes = start_cluster(tmp_path_factory.mktemp("adhoc"), EXTRA)
    yield nodes
    for n in nodes:
        n.stop()


def prisn_in(cwd: Path, *args: str, server: str) -> subprocess.CompletedProcess:
    """The CLI as a subprocess run from `cwd` (so ``./script.py`` is relative to it), on this
    checkout's code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISN_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "prisn.cli", "--server", server, *args],
                          env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT + WAIT, stdin=subprocess.DEVNULL)


def execution(node: ServerProc, exec_id: str) -> dict:
    """The execution as a linearizable read: a node other than the one that answered the
    POST may not have applied it yet (a default read is local)."""
    r = node.req("GET", f"/api/v1/executions/{exec_id}", timeout=10,
                 headers={"X-Prisn-Consistency": "strong"})
    assert r.status == 200, r.body
    return r.json()


def test_prisn_run_script_wait_exits_with_the_scripts_code(
        cluster: list[ServerProc], tmp_path: Path) -> None:
    (tmp_path / "script.py").write_text(
        "import os, sys\nprint('adhoc says', os.environ.get('GREETING'), sys.argv[1:],"
        " flush=True)\nsys.exit(4)\n")
    server = f"127.0.0.1:{cluster[1].http_port}"
    p = prisn_in(tmp_path, "run", "./script.py", "--wait", "-e", "GREETING=hi", "--", "a",
                 "b", server=server)
    assert p.returncode == 4, (p.stdout, p.stderr)
    assert p.stdout == "adhoc says hi ['a', 'b']\n", (p.stdout, p.stderr)
    assert "uploaded artifact" in p.stderr and "Failed" in p.stderr
    # listed, with no deployment, under the script's stem (strong: cluster[1] answered the
    # run; cluster[0]'s local state may not have applied its end yet)
    r = cluster[0].req("GET", "/api/v1/executions?namespace=default&limit=1000", timeout=10,
                       headers={"X-Prisn-Consistency": "strong"})
    assert r.status == 200, r.body
    [e] = [x for x in r.json()["items"] if x["name"] == "script"]
    assert e["deployment_id"] is None and e["status"] == "Failed" and e["exit_code"] == 4
    assert (e["entry"], e["runtime"]) == ("script.py", "python3")
    assert e["node"] in {n.node_id for n in cluster}
    p = prisn_in(tmp_path, "executions", server=server)
    assert p.returncode == 0 and e["id"] in p.stdout and "script" in p.stdout, p.stderr
    for n in cluster:  # its output from any node (read on the node that ran it)
        r = n.req("GET", f"/api/v1/executions/{e['id']}/logs", timeout=15,
                  headers={"X-Prisn-Consistency": "strong"})
        assert r.status == 200 and r.json()["stdout"] == "adhoc says hi ['a', 'b']\n", r.body
    p = prisn_in(tmp_path, "logs", e["id"], server=server)
    assert p.returncode == 0 and p.stdout == "adhoc says hi ['a', 'b']\n", p.stderr
    # without --wait: the id, at once; the run completes on its own
    (tmp_path / "quick.sh").write_text("echo quick\n")
    p = prisn_in(tmp_path, "run", "quick.sh", server=server)
    assert p.returncode == 0, p.stderr
    exec_id = p.stdout.strip()
    wait_for(lambda: execution(cluster[2], exec_id)["status"] == "Completed", WAIT,
             "the script completes")
    # a plain name still means a job deployment, even with a file of that name here
    (tmp_path / "nojob").write_text("print(1)\n")
    p = prisn_in(tmp_path, "run", "nojob", server=server)
    assert p.returncode == 1 and "not found" in p.stderr, (p.stdout, p.stderr)


def test_inline_source_async_answers_202_then_completes(cluster: list[ServerProc]) -> None:
    body = {"source": "print('inline', flush=True)\n", "runtime": "python3", "async": True,
            "name": "inline-job", "timeout": 60}
    r = cluster[2].req("POST", "/api/v1/executions", body, timeout=15)
    assert r.status == 202, r.body
    e = r.json()
    assert e["status"] == "Pending" and e["deployment_id"] is None
    assert e["name"] == "inline-job" and e["entry"] == "main.py"
    done = wait_for(lambda: (x := execution(cluster[0], e["id"]))["status"]
                    in ("Completed", "Failed") and x, WAIT, "the inline run finishes")
    assert done["status"] == "Completed" and done["exit_code"] == 0, done
    r = cluster[1].req("GET", f"/api/v1/executions/{e['id']}/logs", timeout=15,
                       headers={"X-Prisn-Consistency": "strong"})
    assert r.status == 200 and r.json()["stdout"] == "inline\n", r.body
    # synchronous: 200 with the finished execution; the same text dedups to one artifact
    body = {**body, "async": False, "source": "import sys\nsys.exit(2)\n"}
    r = cluster[0].req("POST", "/api/v1/executions", body, timeout=95)
    assert r.status == 200 and r.json()["exit_code"] == 2, r.body
    r = cluster[0].req("POST", "/api/v1/executions", {"source": "x"}, timeout=15)
    assert r.status == 400 and "runtime" in r.json()["message"], r.body


def _processes(name: str) -> list[int]:
    """Pids of live processes whose environment names `name` (PRISN_DEPLOYMENT)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            state = (d / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != b"Z" and f"PRISN_DEPLOYMENT={name}".encode() in env:
            out.append(int(d.name))
    return out


def test_cancel_stops_an_adhoc_run(cluster: list[ServerProc]) -> None:
    body = {"source": "import time\ntime.sleep(120)\n", "entry": "sleeper.py",
            "async": True}
    r = cluster[0].req("POST", "/api/v1/executions", body, timeout=15)
    assert r.status == 202 and r.json()["name"] == "sleeper", r.body
    exec_id = r.json()["id"]
    wait_for(lambda: execution(cluster[0], exec_id)["status"] == "Running", WAIT, "running")
    wait_for(lambda: len(_processes("sleeper")) == 1, WAIT, "its process")
    # cluster[1] may trail cluster[0]: the cancel looks again after a barrier
    r = cluster[1].req("POST", f"/api/v1/executions/{exec_id}/cancel", timeout=15)
    assert r.status == 200 and r.json()["status"] == "Cancelled", r.body
    wait_for(lambda: _processes("sleeper") == [], WAIT, "the cancelled process stopped")
