"""benchmarks.loadgen against an in-process asyncio HTTP server: counting, parsing, percentiles.

No timing assertions: only counts, statuses, and what the server saw.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

# `benchmarks` is a top-level folder of the repo, not an installed package: make it importable
# however pytest is started (plain `pytest` does not put the repo root on sys.path).
_REPO_ROOT = str(Path(__file__).resolve().parents[2])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from benchmarks.loadgen import (  # noqa: E402
    Config,
    Result,
    make_builder,
    percentile,
    read_response,
    run,
)


@dataclass
class Seen:
    connections: int = 0
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)


async def _serve_one_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen
) -> None:
    """A tiny HTTP/1.1 keep-alive server: /r?n=N answers 500 when N % 4 == 0, else 200; the
    200s use chunked encoding when N % 3 == 0, Content-Length otherwise."""
    seen.connections += 1
    try:
        for _ in range(10_000):
            request_line = await reader.readline()
            if not request_line:
                return
            method, target, _version = request_line.decode().split(" ", 2)
            headers: dict[str, str] = {}
            for _ in range(100):
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                k, _, v = line.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            seen.requests.append((method, target, headers, body))
            q = parse_qs(urlsplit(target).query)
            n = int(q.get("n", ["1"])[0])
            if n % 4 == 0:
                payload = b'{"error": "nope"}'
                writer.write(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(payload), payload)
                )
            elif n % 3 == 0:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"
                )
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def _with_server(seen: Seen, cfg_for_port: Callable[[int], Config]) -> Result:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _serve_one_connection(r, w, seen)

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(30):
            result: Result = await run(cfg_for_port(port))
    finally:
        server.close()
        await server.wait_closed()
    return result


def test_counts_statuses_and_keepalive() -> None:
    seen = Seen()

    def cfg(port: int) -> Config:
        return Config(
            targets=[f"127.0.0.1:{port}"],
            concurrency=4,
            requests=100,
            duration=None,
            method="POST",
            path="/r?n={n}&w={w}",
            body='{"seq": {n}, "worker": {w}}',
            headers={"X-Seq": "{n}"},
        )

    result = asyncio.run(_with_server(seen, cfg))

    assert result.requests == 100
    assert result.ok == 75  # n = 0..99, every fourth (n % 4 == 0) gets a 500
    assert result.non_2xx == 25
    assert result.errors == 0
    assert result.status_counts == {"200": 75, "500": 25}
    assert result.connects == 4 and seen.connections == 4  # one keep-alive connection each
    assert len(seen.requests) == 100
    ns = set()
    workers = set()
    for method, target, headers, body in seen.requests:
        q = parse_qs(urlsplit(target).query)
        n, w = int(q["n"][0]), int(q["w"][0])
        assert method == "POST"
        assert json.loads(body) == {"seq": n, "worker": w}
        assert headers["x-seq"] == str(n)
        assert headers["content-type"] == "application/json"
        ns.add(n)
        workers.add(w)
    assert ns == set(range(100))
    assert workers == {0, 1, 2, 3}
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms <= result.max_ms
    assert result.ops_per_s > 0


def test_warmup_requests_are_not_counted() -> None:
    seen = Seen()

    def cfg(port: int) -> Config:
        return Config(
            targets=[f"127.0.0.1:{port}"],
            concurrency=2,
            requests=10,
            duration=None,
            warmup=0.2,
            path="/r?n={n}",
        )

    result = asyncio.run(_with_server(seen, cfg))
    assert result.requests == 10
    assert result.ok + result.non_2xx == 10
    assert len(seen.requests) >= 10  # warmup requests reached the server but are not counted


def test_connection_errors_are_counted() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # nothing listens here once closed
    result = asyncio.run(
        run(Config(targets=[f"127.0.0.1:{dead_port}"], concurrency=2, requests=6, duration=None))
    )
    assert result.requests == 6
    assert result.errors == 6
    assert result.ok == 0 and result.ops_per_s == 0.0
    assert result.p99_ms == 0.0


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 90) == 90.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 51) == 3.0


def test_read_response_framings() -> None:
    async def parse(raw: bytes, method: str = "GET") -> tuple[int, bytes, bool]:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        resp = await read_response(reader, method)
        return resp.status, resp.body, resp.keep_alive

    assert asyncio.run(
        parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nabc")
    ) == (201, b"abc", True)
    assert asyncio.run(
        parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n")
    ) == (200, b"a", True)
    assert asyncio.run(parse(b"HTTP/1.0 200 OK\r\n\r\nuntil-eof")) == (200, b"until-eof", False)
    assert asyncio.run(parse(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")) == (
        204,
        b"",
        False,
    )
    assert asyncio.run(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD")) == (
        200,
        b"",
        True,
    )


def test_mode_request_bodies() -> None:
    create = make_builder(Config(targets=["x:1"], mode="prisn-create", spec_size=1024, run_id="ab"))
    req = create(7, 0)
    assert (req.method, req.path) == ("POST", "/api/v1/deployments")
    assert req.body is not None
    doc = json.loads(req.body)
    assert doc["name"] == "lg-ab-7" and doc["port"] == 0 and doc["replicas"] == 1
    assert len(doc["source"]) == 1024 and doc["source"].startswith("print(1)")

    put = make_builder(Config(targets=["x:1"], mode="etcd-put", spec_size=16, run_id="ab"))
    req = put(3, 1)
    assert (req.method, req.path) == ("POST", "/v3/kv/put")
    assert req.body is not None
    doc = json.loads(req.body)
    assert base64.b64decode(doc["key"]) == b"bench/ab/3"
    assert base64.b64decode(doc["value"]) == b"v" * 16

    read = make_builder(Config(targets=["x:1"], mode="prisn-read"), ["d0", "d1"])
    req = read(3, 0)
    assert (req.method, req.path, req.body) == ("GET", "/api/v1/deployments/d1", None)
    assert req.headers["X-Prisn-Consistency"] == "strong"

    rng = make_builder(Config(targets=["x:1"], mode="etcd-read"), ["bench/k0", "bench/k1"])
    req = rng(2, 0)
    assert (req.method, req.path) == ("POST", "/v3/kv/range")
    assert req.body is not None
    assert base64.b64decode(json.loads(req.body)["key"]) == b"bench/k0"
