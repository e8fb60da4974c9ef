"""An asyncio HTTP/1.1 load generator over raw keep-alive connections (stdlib only).

Each of ``concurrency`` workers owns one keep-alive connection to one target (targets are
assigned round-robin by worker number) and sends requests back to back: a closed-loop load.
Only 2xx responses count as successes; latency percentiles are over the 2xx responses.

Library use::

    from benchmarks.loadgen import Config, run
    result = asyncio.run(run(Config(targets=["127.0.0.1:7331"], mode="prisn-create",
                                    concurrency=8, duration=5)))

CLI::

    python -m benchmarks.loadgen 127.0.0.1:7331 --mode prisn-create -c 8 -d 5 --json

Modes: ``raw`` (method/path/body templates), ``prisn-create`` (``POST /api/v1/deployments``
with unique names), ``prisn-read`` (pre-creates ``read_names`` deployments, then strong reads
``GET /api/v1/deployments/{name}`` with ``X-Prisn-Consistency: strong``), ``etcd-put``
(``POST /v3/kv/put``, base64 key/value) and ``etcd-read`` (pre-puts keys, then linearizable
``POST /v3/kv/range``).

Templates (``--path``, ``--body``, header values) may use ``{n}`` (a sequence number unique
within the run), ``{w}`` (the worker number) and ``{run}`` (a random id of this run).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

MODES = ("raw", "prisn-create", "prisn-read", "etcd-put", "etcd-read")

MAX_HEADER_LINES = 256
MAX_INTERIM_RESPONSES = 16
MAX_CHUNKS = 1_000_000
MAX_BODY_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_REQUESTS_PER_WORKER = 100_000_000
RECONNECT_BACKOFF_S = 0.02


class HttpProtocolError(Exception):
    """The peer sent something that is not a valid HTTP/1.x response."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    keep_alive: bool

    def json(self) -> object:
        return json.loads(self.body.decode("utf-8")) if self.body else None


def parse_target(target: str) -> tuple[str, int]:
    """``"host:port"`` or ``":port"`` or ``"port"`` -> (host, port); host defaults to 127.0.0.1."""
    t = target.strip()
    if t.startswith("http://"):
        t = t[len("http://") :]
    t = t.rstrip("/")
    host, sep, port = t.rpartition(":")
    if not sep:
        host, port = "", t
    return (host or "127.0.0.1", int(port))


class HttpConnection:
    """One keep-alive HTTP/1.1 client connection; reconnects lazily after a close."""

    def __init__(self, host: str, port: int, connect_timeout: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.connects = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self) -> None:
        await self.close()
        async with asyncio.timeout(self.connect_timeout):
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self.connects += 1

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is None:
            return
        writer.close()
        try:
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
        except (OSError, TimeoutError):
            pass

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> Response:
        """Send one request and read its whole response within ``timeout`` seconds.

        On any exception the connection is closed (the next call reconnects)."""
        try:
            async with asyncio.timeout(timeout):
                if not self.connected:
                    await self.connect()
                assert self._reader is not None and self._writer is not None
                self._writer.write(self._encode(method, path, body, headers))
                await self._writer.drain()
                resp = await read_response(self._reader, method)
        except BaseException:
            await self.close()
            raise
        if not resp.keep_alive:
            await self.close()
        return resp

    def _encode(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        names = set()
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
            names.add(k.lower())
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        if "user-agent" not in names:
            lines.append("User-Agent: prisn-loadgen")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + body if body else head


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            return headers
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise HttpProtocolError(f"bad header line {line[:80]!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    raise HttpProtocolError("too many header lines")


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    for _ in range(MAX_CHUNKS):
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as e:
            raise HttpProtocolError(f"bad chunk size {size_line[:40]!r}") from e
        if size == 0:
            await _read_headers(reader)  # trailers, up to the blank line
            return b"".join(parts)
        total += size
        if total > MAX_BODY_BYTES:
            raise HttpProtocolError("chunked body too large")
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise HttpProtocolError("chunk not followed by CRLF")
    raise HttpProtocolError("too many chunks")


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> Response:
    """Read one HTTP/1.x response (status line, headers, Content-Length/chunked/EOF body)."""
    for _ in range(MAX_INTERIM_RESPONSES):
        status_line = (await reader.readuntil(b"\r\n")).decode("latin-1").rstrip("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpProtocolError(f"bad status line {status_line[:80]!r}")
        version, status = parts[0], int(parts[1])
        headers = await _read_headers(reader)
        if 100 <= status < 200 and status != 101:
            continue  # interim response (100 Continue, 103 Early Hints): the real one follows
        break
    else:
        raise HttpProtocolError("too many interim responses")

    conn_tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    if version == "HTTP/1.0":
        keep_alive = "keep-alive" in conn_tokens
    else:
        keep_alive = "close" not in conn_tokens

    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"].split(",")[0])
        except ValueError as e:
            raise HttpProtocolError("bad Content-Length") from e
        if length < 0 or length > MAX_BODY_BYTES:
            raise HttpProtocolError(f"unacceptable Content-Length {length}")
        body = await reader.readexactly(length)
    else:
        body = await reader.read(MAX_BODY_BYTES)  # delimited by EOF
        keep_alive = False
    return Response(status=status, headers=headers, body=body, keep_alive=keep_alive)


# --------------------------------------------------------------------------- workloads


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None


RequestBuilder = Callable[[int, int], Request]  # (n, w) -> request


def substitute(template: str, n: int, w: int, run_id: str) -> str:
    """Replace ``{n}``, ``{w}`` and ``{run}``; other braces (JSON) are left alone."""
    return template.replace("{n}", str(n)).replace("{w}", str(w)).replace("{run}", run_id)


def padded_source(spec_size: int) -> str:
    """A Python source of exactly ``spec_size`` bytes (at least ``print(1)``)."""
    base = "print(1)"
    if spec_size <= len(base) + 3:
        return base
    return base + "\n# " + "x" * (spec_size - len(base) - 3)


def padded_value(size: int) -> bytes:
    return b"print(1)" if size <= 0 else (b"v" * size)


def prisn_create_body(name: str, source: str, replicas: int = 1) -> bytes:
    return json.dumps({"name": name, "source": source, "port": 0, "replicas": replicas}).encode()


def etcd_put_body(key: bytes, value: bytes) -> bytes:
    return json.dumps(
        {"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()}
    ).encode()


@dataclass
class Config:
    targets: list[str]
    concurrency: int = 1
    duration: float | None = 10.0  # seconds of measurement (ignored when `requests` is set)
    requests: int | None = None  # measured request count (overrides duration)
    warmup: float = 0.0  # seconds of unmeasured load first
    mode: str = "raw"
    method: str = "GET"
    path: str = "/"
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    spec_size: int = 0  # prisn-create: bytes of `source`; etcd-put: bytes of the value
    replicas: int = 1  # prisn-create: the deployment's replicas
    read_names: int = 8  # prisn-read/etcd-read: deployments/keys made first, read round-robin
    timeout: float = 10.0  # per request
    connect_timeout: float = 5.0
    max_run_s: float = 3600.0  # hard cap on a whole run (count mode, stuck servers)
    max_requests_per_worker: int = DEFAULT_MAX_REQUESTS_PER_WORKER
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))


@dataclass
class Result:
    mode: str
    targets: list[str]
    concurrency: int
    duration_s: float  # measured wall time
    requests: int  # measured requests: ok + non_2xx + errors
    ok: int
    non_2xx: int
    errors: int
    ops_per_s: float  # ok / duration_s
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    status_counts: dict[str, int] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)
    connects: int = 0
    client_cpu_pct: float = 0.0  # this process's CPU time / wall time (100 = one core busy)
    machine_cpu_pct: float = 0.0  # all cores busy, /proc/stat (100 = every core busy); 0 if n/a

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.mode} c={self.concurrency} targets={','.join(self.targets)}: "
            f"{self.ops_per_s:.1f} ops/s over {self.duration_s:.2f}s; "
            f"ok={self.ok} non2xx={self.non_2xx} errors={self.errors}; latency ms "
            f"p50={self.p50_ms:.2f} p90={self.p90_ms:.2f} p99={self.p99_ms:.2f} "
            f"max={self.max_ms:.2f}; cpu: client {self.client_cpu_pct:.0f}% of a core, "
            f"machine {self.machine_cpu_pct:.0f}% of all cores"
        )


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None where unavailable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # without guest time, already counted in user
    return total - idle, total


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    if p <= 0:
        return sorted_values[0]
    rank = math.ceil(p / 100.0 * len(sorted_values))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def make_builder(cfg: Config, read_names: Sequence[str] = ()) -> RequestBuilder:
    """The function that makes request number ``n`` of worker ``w`` for ``cfg.mode``."""
    extra = dict(cfg.headers)
    run_id = cfg.run_id

    def hdrs(base: dict[str, str], n: int, w: int) -> dict[str, str]:
        out = dict(base)
        for k, v in extra.items():
            out[k] = substitute(v, n, w, run_id)
        return out

    json_ct = {"Content-Type": "application/json"}
    if cfg.mode == "prisn-create":
        src_json = json.dumps(padded_source(cfg.spec_size))
        replicas = int(cfg.replicas)

        def build_create(n: int, w: int) -> Request:
            body = (
                f'{{"name": "lg-{run_id}-{n}", "source": {src_json}, '
                f'"port": 0, "replicas": {replicas}}}'
            ).encode()
            return Request("POST", "/api/v1/deployments", hdrs(json_ct, n, w), body)

        return build_create

    if cfg.mode == "prisn-read":
        names = list(read_names)
        if not names:
            raise ValueError("prisn-read needs pre-created deployment names")
        strong = {"X-Prisn-Consistency": "strong"}

        def build_read(n: int, w: int) -> Request:
            name = names[n % len(names)]
            return Request("GET", f"/api/v1/deployments/{name}", hdrs(strong, n, w), None)

        return build_read

    if cfg.mode == "etcd-put":
        value_b64 = base64.b64encode(padded_value(cfg.spec_size)).decode()

        def build_put(n: int, w: int) -> Request:
            key = base64.b64encode(f"bench/{run_id}/{n}".encode()).decode()
            body = f'{{"key": "{key}", "value": "{value_b64}"}}'.encode()
            return Request("POST", "/v3/kv/put", hdrs(json_ct, n, w), body)

        return build_put

    if cfg.mode == "etcd-read":
        keys = [base64.b64encode(k.encode()).decode() for k in read_names]
        if not keys:
            raise ValueError("etcd-read needs pre-put keys")

        def build_range(n: int, w: int) -> Request:
            body = f'{{"key": "{keys[n % len(keys)]}"}}'.encode()  # linearizable by default
            return Request("POST", "/v3/kv/range", hdrs(json_ct, n, w), body)

        return build_range

    if cfg.mode != "raw":
        raise ValueError(f"unknown mode {cfg.mode!r}; one of {', '.join(MODES)}")
    method, path_t, body_t = cfg.method.upper(), cfg.path, cfg.body
    base = (
        dict(json_ct)
        if body_t is not None and not any(k.lower() == "content-type" for k in extra)
        else {}
    )

    def build_raw(n: int, w: int) -> Request:
        body = substitute(body_t, n, w, run_id).encode() if body_t is not None else None
        return Request(method, substitute(path_t, n, w, run_id), hdrs(base, n, w), body)

    return build_raw


async def precreate(cfg: Config, count: int) -> list[str]:
    """Create ``count`` deployments (prisn-read) or keys (etcd-read) to read, trying each
    target in turn until one accepts; returns their names."""
    etcd = cfg.mode == "etcd-read"
    names = [f"{'bench/' if etcd else 'lg-'}{cfg.run_id}-r{i}" for i in range(count)]
    conns = [HttpConnection(*parse_target(t), cfg.connect_timeout) for t in cfg.targets]
    src = padded_source(cfg.spec_size)
    path = "/v3/kv/put" if etcd else "/api/v1/deployments"
    try:
        for name in names:
            if etcd:
                body = etcd_put_body(name.encode(), padded_value(cfg.spec_size))
            else:
                body = prisn_create_body(name, src, cfg.replicas)
            last = "no target tried"
            created = False
            for attempt in range(3 * len(conns)):
                conn = conns[attempt % len(conns)]
                try:
                    resp = await conn.request(
                        "POST", path, body, {"Content-Type": "application/json"}, cfg.timeout
                    )
                except (OSError, HttpProtocolError, asyncio.IncompleteReadError) as e:
                    last = f"{conn.host}:{conn.port}: {type(e).__name__}: {e}"
                    await asyncio.sleep(0.1)
                    continue
                if 200 <= resp.status < 300 or resp.status == 409:
                    created = True
                    break
                last = f"{conn.host}:{conn.port}: HTTP {resp.status} {resp.body[:200]!r}"
            if not created:
                raise RuntimeError(f"could not create {name}: {last}")
    finally:
        for c in conns:
            await c.close()
    return names


@dataclass
class _State:
    measure_start: float
    deadline: float
    requests_limit: int | None
    claimed: int = 0
    next_n: int = 0
    ok: int = 0
    non_2xx: int = 0
    errors: int = 0
    last_end: float = 0.0
    latencies: list[float] = field(default_factory=list)
    status_counts: dict[str, int] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)
    connects: int = 0


_CLIENT_ERRORS = (
    OSError,
    HttpProtocolError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
)


async def _worker(w: int, cfg: Config, build: RequestBuilder, st: _State) -> None:
    host, port = parse_target(cfg.targets[w % len(cfg.targets)])
    conn = HttpConnection(host, port, cfg.connect_timeout)
    clock = time.perf_counter
    try:
        for _ in range(cfg.max_requests_per_worker):
            now = clock()
            if now >= st.deadline:
                break
            measured = now >= st.measure_start
            if measured and st.requests_limit is not None:
                if st.claimed >= st.requests_limit:
                    break
                st.claimed += 1
            n = st.next_n
            st.next_n += 1
            req = build(n, w)
            t1 = clock()
            try:
                resp = await conn.request(req.method, req.path, req.body, req.headers, cfg.timeout)
            except _CLIENT_ERRORS as e:
                t2 = clock()
                if measured:
                    st.errors += 1
                    kind = type(e).__name__
                    st.error_kinds[kind] = st.error_kinds.get(kind, 0) + 1
                    st.last_end = max(st.last_end, t2)
                # a refused connection fails at once: do not spin on a dead target
                await asyncio.sleep(min(RECONNECT_BACKOFF_S, max(st.deadline - clock(), 0.0)))
                continue
            t2 = clock()
            if not measured:
                continue
            st.last_end = max(st.last_end, t2)
            code = str(resp.status)
            st.status_counts[code] = st.status_counts.get(code, 0) + 1
            if 200 <= resp.status < 300:
                st.ok += 1
                st.latencies.append(t2 - t1)
            else:
                st.non_2xx += 1
    finally:
        st.connects += conn.connects
        await conn.close()


async def run(cfg: Config) -> Result:
    """Run one load test as described by ``cfg`` and return its measurements."""
    if not cfg.targets:
        raise ValueError("no targets")
    if cfg.concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    if cfg.requests is None and (cfg.duration is None or cfg.duration <= 0):
        raise ValueError("give a positive duration or a request count")
    if cfg.mode not in MODES:
        raise ValueError(f"unknown mode {cfg.mode!r}; one of {', '.join(MODES)}")
    names: list[str] = []
    if cfg.mode in ("prisn-read", "etcd-read"):
        names = await precreate(cfg, max(1, cfg.read_names))
    build = make_builder(cfg, names)

    cpu0 = time.process_time()
    ticks0 = _cpu_ticks()
    t0 = time.perf_counter()
    measure_start = t0 + max(cfg.warmup, 0.0)
    if cfg.requests is not None:
        deadline = t0 + cfg.max_run_s
    else:
        assert cfg.duration is not None
        deadline = measure_start + min(cfg.duration, cfg.max_run_s)
    st = _State(measure_start=measure_start, deadline=deadline, requests_limit=cfg.requests)
    tasks = [asyncio.create_task(_worker(w, cfg, build, st)) for w in range(cfg.concurrency)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    cpu_pct = 100.0 * (time.process_time() - cpu0) / max(time.perf_counter() - t0, 1e-9)
    ticks1 = _cpu_ticks()
    machine_pct = 0.0
    if ticks0 is not None and ticks1 is not None and ticks1[1] > ticks0[1]:
        machine_pct = 100.0 * (ticks1[0] - ticks0[0]) / (ticks1[1] - ticks0[1])
    end = st.last_end if st.last_end > 0 else time.perf_counter()
    elapsed = max(end - measure_start, 1e-9)
    lat = sorted(st.latencies)
    ms = 1000.0
    return Result(
        mode=cfg.mode,
        targets=list(cfg.targets),
        concurrency=cfg.concurrency,
        duration_s=elapsed,
        requests=st.ok + st.non_2xx + st.errors,
        ok=st.ok,
        non_2xx=st.non_2xx,
        errors=st.errors,
        ops_per_s=st.ok / elapsed,
        p50_ms=percentile(lat, 50) * ms,
        p90_ms=percentile(lat, 90) * ms,
        p99_ms=percentile(lat, 99) * ms,
        max_ms=(lat[-1] if lat else 0.0) * ms,
        mean_ms=(sum(lat) / len(lat) if lat else 0.0) * ms,
        status_counts=dict(sorted(st.status_counts.items())),
        error_kinds=dict(sorted(st.error_kinds.items())),
        connects=st.connects,
        client_cpu_pct=cpu_pct,
        machine_cpu_pct=machine_pct,
    )


# --------------------------------------------------------------------------- CLI


def _parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"header must be 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.loadgen",
        description="Closed-loop HTTP/1.1 keep-alive load generator (stdlib asyncio).",
    )
    p.add_argument(
        "targets", nargs="+", help="host:port (several: spread round-robin per connection)"
    )
    p.add_argument("-c", "--concurrency", type=int, default=1, help="connections (default 1)")
    p.add_argument(
        "-d", "--duration", type=float, default=10.0, help="measured seconds (default 10)"
    )
    p.add_argument(
        "-n",
        "--requests",
        type=int,
        default=None,
        help="measured request count instead of a duration",
    )
    p.add_argument("--warmup", type=float, default=0.0, help="unmeasured seconds first (default 0)")
    p.add_argument("--mode", choices=MODES, default="raw")
    p.add_argument("-X", "--method", default="GET", help="raw mode: method")
    p.add_argument("--path", default="/", help="raw mode: path template ({n}, {w}, {run})")
    p.add_argument("--body", default=None, help="raw mode: body template ({n}, {w}, {run})")
    p.add_argument(
        "-H",
        "--header",
        type=_parse_header,
        action="append",
        default=[],
        help="extra header 'Name: value' (repeatable; value is a template)",
    )
    p.add_argument(
        "--spec-size",
        type=int,
        default=0,
        help="prisn modes: pad `source` to this many bytes; etcd-put: value bytes",
    )
    p.add_argument("--replicas", type=int, default=1, help="prisn modes: replicas field")
    p.add_argument(
        "--read-names",
        type=int,
        default=8,
        help="prisn-read/etcd-read: deployments/keys to pre-create, then read round-robin",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout seconds")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(
        targets=list(args.targets),
        concurrency=args.concurrency,
        duration=args.duration,
        requests=args.requests,
        warmup=args.warmup,
        mode=args.mode,
        method=args.method,
        path=args.path,
        body=args.body,
        headers=dict(args.header),
        spec_size=args.spec_size,
        replicas=args.replicas,
        read_names=args.read_names,
        timeout=args.timeout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    result = asyncio.run(run(config_from_args(args)))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.summary())
        if result.status_counts:
            print("status:", result.status_counts)
        if result.error_kinds:
            print("errors:", result.error_kinds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
