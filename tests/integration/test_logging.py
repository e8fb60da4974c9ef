"""`--log-format json` (issue 16 item 2) through real `prisn server` processes.

- Every line a node writes parses as one JSON object with time (RFC 3339 UTC, ms), level,
  logger, node and message; the leader-elected event carries `term` and `leader`, a member
  joining carries `member` (on the leader's log).
- A start-up failure is one error record (one line, no traceback); with --log-level debug
  the traceback is a field of a debug record, still one JSON line.
- The default text format is unchanged.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

from tests.procs import cluster_node, single_node, wait_for

KEYS = ("time", "level", "logger", "node", "message")
RFC3339_MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def records(text: str, node_id: str) -> list[dict]:
    """Every line of `text` as a JSON object with the required keys (asserted)."""
    out = []
    for line in text.splitlines():
        rec = json.loads(line)  # every line parses
        assert isinstance(rec, dict), line
        for key in KEYS:
            assert key in rec, f"{key} missing in {line}"
        assert RFC3339_MS_UTC.match(rec["time"]), rec["time"]
        assert rec["level"] in ("debug", "info", "warning", "error", "critical"), line
        assert rec["node"] == node_id, line
        out.append(rec)
    assert out, "no output"
    return out


def test_json_logs_carry_cluster_event_fields(tmp_path: Path) -> None:
    n1 = cluster_node(tmp_path, "n1", bootstrap=True)
    n1.env = {"PRISN_LOG_FORMAT": "json"}  # the variable works as the flag does
    n1.start()
    n2 = None
    try:
        n1.wait_ready(30)
        n2 = cluster_node(tmp_path, "n2", peers=[n1.raft_addr], extra=["--log-format", "json"])
        n2.start().wait_ready(30)
        wait_for(lambda: sum(x["state"] in ("leader", "follower")
                             for x in n1.status()["nodes"]) == 2, 30, "two voters")
        assert n1.req("POST", "/api/v1/deployments", {"name": "a", "source": "x"}).status == 201
    finally:
        for n in (n2, n1):
            if n is not None:
                assert n.stop() == 0, n.tail()
    one = records(n1.log_path.read_text(), "n1")
    two = records(n2.log_path.read_text(), "n2")
    elected = [r for r in one if r.get("event") == "leader_elected"]
    assert elected, one
    assert isinstance(elected[0]["term"], int) and elected[0]["term"] >= 1
    assert elected[0]["leader"] == "n1"
    assert any(r.get("event") == "leader_elected" and r["leader"] == "n1"
               and isinstance(r["term"], int) for r in two), two
    joined = [r for r in one if r.get("event") in ("member_added", "member_promoted")]
    assert {r["member"] for r in joined} == {"n2"}, joined
    assert all(isinstance(r["term"], int) and r["leader"] == "n1" for r in joined), joined
    assert any(r["logger"] == "prisn.server" and r["message"] == "stopped" for r in one)


def _busy_port() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, s.getsockname()[1]


def _run_failing(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    sock, port = _busy_port()
    try:
        return subprocess.run(
            [sys.executable, "-m", "prisn.cli", "server", "--bind", f"127.0.0.1:{port}",
             "--data-dir", str(tmp_path / "d"), "--node-id", "n1", *extra],
            capture_output=True, text=True, timeout=120)
    finally:
        sock.close()


def test_json_startup_failure_is_one_error_line(tmp_path: Path) -> None:
    p = _run_failing(tmp_path, "--log-format", "json")
    assert p.returncode == 1, p.stderr
    recs = records(p.stderr, "n1")
    assert "Traceback" not in p.stderr
    fatal = [r for r in recs if r.get("event") == "startup_failed"]
    assert len(fatal) == 1 and fatal[0]["level"] == "error", recs
    assert fatal[0]["message"].startswith("cannot start: ") and "in use" in fatal[0]["message"]


def test_json_startup_failure_traceback_only_at_debug(tmp_path: Path) -> None:
    p = _run_failing(tmp_path, "--log-format", "json", "--log-level", "debug")
    assert p.returncode == 1, p.stderr
    recs = records(p.stderr, "n1")  # still one object per line
    traced = [r for r in recs if "Traceback" in r.get("exception", "")]
    assert traced and all(r["level"] == "debug" for r in traced), recs
    assert len([r for r in recs if r.get("event") == "startup_failed"]) == 1


def test_text_format_is_the_default_and_unchanged(tmp_path: Path) -> None:
    n = single_node(tmp_path).start()
    try:
        n.wait_ready(30)
    finally:
        assert n.stop() == 0, n.tail()
    lines = n.log_path.read_text().splitlines()
    assert "prisn: data dir " + str(n.data_dir) in lines
    line = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) "
                      r"[\w.]+: ")
    logged = [ln for ln in lines if not ln.startswith("prisn: ")]
    assert logged and all(line.match(ln) for ln in logged), logged
    assert any("raft: leader is n1 (term " in ln for ln in logged)
    p = _run_failing(tmp_path / "fail")
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert [ln for ln in p.stderr.splitlines() if ln.startswith("prisn: error: cannot start")]
