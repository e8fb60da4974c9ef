"""The workload CLI (issue 14 part 6) as real CLI processes against a scripted HTTP server:
`prisn status` with phase, READY and instances (and '-' without a status), `--wait` on
deploy / scale / delete with its exit codes, and `prisn logs` (instance, tail, follow)."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.scripted import DEP, Script, prisn

pytestmark = pytest.mark.timeout(120)

PATH = "/api/v1/deployments/app"
LOGS = PATH + "/logs"
T0 = 1_764_876_600_000  # 2025-12-04T19:30:00Z in Unix ms


@pytest.fixture
def script() -> Iterator[Script]:
    srv = Script()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def inst(i: int, state: str, node: str = "n2", pid: int | None = 4000, exit_code: Any = None,
         restarts: int = 0) -> dict[str, Any]:
    return {"id": f"default/app/{i}", "node": node, "state": state, "pid": pid,
            "started_at": T0 if pid else None, "exit_code": exit_code, "restarts": restarts}


def dep(phase: str, ready: int, desired: int = 2, message: str = "",
        instances: list | None = None, **kw: Any) -> dict[str, Any]:
    return {**DEP, "type": "service", "replicas": desired, "port": 8080, **kw,
            "status": {"phase": phase, "desired_replicas": desired, "ready_replicas": ready,
                       "restarts": sum(i["restarts"] for i in instances or []),
                       "message": message, "instances": instances or []}}


def seq(*answers: tuple[int, dict, Any]):
    """A scripted answer that goes through `answers` and then repeats the last one."""
    left = list(answers)

    def next_answer(_srv: Script) -> tuple[int, dict, Any]:
        return left.pop(0) if len(left) > 1 else left[0]

    return next_answer


def queries(srv: Script, path: str) -> list[dict[str, list[str]]]:
    return [parse_qs(urlsplit(t).query) for t in srv.targets if urlsplit(t).path == path]


# ---------------------------------------------------------------------- status
def test_status_lists_phase_and_ready_and_dash_without_a_status(script) -> None:
    script.answers[("GET", "/api/v1/deployments")] = [(200, {}, {
        "items": [dep("Degraded", 1), {**DEP, "name": "old"}], "count": 2, "total": 2})]
    p = prisn("status", server=script.addr)
    assert p.returncode == 0, p.stderr
    head, *rows = p.stdout.splitlines()
    assert head.split() == ["NAMESPACE", "NAME", "TYPE", "REPLICAS", "READY", "PHASE", "PORT",
                            "RUNTIME", "SCHEDULE", "GEN", "UPDATED"]
    assert rows[0].split()[:6] == ["default", "app", "service", "2", "1/2", "Degraded"]
    assert rows[1].split()[:6] == ["default", "old", "job", "1", "-", "-"]


def test_status_of_one_shows_its_instances_and_json_as_is(script) -> None:
    body = dep("CrashLoopBackOff", 1, message="default/app/1 exits at once (exit 3)",
               instances=[inst(0, "running", node="n1"),
                          inst(1, "backoff", pid=None, exit_code=3, restarts=4)])
    script.answers[("GET", PATH)] = seq((200, {}, body))
    p = prisn("status", "app", server=script.addr)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "phase:      CrashLoopBackOff  READY 1/2  restarts 4" in lines
    assert "message:    default/app/1 exits at once (exit 3)" in lines
    table = lines[lines.index(next(x for x in lines if x.startswith("INSTANCE"))):]
    assert table[0].split() == ["INSTANCE", "NODE", "STATE", "PID", "SINCE", "RESTARTS", "EXIT"]
    assert table[1].split() == ["default/app/0", "n1", "running", "4000",
                                "2025-12-04T19:30:00Z", "0", "-"]
    assert table[2].split() == ["default/app/1", "n2", "backoff", "-", "-", "4", "3"]
    assert not any(x.startswith("status:") for x in lines)  # not dumped as a field
    p = prisn("status", "app", "-o", "json", server=script.addr)
    assert p.returncode == 0 and json.loads(p.stdout) == body


def test_status_of_one_without_a_status(script) -> None:
    script.answers[("GET", PATH)] = [(200, {}, DEP)]
    p = prisn("status", "app", server=script.addr)
    assert p.returncode == 0, p.stderr
    assert "phase:      - (no status reported)" in p.stdout.splitlines()


# ---------------------------------------------------------------------- --wait
def test_deploy_wait_shows_instances_coming_up_and_exits_0_when_ready(script) -> None:
    script.answers[("POST", "/api/v1/deployments")] = [(201, {}, dep("Pending", 0))]
    script.answers[("GET", PATH)] = seq(
        (200, {}, dep("Pending", 0, instances=[inst(0, "starting", pid=None)])),
        (200, {}, dep("Degraded", 1, instances=[inst(0, "running"),
                                                inst(1, "starting", node="n3", pid=None)])),
        (200, {}, dep("Running", 2, instances=[inst(0, "running"),
                                               inst(1, "running", node="n3", pid=4001)])),
    )
    p = prisn("deploy", "app.py", "--port", "8080", "--replicas", "2", "--wait",
              server=script.addr)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "created default/app (service, 2 replicas, port 8080, generation 1)",
        "default/app ready: 2/2 (Running)"]
    assert p.stderr.splitlines() == [
        "  default/app/0: starting on n2",
        "  default/app/0: running on n2 pid 4000",
        "  default/app/1: starting on n3",
        "  default/app/1: running on n3 pid 4001"]
    # without --wait nothing is polled
    script.answers[("POST", "/api/v1/deployments")] = [(201, {}, dep("Pending", 0))]
    before = len(script.seen)
    assert prisn("deploy", "app.py", "--port", "8080", server=script.addr).returncode == 0
    assert [m for m, _, _ in script.seen[before:]] == ["POST"]


def test_deploy_wait_fails_on_crash_loop_with_the_message(script) -> None:
    script.answers[("POST", "/api/v1/deployments")] = [(201, {}, dep("Pending", 0))]
    script.answers[("GET", PATH)] = seq(
        (200, {}, dep("CrashLoopBackOff", 0, message="default/app/0 exited 3 times in a row",
                      instances=[inst(0, "backoff", pid=None, exit_code=1, restarts=3)])))
    p = prisn("deploy", "app.py", "--port", "8080", "--wait", server=script.addr)
    assert p.returncode == 1
    assert "default/app is CrashLoopBackOff (READY 0/2): default/app/0 exited 3 times in a " \
           "row" in p.stderr


def test_deploy_wait_times_out_with_the_last_status(script) -> None:
    script.answers[("POST", "/api/v1/deployments")] = [(201, {}, dep("Pending", 0))]
    script.answers[("GET", PATH)] = seq(
        (200, {}, dep("Pending", 0, message="no node without port 8080 in use")))
    started = time.monotonic()
    p = prisn("deploy", "app.py", "--port", "8080", "--wait", "--timeout", "1",
              server=script.addr)
    assert p.returncode == 1
    assert ("default/app not ready after 1s (READY 0/2, phase Pending: no node without port "
            "8080 in use)") in p.stderr
    assert time.monotonic() - started < 50  # bounded by --timeout, not by the CLI_TIMEOUT


def test_wait_without_a_status_times_out_saying_so(script) -> None:
    service = {**DEP, "type": "service"}  # an older server: no status at all
    script.answers[("POST", "/api/v1/deployments/app/scale")] = [(200, {}, service)]
    script.answers[("GET", PATH)] = seq((200, {}, service))
    p = prisn("scale", "app", "2", "--wait", "--timeout", "1", server=script.addr)
    assert p.returncode == 1
    assert "the server reports no status for it" in p.stderr


def test_wait_on_a_job_without_a_status_returns_at_once(script) -> None:
    script.answers[("POST", "/api/v1/deployments")] = [(201, {}, DEP)]
    script.answers[("GET", PATH)] = seq((200, {}, DEP))
    p = prisn("deploy", "app.py", "--wait", server=script.addr)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1] == "default/app is a job: no instances to wait for"


def test_deploy_wait_holds_until_every_instance_runs_the_new_generation(script) -> None:
    """An update: 2/2 ready at once (the old copies), but done only once observed_generation
    reaches the deployment's generation (the rolling update finished)."""
    def rolling(observed: int | None, ready: int = 2) -> dict[str, Any]:
        d = dep("Running" if ready == 2 else "Degraded", ready, generation=2,
                instances=[inst(0, "running"), inst(1, "running", node="n3", pid=4001)])
        d["status"].update(observed_generation=observed, updated_replicas=0)
        return d

    script.answers[("POST", "/api/v1/deployments")] = [(201, {}, rolling(1))]
    script.answers[("GET", PATH)] = seq((200, {}, rolling(1)), (200, {}, rolling(1, 1)),
                                        (200, {}, rolling(1)), (200, {}, rolling(2)))
    p = prisn("deploy", "app.py", "--port", "8080", "--replicas", "2", "--wait",
              server=script.addr)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1] == "default/app ready: 2/2 (Running)"
    assert len(queries(script, PATH)) == 4  # not done at the first 2/2
    script.answers[("POST", "/api/v1/deployments")] = [(201, {}, rolling(1))]
    script.answers[("GET", PATH)] = seq((200, {}, rolling(1)))
    p = prisn("deploy", "app.py", "--port", "8080", "--replicas", "2", "--wait",
              "--timeout", "1", server=script.addr)
    assert p.returncode == 1
    assert "instances at generation 1, deployment at 2" in p.stderr


def test_scale_wait_json_prints_the_ready_deployment(script) -> None:
    script.answers[("POST", "/api/v1/deployments/app/scale")] = [(200, {}, dep("Degraded", 1))]
    ready = dep("Running", 3, desired=3, instances=[inst(i, "running") for i in range(3)])
    script.answers[("GET", PATH)] = seq((200, {}, dep("Degraded", 2, desired=3)),
                                        (200, {}, ready))
    p = prisn("scale", "app", "3", "--wait", "-o", "json", server=script.addr)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == ready
    assert "scaled default/app" in p.stderr  # the human line stays off stdout


def test_delete_wait_until_no_instance_is_listed(script) -> None:
    script.answers[("DELETE", PATH)] = [(200, {}, {"deleted": "app"})]
    script.answers[("GET", PATH)] = seq(
        (200, {}, dep("Stopped", 0, desired=0, instances=[inst(0, "stopping")])),
        (404, {}, {"error": "Not Found", "message": "deployment app not found"}))
    p = prisn("delete", "app", "--wait", server=script.addr)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "deleted default/app"
    assert "default/app/0: stopping on n2" in p.stderr
    # an instance that never goes away: exit 1 after --timeout
    script.answers[("DELETE", PATH)] = [(200, {}, {"deleted": "app"})]
    script.answers[("GET", PATH)] = seq(
        (200, {}, dep("Stopped", 0, desired=0, instances=[inst(0, "stopping")])))
    p = prisn("delete", "app", "--wait", "--timeout", "1", server=script.addr)
    assert p.returncode == 1 and "default/app still lists 1 instance(s) after 1s" in p.stderr


# ---------------------------------------------------------------------- logs
def chunk(offset: int, data: str, instance: str = "default/app/0") -> tuple[int, dict, Any]:
    return (200, {}, {"instance": instance, "node": "n2", "offset": offset,
                      "next_offset": offset + len(data.encode()), "truncated": False,
                      "data": data})


def test_logs_prints_everything_kept_then_stops(script) -> None:
    script.answers[("GET", LOGS)] = seq(chunk(0, "one\n"), chunk(4, "two\n"), chunk(8, ""))
    p = prisn("logs", "app", server=script.addr)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "one\ntwo\n"
    q = queries(script, LOGS)
    assert [x.get("offset") for x in q] == [None, ["4"], ["8"]]
    assert q[1]["instance"] == ["default/app/0"]  # the instance of the first answer is kept
    assert "instance" not in q[0]
    assert all("follow" not in x for x in q)
    p = prisn("logs", "app", "-o", "json", "--instance", "default.app.0.1", server=script.addr)
    assert p.returncode == 0, p.stderr
    assert [json.loads(line)["next_offset"] for line in p.stdout.splitlines()] == [8]


def test_logs_stream_stderr_asks_for_it_and_prints_to_stderr(script) -> None:
    script.answers[("GET", LOGS)] = seq(chunk(0, "Traceback\n"), chunk(10, ""))
    p = prisn("logs", "app", "--stream", "stderr", server=script.addr)
    assert p.returncode == 0 and (p.stdout, p.stderr) == ("", "Traceback\n"), p.stderr
    assert all(x["stream"] == ["stderr"] for x in queries(script, LOGS))


def test_logs_instance_index_and_tail(script) -> None:
    script.answers[("GET", LOGS)] = seq(chunk(90, "last\n", "default/app/1"),
                                        chunk(95, "", "default/app/1"))
    p = prisn("logs", "app", "--instance", "1", "--tail", "5", server=script.addr)
    assert p.returncode == 0 and p.stdout == "last\n"
    q = queries(script, LOGS)
    assert q[0]["instance"] == ["1"] and q[0]["tail"] == ["5"]
    assert "tail" not in q[1] and q[1]["offset"] == ["95"]


def test_logs_refused_exits_1_with_the_message(script) -> None:
    script.answers[("GET", LOGS)] = [(503, {}, {"error": "Service Unavailable",
                                                "message": "node n3 did not answer within 5s"})]
    p = prisn("logs", "app", server=script.addr)
    assert p.returncode == 1 and "node n3 did not answer within 5s" in p.stderr


def test_logs_follow_keeps_reading_new_output(script) -> None:
    script.answers[("GET", LOGS)] = seq(chunk(0, "a\n"), chunk(2, ""), chunk(2, "b\n"),
                                        chunk(4, ""))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISN_")}
    proc = subprocess.Popen([sys.executable, "-m", "prisn.cli", "--server", script.addr,
                             "logs", "app", "-f"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    out = b""
    try:
        sel = selectors.DefaultSelector()
        assert proc.stdout is not None
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while out != b"a\nb\n" and time.monotonic() < deadline:
            if sel.select(timeout=1):
                out += os.read(proc.stdout.fileno(), 1024)
        assert out == b"a\nb\n"
        assert proc.poll() is None  # still following
    finally:
        proc.kill()
        proc.wait(10)
    q = queries(script, LOGS)
    assert "follow" not in q[0] and all(x["follow"] == ["true"] for x in q[1:])
