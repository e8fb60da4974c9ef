"""`actors.api.guard` and its flag parsers (issue 17, item 5): table-driven, no I/O."""

from __future__ import annotations

import pytest

from actors.api.guard import RequestGuard, has_body, host_of, own_names
from prisn.config import ConfigError, parse_hosts, parse_origins


@pytest.mark.parametrize(("value", "expected"), [
    ("", ()), (" , ", ()),
    ("https://App.Example.com/, http://localhost:3000",
     ("https://app.example.com", "http://localhost:3000")),
    ("https://a.example,https://a.example", ("https://a.example",)),
])
def test_parse_origins(value: str, expected: tuple[str, ...]) -> None:
    assert parse_origins(value) == expected


@pytest.mark.parametrize("value", ["*", "app.example", "ftp://a.example", "https://",
                                   "https://a.example/path", "https://*.example",
                                   "https://a b"])
def test_parse_origins_refuses(value: str) -> None:
    with pytest.raises(ConfigError, match="--cors-origins"):
        parse_origins(value)


@pytest.mark.parametrize(("value", "expected"), [
    ("", ()), ("API.example., *.corp.example ,*", ("api.example", "*.corp.example", "*")),
])
def test_parse_hosts(value: str, expected: tuple[str, ...]) -> None:
    assert parse_hosts(value) == expected


@pytest.mark.parametrize("value", ["http://a", "a:80", "a b", "*.", "a*b", "[::1]", "u@h"])
def test_parse_hosts_refuses(value: str) -> None:
    with pytest.raises(ConfigError, match="--allowed-hosts"):
        parse_hosts(value)


def test_too_many_entries_are_refused() -> None:
    with pytest.raises(ConfigError, match="more than"):
        parse_hosts(",".join(f"h{i}" for i in range(300)))


@pytest.mark.parametrize(("addr", "host"), [
    (":7331", ""), ("0.0.0.0:7331", ""), ("[::]:1", ""), ("Node1.Example.:7331", "node1.example"),
    ("[::1]:7331", "::1"), ("::1", "::1"), ("node1", "node1"), ("10.0.0.1:80", "10.0.0.1"),
])
def test_host_of(addr: str, host: str) -> None:
    assert host_of(addr) == host


def test_own_names_hold_localhost_hostname_and_the_given_hosts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "Box.lan")
    assert set(own_names(":7331", "prisn1:7332", "")) == {"localhost", "box.lan", "box",
                                                          "prisn1"}


GUARD = RequestGuard.build(origins=["https://app.example"], allowed_hosts=["*.corp.example"],
                           own=["node1"])


@pytest.mark.parametrize(("host", "ok"), [
    (None, True), ("", True), ("localhost:7331", True), ("NODE1.", True), ("10.9.8.7", True),
    ("[fe80::1%eth0]:7331", True), ("a.corp.example", True), ("corp.example", False),
    ("evil.example", False), ("node1.evil.example", False), ("127.0.0.1.nip.io", False),
])
def test_host_allowed(host: str | None, ok: bool) -> None:
    assert GUARD.host_allowed(host) is ok


def test_a_star_entry_or_auth_on_switches_the_host_check_off() -> None:
    assert RequestGuard.build(allowed_hosts=["*"]).host_allowed("evil.example")
    assert RequestGuard.build(check_hosts=False).host_allowed("evil.example")
    assert not RequestGuard.build().host_allowed("evil.example")


@pytest.mark.parametrize(("headers", "body"), [
    ({}, False), ({"Content-Length": "0"}, False), ({"Content-Length": "2"}, True),
    ({"Transfer-Encoding": "chunked"}, True), ({"Content-Length": "x"}, True),
    ({"Content-Length": "00"}, False), ({"Content-Length": ""}, True),
])
def test_has_body(headers: dict[str, str], body: bool) -> None:
    assert has_body(headers) is body


def test_cors_headers_only_for_an_allowed_origin_and_host() -> None:
    assert RequestGuard().cors_headers({"Origin": "https://app.example"}) == []
    assert GUARD.cors_headers({}) == [("Vary", "Origin")]
    allowed = dict(GUARD.cors_headers({"Origin": "https://app.example", "Host": "node1"}))
    assert allowed["Access-Control-Allow-Origin"] == "https://app.example"
    assert "X-Prisn-Leader" in allowed["Access-Control-Expose-Headers"]
    assert dict(GUARD.cors_headers({"Origin": "https://app.example", "Host": "evil.example"})
                ) == {"Vary": "Origin"}
    assert dict(GUARD.cors_headers({"Origin": "https://evil.example"})) == {"Vary": "Origin"}


def test_plain_requests_are_the_ones_the_fast_paths_may_take() -> None:
    bare = RequestGuard.build(own=["node1"])
    assert bare.plain({"Host": "node1", "Content-Length": "2", "Content-Type": "application/json"})
    assert bare.plain({"Host": "node1"})
    assert not bare.plain({"Host": "node1", "Content-Length": "2"})
    assert not bare.plain({"Host": "node1", "Origin": "https://node1"})
    assert not bare.plain({"Host": "evil.example"})
    assert not GUARD.plain({"Host": "node1"})  # CORS on: every answer needs Vary: Origin
