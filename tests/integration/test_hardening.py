"""Issue 17 against real `prisn server` processes: lone-surrogate bodies leak nothing and are a
400 on every write route, an Idempotency-Key reused on another token is a 422, /metrics does
not reveal which token ids exist, bare-LF chunk framing gets a prompt 400, and the data dir
and its files are private whatever the umask. After each attack the node still takes writes."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import ServerProc, single_node, wait_for

KEY = "hardening-key-0123456789"
MAX_INFLIGHT = 4


def metric(node: ServerProc, name: str, labels: str = "") -> float | None:
    body = node.req("GET", "/metrics", headers={"Authorization": f"Bearer {KEY}"}).body.decode()
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", body, re.M)
    return float(m.group(1)) if m else None


@pytest.fixture
def node(tmp_path: Path) -> Iterator[ServerProc]:
    n = single_node(tmp_path, extra=["--max-inflight", str(MAX_INFLIGHT), "--rate-limit", "0"])
    n.start()
    try:
        n.wait_ready()
        yield n
    finally:
        n.stop()


@pytest.fixture
def auth_node(tmp_path: Path) -> Iterator[ServerProc]:
    n = single_node(tmp_path, extra=["--rate-limit", "0"])
    n.env["PRISN_API_KEY"] = KEY
    n.start()
    try:
        n.wait_ready()
        yield n
    finally:
        n.stop()


def test_lone_surrogate_writes_leak_nothing(node: ServerProc) -> None:
    """Issue 17 item 1: each body is valid JSON whose strings cannot be stored. Ten times
    --max-inflight of them, on every write route, over one keep-alive connection: each is a
    400 naming the field, the in-flight gauges are back at 0, and a normal write is a 201."""
    assert node.req("POST", "/api/v1/deployments", {"name": "web", "source": "x"}).status == 201
    bad = [
        ("POST", "/api/v1/deployments", rb'{"name":"x","source":"\ud800"}', "source"),
        ("POST", "/api/v1/deployments", rb'{"name":"x","source":"s","env":{"A":"\udfff"}}',
         "env.A"),
        ("PUT", "/api/v1/deployments/web", rb'{"source":"\ud800"}', "source"),
        ("PATCH", "/api/v1/deployments/web", rb'{"args":["a","\udc00"]}', "args[1]"),
        ("POST", "/api/v1/deployments/web/scale", rb'{"replicas":1,"\ud800":1}', "body"),
        ("POST", "/api/v1/tokens", rb'{"name":"\ud800","role":"admin"}', "name"),
        ("POST", "/api/v1/cluster/election", rb'{"target":"n1\ud800"}', "target"),
    ]
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=10)
    try:
        for i in range(10 * MAX_INFLIGHT):
            method, path, body, field = bad[i % len(bad)]
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            answer = json.loads(r.read())
            assert r.status == 400, (method, path, r.status, answer)
            assert set(answer) == {"error", "message"} and answer["error"] == "Bad Request"
            assert answer["message"].startswith(f"{field}:"), answer
    finally:
        conn.close()
    # back at 0 (a leak would hold them above it for good); the node's own background
    # proposals (instance reports of "web") may be in flight at the moment of one scrape
    wait_for(lambda: metric(node, "prisn_api_writes_inflight") == 0.0
             and metric(node, "prisn_api_raft_requests_inflight") == 0.0, 10,
             "in-flight gauges back at 0")
    assert metric(node, "prisn_api_max_inflight") == MAX_INFLIGHT
    assert node.req("GET", "/ready").status == 200
    r = node.req("POST", "/api/v1/deployments", {"name": "after", "source": "print(1)"})
    assert r.status == 201, r.body
    dep = node.req("GET", "/api/v1/deployments/web").json()
    assert dep["source"] == "x" and dep["generation"] == 1  # no refused write changed it


def test_env_nul_and_newline_refused(node: ServerProc) -> None:
    """Issue 17 item 10: env values with NUL or a line break are a 400 naming the field."""
    for value in ("a\x00b", "line\nFORGED=1", "cr\r"):
        r = node.req("POST", "/api/v1/deployments",
                     {"name": "e", "source": "x", "env": {"GOOD": "1", "BAD": value}})
        assert r.status == 400, r.body
        assert r.json()["message"].startswith("env:") and "BAD" in r.json()["message"]
    assert node.req("GET", "/api/v1/deployments/e").status == 404
    assert node.req("POST", "/api/v1/deployments",
                    {"name": "e", "source": "x", "env": {"A": "tab\tok"}}).status == 201


def _token(node: ServerProc, name: str) -> tuple[str, str]:
    r = node.req("POST", "/api/v1/tokens",
                 {"name": name, "role": "developer", "namespaces": ["default"]},
                 headers={"Authorization": f"Bearer {KEY}"})
    assert r.status == 201, r.body
    return r.json()["id"], r.json()["secret"]


def test_idempotency_key_reused_on_another_token_is_422(auth_node: ServerProc) -> None:
    """Issue 17 item 6: the same Idempotency-Key on a different token's revoke or delete is a
    422 (as for deployment writes) and leaves that token valid; a true retry gets the first
    answer."""
    node = auth_node
    admin = {"Authorization": f"Bearer {KEY}"}
    a, _ = _token(node, "a")
    b, b_secret = _token(node, "b")
    first = node.req("POST", f"/api/v1/tokens/{a}/revoke",
                     headers={**admin, "Idempotency-Key": "rv-1"})
    assert first.status == 200 and first.json()["revoked"] is True
    other = node.req("POST", f"/api/v1/tokens/{b}/revoke",
                     headers={**admin, "Idempotency-Key": "rv-1"})
    assert other.status == 422, other.body
    assert other.json()["error"] == "Unprocessable Entity"
    assert node.req("GET", f"/api/v1/tokens/{b}", headers=admin).json()["revoked"] is False
    as_b = {"Authorization": f"Bearer {b_secret}"}
    assert node.req("GET", "/api/v1/deployments", headers=as_b).status == 200
    again = node.req("POST", f"/api/v1/tokens/{a}/revoke",
                     headers={**admin, "Idempotency-Key": "rv-1"})
    assert again.status == 200 and again.json()["revoked_at"] == first.json()["revoked_at"]
    # delete: the same
    assert node.req("DELETE", f"/api/v1/tokens/{a}",
                    headers={**admin, "Idempotency-Key": "del-1"}).status == 204
    other = node.req("DELETE", f"/api/v1/tokens/{b}",
                     headers={**admin, "Idempotency-Key": "del-1"})
    assert other.status == 422, other.body
    assert node.req("GET", f"/api/v1/tokens/{b}", headers=admin).status == 200
    assert node.req("GET", "/api/v1/deployments", headers=as_b).status == 200
    assert node.req("DELETE", f"/api/v1/tokens/{a}",
                    headers={**admin, "Idempotency-Key": "del-1"}).status == 204
    r = node.req("POST", "/api/v1/deployments", {"name": "still", "source": "x"}, headers=as_b)
    assert r.status == 201, r.body


def test_metrics_do_not_reveal_which_token_ids_exist(auth_node: ServerProc) -> None:
    """Issue 17 item 8: a made-up token id and a real id with a wrong secret are counted
    alike on the open /metrics; the node's log tells them apart."""
    node = auth_node
    tid, secret = _token(node, "real")
    wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    made_up = "prisn_00000000000000ff_" + "A" * 43
    answers = set()
    for cred in (made_up, wrong):
        r = node.req("GET", "/api/v1/deployments", headers={"Authorization": f"Bearer {cred}"})
        answers.add((r.status, r.body, r.headers["www-authenticate"]))
    assert len(answers) == 1 and next(iter(answers))[0] == 401, answers
    scrape = node.req("GET", "/metrics").body.decode()  # open: no --metrics-auth
    reasons = dict(re.findall(r'^prisn_http_auth_failures_total\{reason="(\w+)"\} (\S+)$',
                              scrape, re.M))
    assert reasons == {"invalid": "2.0"}, reasons
    wait_for(lambda: "unknown token id 00000000000000ff" in node.log_path.read_text()
             and f"wrong secret for token {tid}" in node.log_path.read_text(), 5,
             "both refusals in the node's log")
    assert secret not in node.log_path.read_text() and wrong not in node.log_path.read_text()


BARE_LF = [b"5\nhello\n0\n\n", b"5\r\nhello\r\n0\n\n", b"3\r\nabc\r\n0\n\r\n"]


@pytest.mark.parametrize("body", BARE_LF)
def test_bare_lf_chunk_framing_is_a_prompt_400(node: ServerProc, body: bytes) -> None:
    """Issue 17 item 10: chunk-size lines ended by a bare LF used to hang until the 10 s
    slow-client sweep; the 400 must come well before (we wait 3 s at most)."""
    with socket.create_connection(("127.0.0.1", node.http_port), timeout=3) as s:
        s.sendall(b"POST /api/v1/deployments HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        started = time.monotonic()
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                data = s.recv(4096)
                if not data:
                    break
                answer += data
        except TimeoutError:
            pytest.fail(f"no answer within 3 s to bare-LF chunk framing {body!r}")
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert time.monotonic() - started < 3
    ok = (b"POST /api/v1/deployments HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
          b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    spec = b'{"name":"chunked","source":"x"}'
    with socket.create_connection(("127.0.0.1", node.http_port), timeout=5) as s:
        s.sendall(ok + b"%x\r\n" % len(spec) + spec + b"\r\n0\r\n\r\n")
        answer = b""
        while data := s.recv(4096):
            answer += data
    assert answer.startswith(b"HTTP/1.1 201 "), answer


def test_data_dir_private_under_a_loose_umask(tmp_path: Path) -> None:
    """Issue 17 item 10: started with umask 022, the data dir and everything in it (RocksDB
    files, snapshots) are 0700 dirs and 0600 files."""
    n = single_node(tmp_path, extra=["--snapshot-threshold", "5", "--snapshot-interval", "0"])
    old = os.umask(0o022)
    try:
        n.start()
    finally:
        os.umask(old)
    try:
        n.wait_ready()
        for i in range(12):  # enough applied entries for a snapshot
            assert n.req("POST", "/api/v1/deployments",
                         {"name": f"d{i}", "source": "x"}).status == 201
        rocks = wait_for(lambda: [p for p in n.data_dir.rglob("*") if p.name.startswith("MANIFEST")],
                         10, "RocksDB files")
        assert rocks
        loose = []
        for p in [n.data_dir, *n.data_dir.rglob("*")]:
            mode = stat.S_IMODE(p.lstat().st_mode)
            want = 0o700 if p.is_dir() else 0o600
            if not p.is_symlink() and mode != want:
                loose.append(f"{p.relative_to(n.data_dir.parent)} {mode:o}")
        assert not loose, loose
    finally:
        n.stop()
