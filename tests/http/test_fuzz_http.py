"""Fuzzing the HTTP API (issue 7, item 5): random methods, paths from the route table with
random segments and query strings, random headers, random and mutated JSON bodies (huge
numbers, deep nesting, bad UTF-8, NaN, lone surrogates anywhere), bad Content-Length and
chunked framing (bare-LF lines included), sent as raw bytes to the real server stack
(LimitedHTTPServer + rate limiter + the app, FakeNodeClient), token routes included.

Properties, for every request: never a 5xx; every 4xx answer carries the JSON error shape
``{"error": <reason phrase>, "message": ...}`` and the X-Prisn-Node header, except Tornado's
own bare ``400`` for a request that is not parseable HTTP (no body; see docs/security.md);
after any request not answered 2xx, the store's `state_hash` is unchanged when nothing was
proposed, and no deployment changed when the state machine refused a committed command
(404/409/422: its idempotency table then records the answer, by design).

Reproducible: derandomized in CI; `PRISN_FUZZ_EXAMPLES` / `PRISN_FUZZ_SEED` as in
tests/unit/test_fuzz_decoders.py.
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st
from tornado.httpserver import HTTPServer

from actors.api.limits import LimitedHTTPServer, RateLimiter
from prisn.fsm.commands import encode_entry
from prisn.messages import EntryKind
from tests.http.cases import SPEC, ApiCase, parse
from tests.strategies import fuzz, mutate_map, weird

DEADLINE = 10.0

# ---------------------------------------------------------------------- request strategies
ROUTES = ["/api/v1/deployments", "/api/v1/deployments/{}", "/api/v1/deployments/{}/scale",
          "/health", "/ready", "/metrics", "/api/v1/cluster/status", "/api/v1/cluster/health",
          "/api/v1/cluster/nodes/{}", "/api/v1/cluster/election", "/api/v1/openapi.json", "/{}",
          "/api/v1/{}", "/api/v1/tokens", "/api/v1/tokens/{}", "/api/v1/tokens/{}/revoke",
          "/api/v1/secrets", "/api/v1/secrets/{}"]
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get", "TRACE", "BREW",
           "CONNECT", "P0ST"]

segment = st.one_of(
    st.sampled_from(["web", "node2", "n1", "..", ".", "%2e%2e", "%FF%FE", "%00", "a%2Fb",
                     "x" * 70, "é", "%C3%A9", "-", "_a", "web%20x", "9" * 40]),
    st.text(max_size=12).map(lambda t: quote(t, safe="")),
    st.binary(max_size=6).map(lambda b: "".join(f"%{c:02X}" for c in b)),
)

query_value = st.one_of(
    st.sampled_from(["0", "-1", "1000", "1001", "1e3", "0x10", "", "%FF", "a b", "job",
                     "service", "cronjob", "default", "strong", "%00"]),
    st.integers(-(10**4000), 10**4000).map(str),  # huge numbers
    st.sampled_from(["9" * 400, "9" * 5000, "-" + "9" * 50]),
    st.text(max_size=8).map(lambda t: quote(t, safe="")),
)
query = st.lists(st.tuples(st.sampled_from(["namespace", "limit", "offset", "type", "x",
                                            "namespace"]), query_value), max_size=3).map(
    lambda kv: "?" + "&".join(f"{k}={v}" for k, v in kv) if kv else "")


# (method, route) pairs the app serves: most requests use one, so they reach the handlers
SERVED = [("GET", "/api/v1/deployments"), ("POST", "/api/v1/deployments"),
          ("GET", "/api/v1/deployments/{}"), ("PUT", "/api/v1/deployments/{}"),
          ("PATCH", "/api/v1/deployments/{}"), ("DELETE", "/api/v1/deployments/{}"),
          ("POST", "/api/v1/deployments/{}/scale"), ("GET", "/health"), ("GET", "/ready"),
          ("GET", "/metrics"), ("GET", "/api/v1/cluster/status"),
          ("GET", "/api/v1/cluster/health"), ("DELETE", "/api/v1/cluster/nodes/{}"),
          ("POST", "/api/v1/cluster/election"), ("POST", "/api/v1/tokens"),
          ("GET", "/api/v1/tokens"), ("POST", "/api/v1/tokens/{}/revoke"),
          ("DELETE", "/api/v1/tokens/{}"), ("POST", "/api/v1/secrets"),
          ("GET", "/api/v1/secrets"), ("GET", "/api/v1/secrets/{}"),
          ("PUT", "/api/v1/secrets/{}"), ("DELETE", "/api/v1/secrets/{}")]


@st.composite
def target(draw: st.DrawFn, route: str) -> bytes:
    path = route.replace("{}", draw(segment)) if "{}" in route else route
    if draw(st.integers(0, 9)) == 0:
        path += "/"
    return (path + draw(query)).encode("utf-8", "surrogateescape")


header_value = st.one_of(
    st.sampled_from([b"", b"strong", b"default", b"STRONG", b"application/json", b"text/plain",
                     b"Bearer x", b"\xff\xfe", b"x" * 2000, b"k-1", b"0", b"-5", b"9" * 30,
                     b"\xc3\xa9"]),
    st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)
header_name = st.sampled_from([b"Content-Type", b"X-Prisn-Consistency", b"Idempotency-Key",
                               b"X-Request-Id", b"Authorization", b"Accept", b"Expect",
                               b"X-Forwarded-For", b"Content-Encoding", b"X-Custom", b"Host"])


def _nest(depth: int, opener: str) -> str:
    return opener * depth + ("]" if opener == "[" else "}") * 0


LONE_SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff", "a\ud800b", "\udc80\ud800"]
TOKEN = {"name": "ci", "role": "developer", "namespaces": ["team"], "expires_in": "1h"}


@st.composite
def with_surrogate(draw: st.DrawFn, value: object) -> object:
    """`value` with one string (a value or a key, at any depth) replaced by or holding a
    lone surrogate: valid JSON once dumped, but text that cannot be CBOR-encoded."""
    lone = draw(st.sampled_from(LONE_SURROGATES))
    if isinstance(value, dict) and value:
        key = draw(st.sampled_from(sorted(value)))
        if draw(st.integers(0, 4)) == 0:  # the key itself
            out = {k: v for k, v in value.items() if k != key}
            out[key + lone] = value[key]
            return out
        return {**value, key: draw(with_surrogate(value[key]))}
    if isinstance(value, list) and value:
        i = draw(st.integers(0, len(value) - 1))
        return [*value[:i], draw(with_surrogate(value[i])), *value[i + 1:]]
    if isinstance(value, str) and draw(st.booleans()):
        return value + lone
    return lone


@st.composite
def body(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["spec", "spec", "spec", "mutated", "mutated", "json", "deep",
                                 "numbers", "bytes", "utf8", "constants", "empty", "scale",
                                 "election", "surrogate", "surrogate", "token"]))
    if kind == "spec":
        return json.dumps({**SPEC, "name": draw(st.sampled_from(["web", "api", "w2"]))}).encode()
    if kind == "mutated":
        m = draw(mutate_map(dict(SPEC)))
        try:
            return json.dumps(m, default=repr).encode()
        except (TypeError, ValueError):
            return b"{}"
    if kind == "json":
        v = draw(weird)
        try:
            return json.dumps(v, default=repr).encode()
        except (TypeError, ValueError):
            return b"[]"
    if kind == "deep":
        depth = draw(st.sampled_from([100, 1000, 20000, 100000]))
        opener = draw(st.sampled_from(["[", '{"a":']))
        closer = "]" if opener == "[" else "}"
        return (opener * depth + "1" + closer * depth * draw(st.integers(0, 1))).encode()
    if kind == "numbers":
        return draw(st.sampled_from([b'{"name":"n","source":"s","replicas":' + b"9" * 5000 + b"}",
                                     b'{"name":"n","source":"s","replicas":1e400}',
                                     b'{"name":"n","source":"s","port":-1e-400}',
                                     b'{"replicas": 123456789012345678901234567890}',
                                     b'{"name":"n","source":"s","replicas":1.0}']))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "utf8":
        return b'{"name":"\xff\xfe","source":"\xc3"}'
    if kind == "constants":
        return draw(st.sampled_from([b"NaN", b'{"replicas": NaN}', b"Infinity",
                                     b'{"replicas": -Infinity}', b'{"a":1,"a":2}', b"null",
                                     b'"str"', b"[1,2", b"{\"name\": \"x\"} trailing"]))
    if kind == "scale":
        return json.dumps({"replicas": draw(weird)}, default=repr).encode()
    if kind == "election":
        return json.dumps({"target": draw(weird)}, default=repr).encode()
    if kind == "surrogate":
        base = draw(st.sampled_from([
            {**SPEC, "env": {"HOME": "/h", "PATH": "/bin"}, "args": ["-v", "x"],
             "namespace": "team", "schedule": "* * * * *", "runtime": "python3"},
            TOKEN, {"replicas": 2}, {"target": "node2"}, {"a": [{"b": ["c"]}]}]))
        return json.dumps(draw(with_surrogate(base))).encode()  # ASCII: \udXXX escapes
    if kind == "token":
        return json.dumps(draw(st.sampled_from([TOKEN, {"name": "admin", "role": "admin"},
                                                {}, {"name": "x", "role": "root"}]))).encode()
    return b""


@st.composite
def raw_request(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    """(method, request bytes, whether the request is complete: False when the framing
    announces more body than is sent, so the server may rightly wait for the rest)."""
    if draw(st.integers(0, 3)):
        method, route = draw(st.sampled_from(SERVED))
    else:
        method, route = draw(st.sampled_from(METHODS)), draw(st.sampled_from(ROUTES))
    data = draw(body()) if method.upper() not in ("GET", "HEAD") or draw(st.booleans()) else b""
    lines = [f"{method} ".encode() + draw(target(route)) + b" HTTP/1.1", b"Host: fuzz"]
    if draw(st.integers(0, 4)):  # mostly JSON, so bodies get past the 415 to the handlers
        lines.append(b"Content-Type: application/json")
    for _ in range(draw(st.integers(0, 4)) if draw(st.booleans()) else 0):
        lines.append(draw(header_name) + b": " + draw(header_value))
    framing = "length" if draw(st.integers(0, 9)) < 6 else draw(st.sampled_from(
        ["none", "short", "long", "negative", "garbage", "double", "chunked", "badchunk",
         "barelf"]))
    complete = framing not in ("long", "badchunk", "double")
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(data))
    elif framing == "short" and data:
        lines.append(b"Content-Length: %d" % (len(data) // 2))
    elif framing == "long":
        lines.append(b"Content-Length: %d" % (len(data) + 10))
    elif framing == "negative":
        lines.append(b"Content-Length: -1")
    elif framing == "garbage":
        lines.append(b"Content-Length: " + draw(st.sampled_from([b"abc", b"1e3", b"0x10",
                                                                 b"99999999999999999999999",
                                                                 b" 5", b"+5"])))
    elif framing == "double":
        lines += [b"Content-Length: %d" % len(data), b"Content-Length: %d" % (len(data) + 1)]
    elif framing in ("chunked", "badchunk", "barelf"):
        lines.append(b"Transfer-Encoding: chunked")
        if framing == "barelf":  # complete: it must be answered (400) without waiting
            size_end, data_end, last_end = draw(st.sampled_from([
                (b"\n", b"\n", b"\n"), (b"\n", b"\r\n", b"\r\n"), (b"\r\n", b"\r\n", b"\n"),
                (b"\n", b"\r\n", b"\n"), (b"\r\n", b"\n", b"\n")]))
            if not data:
                last_end = b"\n"  # every case holds at least one bare-LF size line
            data = (b"%x" % len(data) + size_end + data + data_end if data else b"") + \
                b"0" + last_end + b"\r\n"
        elif framing == "chunked":
            data = (b"%x\r\n" % len(data) + data + b"\r\n" if data else b"") + b"0\r\n\r\n"
        else:
            data = draw(st.sampled_from([b"zz\r\nabc\r\n0\r\n\r\n", b"ffffffffffffffff\r\nx",
                                         b"5\r\nab\r\n", b"-1\r\n\r\n"]))
    lines.append(b"Connection: close")
    return method, b"\r\n".join(lines) + b"\r\n\r\n" + data, complete


def deployments(store: Any) -> list[dict[str, Any]]:
    return store.list(limit=10**6)[0]  # type: ignore[no-any-return]


class TestFuzzHttp(ApiCase):
    def get_app(self) -> Any:
        app = super().get_app()
        app.ctx.limiter = RateLimiter(1e9, 10**9)  # on, so the hook is exercised, never hit
        return app

    def get_http_server(self) -> HTTPServer:
        return LimitedHTTPServer(self.app, max_body_size=self.max_body, max_header_size=16384,
                                 max_connections=64, sweep_interval=0)

    async def _exchange(self, data: bytes, complete: bool) -> bytes:
        """Send `data` and read until the server closes (every request says Connection:
        close). An incomplete request may rightly get no answer: give up after a short
        silence (Tornado closes a connection whose reading side is shut, so no half-close)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.get_http_port())
        out = b""
        try:
            writer.write(data)
            await writer.drain()
            while True:
                chunk = await asyncio.wait_for(reader.read(65536),
                                               DEADLINE if complete else 0.3)
                if not chunk:
                    return out
                out += chunk
        except (ConnectionResetError, BrokenPipeError):
            return out
        except TimeoutError:
            if complete:
                raise
            return out
        finally:
            writer.close()

    def send(self, data: bytes, complete: bool = True) -> bytes:
        return self.io_loop.run_sync(lambda: self._exchange(data, complete),
                                     timeout=DEADLINE + 5)

    @fuzz(ci_examples=300)
    @given(req=raw_request())
    def test_random_requests(self, req: tuple[str, bytes, bool]) -> None:
        method, data, complete = req
        node, store = self.node, self.node.store
        before, deps_before, proposed = store.state_hash(), deployments(store), len(node.proposals)
        reply = parse(self.send(data, complete))
        after = store.state_hash()
        if reply is None:  # closed without an answer (body never completed, framing error)
            assert after == before and len(node.proposals) == proposed, data[:300]
            return
        status, headers, payload = reply
        assert status < 500, (status, payload[:300], data[:300])
        if not 200 <= status < 300:
            if len(node.proposals) == proposed:  # refused at the API: nothing at all changed
                assert after == before, (status, data[:300])
            else:  # refused by the state machine after commit (404, 409, 422): only the
                # idempotency table records the answer; no deployment changed
                assert status in (404, 409, 422), (status, data[:300])
                assert deployments(store) == deps_before, (status, data[:300])
        if status < 400 or method.upper() == "HEAD":
            return
        if not payload and status == 400 and "x-prisn-node" not in headers:
            return  # Tornado's bare answer to unparseable HTTP (framing, start line)
        assert headers.get("x-prisn-node") == "node1", (status, headers)
        err = json.loads(payload)
        assert set(err) >= {"error", "message"}, err
        assert err["error"] == HTTPStatus(status).phrase, err
        assert isinstance(err["message"], str) and err["message"], err

    @fuzz(ci_examples=150)
    @given(case=st.sampled_from([
        ("POST", "/api/v1/deployments", {**SPEC, "name": "new", "env": {"HOME": "/h"},
                                         "args": ["-v", "x"], "runtime": "python3"}),
        ("PUT", "/api/v1/deployments/web", {"source": "s", "env": {"A": "1"}, "args": ["a"]}),
        ("PATCH", "/api/v1/deployments/web", {"source": "s2", "env": {"B": "2"}}),
        ("POST", "/api/v1/deployments/web/scale", {"replicas": 3}),
        ("POST", "/api/v1/tokens", TOKEN),
        ("POST", "/api/v1/cluster/election", {"target": "node2"}),
    ]).flatmap(lambda c: st.tuples(st.just(c[0]), st.just(c[1]), with_surrogate(c[2]))))
    def test_lone_surrogates_anywhere(self, case: tuple[str, str, Any]) -> None:
        """Every write route, a body the route would accept but for one lone surrogate in
        one string (value or key, any depth): always a JSON 400 naming a field, nothing
        proposed, nothing changed (issue 17: it used to be a 500 and a leaked waiter)."""
        method, path, value = case
        if self.node.store.get(None, "web") is None:
            self.node.store.apply(self.node.store.applied_index + 1, EntryKind.COMMAND,
                                  encode_entry("t", 0, self.app.ctx.commands.create(
                                      dict(SPEC))))
        data = json.dumps(value).encode()
        before = (self.node.store.state_hash(), len(self.node.proposals),
                  list(self.node.transfers))
        reply = parse(self.send(
            b"%s %s HTTP/1.1\r\nHost: f\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n"
            % (method.encode(), path.encode(), len(data)) + data))
        assert reply is not None
        status, headers, payload = reply
        assert status == 400, (status, payload[:300], data[:300])
        err = json.loads(payload)
        assert err["error"] == "Bad Request" and "surrogate" in err["message"], err
        assert (self.node.store.state_hash(), len(self.node.proposals),
                list(self.node.transfers)) == before

    def test_the_fuzzer_reaches_the_handlers(self) -> None:
        """Companion: the request builder makes requests the app accepts (201) and refuses
        with each common status, so the property above is not vacuous."""
        seen = set()
        for data in (
            b"POST /api/v1/deployments HTTP/1.1\r\nHost: f\r\nContent-Length: %d\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n\r\n"
            % len(json.dumps(SPEC)) + json.dumps(SPEC).encode(),
            b"GET /api/v1/deployments/%FF HTTP/1.1\r\nHost: f\r\nConnection: close\r\n\r\n",
            b"BREW /health HTTP/1.1\r\nHost: f\r\nConnection: close\r\n\r\n",
            b"POST /api/v1/deployments HTTP/1.1\r\nHost: f\r\nContent-Length: -1\r\n"
            b"Connection: close\r\n\r\n",
            b"GET /api/v1/deployments?limit=" + b"9" * 400 + b" HTTP/1.1\r\nHost: f\r\n"
            b"Connection: close\r\n\r\n",
        ):
            reply = parse(self.send(data))
            assert reply is not None
            seen.add(reply[0])
        assert {201, 400, 405} <= seen, seen

    def test_issue_17_corpus_cases(self) -> None:
        """Companion: the new corpus cases are answered as the property demands: a lone
        surrogate anywhere in a body is a JSON 400 naming its field (never a 500) on every
        write route; bare-LF chunk framing is Tornado's bare 400 at once, never a wait."""
        def post(path: str, body: bytes, method: str = "POST") -> tuple[int, dict[str, str],
                                                                         bytes]:
            reply = parse(self.send(
                b"%s %s HTTP/1.1\r\nHost: f\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                % (method.encode(), path.encode(), len(body)) + body))
            assert reply is not None
            return reply

        assert post("/api/v1/deployments", json.dumps(SPEC).encode())[0] == 201
        for method, path, value, field in [
            ("POST", "/api/v1/deployments", {**SPEC, "name": "x", "source": "\ud800"}, "source"),
            ("PUT", "/api/v1/deployments/web", {"source": "s", "env": {"A": "\udfff"}},
             "env.A"),
            ("PATCH", "/api/v1/deployments/web", {"args": ["\udc00"]}, "args[0]"),
            ("POST", "/api/v1/deployments/web/scale", {"replicas": 1, "\ud800": 0}, "body"),
            ("POST", "/api/v1/tokens", {**TOKEN, "namespaces": ["\udbff"]}, "namespaces[0]"),
            ("POST", "/api/v1/cluster/election", {"target": "\ud800"}, "target"),
        ]:
            before = (self.node.store.state_hash(), len(self.node.proposals))
            status, _, payload = post(path, json.dumps(value).encode(), method)
            assert status == 400, (path, payload)
            assert json.loads(payload)["message"].startswith(f"{field}:"), payload
            assert (self.node.store.state_hash(), len(self.node.proposals)) == before
        for framing in (b"5\nhello\n0\n\n", b"5\r\nhello\r\n0\n\r\n", b"0\n\r\n"):
            reply = parse(self.send(b"POST /api/v1/deployments HTTP/1.1\r\nHost: f\r\n"
                                    b"Content-Type: application/json\r\n"
                                    b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                                    + framing))
            assert reply is not None and reply[0] == 400, framing

# ---------------------------------------------------------------------- CORS and Host (issue 17)
# Oracle lists, independent of `RequestGuard`: the app below allows the origin
# https://app.example and the extra hosts api.example and *.corp.example; its own name is
# node1.local. A Host of None means the header is left out.
GUARD_ORIGIN = "https://app.example"
HOSTS_OK = [None, b"", b"localhost", b"LOCALHOST:7331", b"127.0.0.1", b"127.0.0.1:1",
            b"[::1]:7331", b"10.1.2.3:80", b"node1.local", b"Node1.Local.", b"api.example:9",
            b"x.corp.example", b"a.b.corp.example:7331"]
HOSTS_BAD = [b"evil.example", b"evil.example:7331", b"localhost.evil.example",
             b"127.0.0.1.nip.io", b"corp.example", b"xcorp.example", b"api.example.evil",
             b"node1", b"\xff", b"a b", b"evil.example.", b"1.2.3.4.evil"]
ORIGINS_OK = [None, b"https://app.example", b"HTTPS://APP.EXAMPLE", b"https://app.example/"]
ORIGINS_BAD = [b"https://evil.example", b"http://app.example", b"null", b"",
               b"https://app.example:8443", b"https://app.example.evil", b"\xff\xfe"]
TYPES_OK = [b"application/json", b"application/json; charset=utf-8", b"APPLICATION/JSON",
            b" application/json ;charset=UTF-8"]
TYPES_BAD = [None, b"text/plain", b"application/x-www-form-urlencoded", b"",
             b"multipart/form-data; boundary=x", b"application/jsonx", b"text/json",
             b"application/json, text/plain"]


@st.composite
def guarded_request(draw: st.DrawFn) -> dict[str, Any]:
    """A request that a browser page could make: Host, Origin, Content-Type and body from
    the oracle lists, method and route from those the app serves (OPTIONS included)."""
    method, route = draw(st.sampled_from(SERVED))
    preflight = draw(st.integers(0, 4)) == 0
    origin = draw(st.sampled_from(ORIGINS_OK + ORIGINS_BAD))
    return {
        "method": "OPTIONS" if preflight else method,
        "request_method": method if preflight and draw(st.booleans()) else None,
        "path": draw(target(route)),
        "host": draw(st.sampled_from(HOSTS_OK + HOSTS_BAD)),
        "origin": origin,
        "type": draw(st.sampled_from(TYPES_OK + TYPES_BAD)),
        "body": (json.dumps({**SPEC, "name": draw(st.sampled_from(["web", "api"]))}).encode()
                 if draw(st.integers(0, 3)) else b""),
        "chunked": draw(st.integers(0, 5)) == 0,
    }


def guarded_bytes(r: dict[str, Any]) -> bytes:
    lines = [r["method"].encode() + b" " + r["path"] + b" HTTP/1.1"]
    for name, key in ((b"Host", "host"), (b"Origin", "origin"), (b"Content-Type", "type")):
        if r[key] is not None:
            lines.append(name + b": " + r[key])
    if r["request_method"] is not None:
        lines.append(b"Access-Control-Request-Method: " + r["request_method"].encode())
    data = r["body"]
    if r["chunked"]:
        lines.append(b"Transfer-Encoding: chunked")
        data = (b"%x\r\n" % len(data) + data + b"\r\n" if data else b"") + b"0\r\n\r\n"
    else:
        lines.append(b"Content-Length: %d" % len(data))
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + data


class TestFuzzCorsHost(ApiCase):
    """Issue 17, item 5: whatever a page puts in Host, Origin and Content-Type, a foreign
    Host is 421, a foreign Origin 403, a non-JSON body 415, in that order, and none of them
    changes anything; an allowed origin gets its CORS answer; never a 5xx."""

    get_http_server = TestFuzzHttp.get_http_server
    _exchange = TestFuzzHttp._exchange
    send = TestFuzzHttp.send

    def get_app(self) -> Any:
        from actors.api.guard import RequestGuard

        app = super().get_app()
        app.ctx.guard = RequestGuard.build(origins=[GUARD_ORIGIN],
                                           allowed_hosts=["api.example", "*.corp.example"],
                                           own=["node1.local"])
        return app

    @fuzz(ci_examples=300)
    @given(req=guarded_request())
    def test_cross_site_requests(self, req: dict[str, Any]) -> None:
        node, store = self.node, self.node.store
        before, proposed = store.state_hash(), len(node.proposals)
        reply = parse(self.send(guarded_bytes(req)))
        assert reply is not None, req
        status, headers, payload = reply
        assert status < 500, (status, payload[:300], req)
        if not payload and status == 400 and "x-prisn-node" not in headers:
            # Tornado's bare answer to a request it cannot frame (a body without Host)
            assert store.state_hash() == before and len(node.proposals) == proposed, req
            return
        if status == 400 and b"Invalid unicode in url" in payload:  # before any handler code
            assert store.state_hash() == before and len(node.proposals) == proposed, req
            return
        origin = req["origin"]
        has_body = req["chunked"] or bool(req["body"])
        if req["host"] in HOSTS_BAD:
            expected: int | None = 421
        elif origin in ORIGINS_BAD:
            expected = 403
        elif req["method"] == "OPTIONS" and origin is not None and req["request_method"]:
            expected = 204
        elif has_body and req["type"] in TYPES_BAD:
            expected = 415
        else:
            expected = None  # past the guard: whatever the handler answers
        if expected is not None:
            assert status == expected, (status, payload[:300], req)
        else:
            assert status not in (421, 415), (status, payload[:300], req)
            if status == 403:
                assert b"cross-origin" not in payload, (payload[:300], req)
        if expected in (421, 403, 415, 204):  # refused (or a preflight): nothing changed
            assert store.state_hash() == before and len(node.proposals) == proposed, req
        if expected in (421, 403, 415):
            err = json.loads(payload)
            assert err["error"] == HTTPStatus(status).phrase and err["message"], err
            assert headers.get("x-prisn-node") == "node1", headers
        assert headers.get("vary") == "Origin", headers  # a CORS list is configured
        if origin in ORIGINS_OK and origin is not None and expected != 421:
            assert headers.get("access-control-allow-origin") == origin.decode(), headers
        else:
            assert "access-control-allow-origin" not in headers, headers
        if expected == 204:
            assert "access-control-allow-methods" in headers, headers
            assert "Content-Type" in headers["access-control-allow-headers"], headers
