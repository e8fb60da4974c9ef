"""A synchronous run longer than the connection limiter's response deadline (about 20 s:
2 x --write-timeout + the 10 s request limit) on a real node: ``POST /api/v1/executions``
without ``async`` answers 200 with the finished execution instead of being cut, and
``prisn trigger NAME --wait`` / ``prisn run NAME`` of the same job exit 0 with its output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import single_node

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
SLEEP = 25  # seconds the job runs: past the ~20 s response deadline


def cli(server: str, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISN_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-m", "prisn.cli", "--server", server, *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)


def test_a_synchronous_run_longer_than_the_response_deadline_answers_200(
        tmp_path: Path) -> None:
    node = single_node(tmp_path).start()
    try:
        node.wait_ready()
        script = tmp_path / "slow.py"
        script.write_text(f"import time\ntime.sleep({SLEEP})\nprint('slept', flush=True)\n")
        r = node.req("POST", "/api/v1/deployments",
                     {"name": "slow", "type": "job", "source": str(script)}, timeout=15)
        assert r.status == 201, r.body
        server = f"127.0.0.1:{node.http_port}"
        # the CLI forms run at the same time as the synchronous POST (three executions)
        procs = [cli(server, "trigger", "slow", "--wait", "--job-timeout", "120"),
                 cli(server, "run", "slow", "--job-timeout", "120")]
        r = node.req("POST", "/api/v1/executions", {"name": "slow", "timeout": 120},
                     timeout=120 + 60)
        assert r.status == 200, (r.status, r.body, node.tail())
        e = r.json()
        assert e["status"] == "Completed" and e["exit_code"] == 0, e
        assert e["duration_ms"] >= SLEEP * 1000, e
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, (out, err)
            assert out == "slept\n", (out, err)
        # the limiter cut nothing
        m = node.req("GET", "/metrics", timeout=10).body.decode()
        assert 'prisn_http_slow_clients_closed_total{phase="response"} 0.0' in m, [
            ln for ln in m.splitlines() if "slow_clients" in ln]
    finally:
        node.stop()
