"""Cross-site requests and DNS rebinding against real `prisn server` processes with auth off,
the default (issue 17, item 5): what a web page could send is refused and changes nothing;
the node's own names, IP addresses and the configured hosts and origins are served."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.procs import ServerProc, single_node

pytestmark = pytest.mark.timeout(120)

SPEC = {"name": "web", "source": "print(1)"}
TOKEN = {"name": "pwn", "role": "admin"}
KEY = "cross-site-test-key-0123456789"


def counts(n: ServerProc, headers: dict[str, str] | None = None) -> tuple[int, int]:
    """(deployments, tokens) on `n`."""
    deps = n.req("GET", "/api/v1/deployments", headers=headers).json()["total"]
    toks = n.req("GET", "/api/v1/tokens", headers=headers).json()
    return deps, len(toks["items"] if isinstance(toks, dict) else toks)


@pytest.fixture
def node(tmp_path: Path):
    n = single_node(tmp_path).start()
    try:
        n.wait_ready()
        yield n
    finally:
        n.stop()


def test_a_web_page_cannot_write_to_an_open_node(node: ServerProc) -> None:
    """The attack of the issue: a text/plain POST with a foreign Origin and Host, then each
    check alone; none creates a deployment or an admin token, and the node still writes."""
    before = counts(node)
    page = {"Content-Type": "text/plain;charset=UTF-8", "Origin": "http://evil.example",
            "Host": "evil.example:7331"}
    cases = [
        (page, 421),  # DNS rebinding: the browser thinks it talks to evil.example
        ({"Content-Type": "text/plain"}, 415),  # a "simple" cross-site form/fetch post
        ({"Origin": "http://evil.example"}, 403),  # preflighted: JSON from a foreign page
        ({"Host": "evil.example"}, 421),
    ]
    for path, body in (("/api/v1/deployments", SPEC), ("/api/v1/tokens", TOKEN)):
        for headers, status in cases:
            r = node.req("POST", path, json.dumps(body).encode(), headers=headers)
            assert r.status == status, (path, headers, r.status, r.body)
            err = r.json()
            assert set(err) >= {"error", "message"} and err["message"], err
    preflight = node.req("OPTIONS", "/api/v1/tokens", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status == 403 and "access-control-allow-origin" not in preflight.headers
    assert counts(node) == before
    assert node.req("POST", "/api/v1/deployments", SPEC).status == 201  # still takes writes
    assert counts(node) == (before[0] + 1, before[1])


def test_own_names_and_addresses_are_served(node: ServerProc) -> None:
    for host in ("localhost", f"localhost:{node.http_port}", f"127.0.0.1:{node.http_port}",
                 "[::1]", "10.20.30.40:7331", socket.gethostname()):
        r = node.req("GET", "/health", headers={"Host": host})
        assert r.status == 200, (host, r.body)
    r = node.req("POST", "/api/v1/deployments", json.dumps(SPEC).encode(),
                 headers={"Content-Type": "application/json; charset=utf-8",
                          "Host": socket.gethostname()})
    assert r.status == 201, r.body


def test_allowed_hosts_and_cors_origins_from_the_environment(tmp_path: Path) -> None:
    n = single_node(tmp_path, extra=["--cors-origins", "https://ui.example"])
    n.env = {"PRISN_ALLOWED_HOSTS": "prisn-api, *.svc.cluster.local"}
    n.start()
    try:
        n.wait_ready()
        for host in ("prisn-api:7331", "prisn-api.default.svc.cluster.local"):
            assert n.req("GET", "/health", headers={"Host": host}).status == 200, host
        assert n.req("GET", "/health", headers={"Host": "svc.cluster.local.evil"}).status == 421
        ui = {"Origin": "https://ui.example"}
        pre = n.req("OPTIONS", "/api/v1/deployments", headers={
            **ui, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert pre.status == 204, pre.body
        assert pre.headers["access-control-allow-origin"] == "https://ui.example"
        assert "POST" in pre.headers["access-control-allow-methods"]
        r = n.req("POST", "/api/v1/deployments", SPEC, headers=ui)
        assert r.status == 201 and r.headers["access-control-allow-origin"] == "https://ui.example"
        assert r.headers["vary"] == "Origin"
        assert n.req("POST", "/api/v1/deployments", {**SPEC, "name": "x"},
                     headers={"Origin": "https://evil.example"}).status == 403
    finally:
        n.stop()


def test_with_an_api_key_the_host_is_not_checked_but_origins_are(tmp_path: Path) -> None:
    n = single_node(tmp_path, extra=["--api-key", KEY]).start()
    try:
        n.wait_ready()
        auth = {"Authorization": f"Bearer {KEY}"}
        r = n.req("POST", "/api/v1/deployments", SPEC,
                  headers={**auth, "Host": "prisn.example.com"})
        assert r.status == 201, r.body
        assert n.req("POST", "/api/v1/deployments", {**SPEC, "name": "x"},
                     headers={**auth, "Origin": "https://evil.example"}).status == 403
        assert n.req("POST", "/api/v1/deployments", json.dumps({**SPEC, "name": "y"}).encode(),
                     headers={**auth, "Content-Type": "text/plain"}).status == 415
        assert counts(n, auth)[0] == 1
    finally:
        n.stop()


def test_bad_flag_values_are_refused_at_start(tmp_path: Path) -> None:
    for flags in (["--cors-origins", "*"], ["--allowed-hosts", "http://x"]):
        n = single_node(tmp_path, extra=flags).start()
        assert n.wait_exit(20) == 2, n.tail()
        assert flags[0] in n.tail()
