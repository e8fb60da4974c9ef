"""The job CLI forms of issue 15 (`deploy --type/--schedule/--secret`, `trigger`, `logs
EXEC_ID`) as real CLI processes against a scripted HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.scripted import DEP, Script, prisn

pytestmark = pytest.mark.timeout(120)

EXECS = "/api/v1/executions"
EID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def script() -> Iterator[Script]:
    srv = Script()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def ex(status: str, node: str | None = "n2", exit_code: int | None = None) -> dict[str, Any]:
    return {"id": EID, "deployment_id": "d1", "namespace": "default", "name": "app",
            "status": status, "exit_code": exit_code, "node": node, "scheduled_at": None,
            "attempt": 1, "created_at": "2026-12-04T20:00:00.000Z", "started_at": None,
            "completed_at": None, "duration_ms": None, "error": None}


def seq(*answers: tuple[int, dict, Any]):
    """A scripted answer that goes through `answers` and then repeats the last one."""
    left = list(answers)

    def next_answer(_srv: Script) -> tuple[int, dict, Any]:
        return left.pop(0) if len(left) > 1 else left[0]

    return next_answer


def body_of(srv: Script, method: str, path: str) -> Any:
    return next(b for (m, p, _h), b in zip(srv.seen, srv.bodies, strict=True)
                if m == method and p == path)


def test_deploy_passes_type_schedule_and_secrets_into_the_spec(script) -> None:
    script.answers[("POST", "/api/v1/deployments")] = [(201, {}, {**DEP, "type": "cronjob"})]
    p = prisn("deploy", "/srv/tick.py", "--no-upload", "--type", "cronjob", "--schedule",
              "@every 5s", "--secret", "db", "--secret", "api", "--secret", "db",
              server=script.addr)
    assert p.returncode == 0, p.stderr
    spec = body_of(script, "POST", "/api/v1/deployments")
    assert spec["type"] == "cronjob" and spec["schedule"] == "@every 5s"
    assert spec["secrets"] == ["db", "api"]
    p = prisn("deploy", "x.py", "--no-upload", "--type", "daemon", server=script.addr)
    assert p.returncode == 2  # not a type


def test_deploy_passes_the_run_settings_into_the_spec(script) -> None:
    script.answers[("POST", "/api/v1/deployments")] = [(201, {}, {**DEP, "type": "cronjob"})]
    p = prisn("deploy", "/srv/tick.py", "--no-upload", "--schedule", "0 9 * * *",
              "--retries", "2", "--concurrency", "allow", "--timezone", "Europe/Paris",
              "--starting-deadline", "30", server=script.addr)
    assert p.returncode == 0, p.stderr
    spec = body_of(script, "POST", "/api/v1/deployments")
    assert (spec["retries"], spec["concurrency"], spec["timezone"],
            spec["starting_deadline"]) == (2, "allow", "Europe/Paris", 30)
    p = prisn("deploy", "x.py", "--no-upload", "--concurrency", "often", server=script.addr)
    assert p.returncode == 2  # not a choice


def test_trigger_without_wait_prints_the_id(script) -> None:
    script.answers[("POST", EXECS)] = [(202, {}, ex("Pending", node=None))]
    p = prisn("trigger", "app", "-e", "K=V", server=script.addr)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == EID
    assert body_of(script, "POST", EXECS) == {"name": "app", "async": True, "env": {"K": "V"}}


def test_trigger_wait_shows_states_and_exits_with_the_job_exit_code(script) -> None:
    script.answers[("POST", EXECS)] = [(202, {}, ex("Pending", node=None))]
    script.answers[("GET", f"{EXECS}/{EID}")] = seq(
        (200, {}, ex("Running")), (200, {}, ex("Failed", exit_code=3)))
    script.answers[("GET", f"{EXECS}/{EID}/logs")] = [(200, {}, {"stdout": "boom\n",
                                                                 "stderr": ""})]
    p = prisn("trigger", "app", "--wait", server=script.addr)
    assert p.returncode == 3, p.stderr
    assert p.stdout == "boom\n"
    assert "Pending" in p.stderr and "Running on n2" in p.stderr and "Failed" in p.stderr


def test_logs_of_an_execution_id(script) -> None:
    script.answers[("GET", f"{EXECS}/{EID}")] = [(200, {}, ex("Completed", exit_code=0))]
    script.answers[("GET", f"{EXECS}/{EID}/logs")] = [(200, {}, {"stdout": "hi\n",
                                                                 "stderr": ""})]
    p = prisn("logs", EID, server=script.addr)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "hi\n"
    assert not any("/deployments/" in path for _m, path, _h in script.seen)


def test_logs_follow_of_an_execution_streams_both_streams_until_it_finishes(script) -> None:
    script.answers[("GET", f"{EXECS}/{EID}")] = [(200, {}, ex("Running"))]
    lines = [{"stream": "stdout", "data": "a\n"}, {}, {"stream": "stderr", "data": "oops\n"},
             {"stream": "stdout", "data": "b\n"},
             {"status": "Completed", "exit_code": 0, "error": None, "node": "n2"}]
    script.answers[("GET", f"{EXECS}/{EID}/logs")] = [
        (200, {}, b"".join(json.dumps(x).encode() + b"\n" for x in lines))]
    p = prisn("logs", EID, "-f", server=script.addr)
    assert p.returncode == 0, p.stderr
    assert (p.stdout, p.stderr) == ("a\nb\n", "oops\n")
    assert f"{EXECS}/{EID}/logs?follow=true" in script.targets
    # a follow that ends before the execution does (its timeout) says so
    script.answers[("GET", f"{EXECS}/{EID}")] = [(200, {}, ex("Running"))]
    script.answers[("GET", f"{EXECS}/{EID}/logs")] = [
        (200, {}, json.dumps({"status": "Running", "exit_code": None}).encode() + b"\n")]
    p = prisn("logs", EID, "-f", server=script.addr)
    assert p.returncode == 1 and "still Running" in p.stderr


def test_logs_of_an_execution_write_stderr_to_stderr(script) -> None:
    script.answers[("GET", f"{EXECS}/{EID}")] = [(200, {}, ex("Failed", exit_code=3))]
    script.answers[("GET", f"{EXECS}/{EID}/logs")] = [(200, {}, {"stdout": "out\n",
                                                                 "stderr": "err\n"})]
    p = prisn("logs", EID, server=script.addr)
    assert p.returncode == 0 and (p.stdout, p.stderr) == ("out\n", "err\n")


def test_logs_of_an_id_shaped_name_without_such_execution_reads_the_deployment(
        script) -> None:
    script.answers[("GET", f"{EXECS}/{EID}")] = [(404, {}, {"error": "Not Found",
                                                            "message": "not found"})]
    script.answers[("GET", f"/api/v1/deployments/{EID}/logs")] = [
        (200, {}, {"data": "dep\n", "offset": 0, "next_offset": 4,
                   "instance": f"default/{EID}/0"}),
        (200, {}, {"data": "", "offset": 4, "next_offset": 4,
                   "instance": f"default/{EID}/0"})]
    p = prisn("logs", EID, server=script.addr)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "dep\n"


def test_logs_of_an_unplaced_execution_says_so(script) -> None:
    script.answers[("GET", f"{EXECS}/{EID}")] = [(200, {}, ex("Pending", node=None))]
    p = prisn("logs", EID, server=script.addr)
    assert p.returncode == 1
    assert "not been placed" in p.stderr


def test_run_script_uploads_it_and_creates_an_adhoc_execution(script, tmp_path) -> None:
    from prisn.workloads.artifacts import digest_of, pack_file

    f = tmp_path / "job.py"
    f.write_text("print(1)\n")
    digest = digest_of(pack_file(f)[0])
    script.answers[("POST", "/api/v1/artifacts")] = [
        (201, {}, {"digest": digest, "size": 1, "created_at": "x"})]
    script.answers[("POST", EXECS)] = [(202, {}, {**ex("Pending", node=None),
                                                  "deployment_id": None, "name": "job"})]
    p = prisn("run", str(f), "-e", "K=V", "--runtime", "python3", "--job-timeout", "9",
              "--", "a", "--b", server=script.addr)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == EID and "uploaded artifact" in p.stderr
    assert body_of(script, "POST", EXECS) == {
        "artifact": digest, "entry": "job.py", "runtime": "python3", "async": True,
        "env": {"K": "V"}, "args": ["a", "--b"], "timeout": 9}
    # a missing file, --runtime with a deployment name, --wait with --async
    p = prisn("run", str(tmp_path / "gone.py"), server=script.addr)
    assert p.returncode == 1 and "no such file" in p.stderr
    p = prisn("run", "app", "--runtime", "bash", server=script.addr)
    assert p.returncode == 2 and "deployment name" in p.stderr
    p = prisn("run", str(f), "--wait", "--async", server=script.addr)
    assert p.returncode == 2
