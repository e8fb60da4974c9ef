"""A small HTTP client for the prisn API, used by the operator CLI (`prisn.cli_ops`).

Standard library only (`http.client`), one connection per request, JSON in and out. Runs on
the caller's thread; no state is shared between calls.

Errors:
- `Unreachable`: no server answered (refused, unknown host, timeout, connection reset).
- `ApiError`: the server answered with a status outside 2xx; it carries the status and the
  server's ``message`` (every prisn error body is ``{"error": ..., "message": ...}``).
- `BadServer`, `BadSetting`: a `--server`, `--ca-file` or `--token` value that cannot be used
  (raised by the constructor, before any request).

TLS: an ``https://`` server, or a bare ``host:port`` together with a `ca_file`, is reached over
HTTPS with certificate and host name verification, against `ca_file` when given, else the
system's trusted CAs. A `token` is sent as ``Authorization: Bearer <token>`` on every request.

Writes: every POST, PUT, PATCH and DELETE carries an ``Idempotency-Key``, and a 503 (no quorum,
a write timeout, a leader change) is retried once with the same key (`Client.request`), which
is what the server's 503 message asks a client to do.
"""

from __future__ import annotations

import http.client
import json
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode, urlsplit

DEFAULT_SERVER = "localhost:7331"
DEFAULT_PORT = 7331
DEFAULT_TIMEOUT = 30.0
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_RETRY_AFTER = 5.0  # seconds: a longer Retry-After is cut to this


class ClientError(Exception):
    """Anything that keeps a request from getting a usable answer."""


class BadServer(ClientError):
    """The `--server` value cannot be understood."""


class BadSetting(ClientError):
    """A `--ca-file` or `--token` value that cannot be used."""


class Unreachable(ClientError):
    """No server answered at `url`."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach prisn server at {url}: {reason}")
        self.url = url
        self.reason = reason


class ApiError(ClientError):
    """The server refused the request (status outside 2xx)."""

    def __init__(self, status: int, message: str, body: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.message = message
        self.body = body
        self.headers = headers or {}  # lower-cased names
        self.retried = False  # a write's answer to its second attempt (after a 503)

    def __str__(self) -> str:
        tail = ", after one retry with the same Idempotency-Key" if self.retried else ""
        return f"{self.message} (HTTP {self.status}{tail})"


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None for an empty body
    retried: bool = False  # a write answered on its second attempt (the first got 503)

    @property
    def node(self) -> str:
        """The node that served the request (``X-Prisn-Node``)."""
        return self.headers.get("x-prisn-node", "")

    @property
    def leader(self) -> str:
        """The leader that node knows (``X-Prisn-Leader``), "" if none."""
        return self.headers.get("x-prisn-leader", "")


@dataclass(frozen=True)
class Endpoint:
    scheme: str  # "http" or "https"
    host: str  # without brackets for IPv6
    port: int
    prefix: str  # path prefix without a trailing slash ("" normally)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.prefix}"


def parse_server(value: str, *, default_scheme: str = "http") -> Endpoint:
    """`host:port`, `:port`, `host`, `[v6]:port` or an `http(s)://` URL -> an Endpoint.

    A bare host or ``:port`` fills in ``localhost`` / port 7331 and uses `default_scheme`; a
    URL without a port uses the scheme's port (80 or 443).
    """
    text = value.strip()
    if not text:
        raise BadServer("--server must not be empty")
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https"):
            raise BadServer(f"--server URL must start with http:// or https://, got {value!r}")
        try:
            port = parts.port
        except ValueError:
            raise BadServer(f"--server has a bad port in {value!r}") from None
        if not parts.hostname:
            raise BadServer(f"--server URL has no host: {value!r}")
        if parts.query or parts.fragment:
            raise BadServer(f"--server URL must not have a query or fragment: {value!r}")
        default = 443 if parts.scheme == "https" else 80
        return Endpoint(parts.scheme, parts.hostname, port or default,
                        parts.path.rstrip("/"))
    if any(c.isspace() for c in text) or "/" in text:
        raise BadServer(f"--server must be host:port or a URL, got {value!r}")
    if text.startswith("["):  # [v6] or [v6]:port
        host, sep, rest = text[1:].partition("]")
        if not sep or not host or (rest and not rest.startswith(":")):
            raise BadServer(f"--server has a bad IPv6 address in {value!r}")
        port_text = rest[1:] if rest else ""
    elif text.count(":") > 1:
        raise BadServer(f"--server: write an IPv6 address as [addr]:port, got {value!r}")
    else:
        host, _, port_text = text.partition(":")
    if port_text == "" and text.endswith(":"):
        raise BadServer(f"--server has an empty port in {value!r}")
    port = DEFAULT_PORT
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise BadServer(f"--server has a bad port in {value!r}")
        port = int(port_text)
    return Endpoint(default_scheme, host or "localhost", port, "")


class Client:
    """Requests to one prisn server. `timeout` bounds connecting and each read."""

    def __init__(self, server: str = DEFAULT_SERVER, *, timeout: float = DEFAULT_TIMEOUT,
                 ca_file: str | None = None, token: str | None = None) -> None:
        self.endpoint = parse_server(server, default_scheme="https" if ca_file else "http")
        self.timeout = timeout
        self.ca_file = ca_file
        self._auth = {"Authorization": f"Bearer {_check_token(token)}"} if token else {}
        self._tls = _tls_context(ca_file) if self.endpoint.scheme == "https" else None

    @property
    def url(self) -> str:
        return self.endpoint.url

    # ------------------------------------------------------------------ raw
    def request(self, method: str, path: str, body: Any = None, *,
                query: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                allow: tuple[int, ...] = ()) -> Response:
        """Send one request; a status outside 2xx (and not in `allow`) raises `ApiError`.

        A write (POST, PUT, PATCH, DELETE) carries an ``Idempotency-Key`` (a fresh random
        one unless `headers` has one) and a 503 is retried once with the same key, after
        the server's ``Retry-After`` (at most `MAX_RETRY_AFTER` seconds): the server then
        returns the first attempt's answer if that one committed after all, and never
        applies the write twice. The `ApiError` or `Response` says whether it retried."""
        if method not in WRITE_METHODS:
            return self._once(method, path, body, query, headers, allow)
        h = dict(headers or {})
        if not any(k.lower() == "idempotency-key" for k in h):
            h["Idempotency-Key"] = secrets.token_hex(16)
        try:
            return self._once(method, path, body, query, h, allow)
        except ApiError as e:
            if e.status != 503 or 503 in allow:
                raise
            time.sleep(_retry_after(e.headers))  # the server asked us to wait that long
        try:
            r = self._once(method, path, body, query, h, allow)
        except ApiError as e:
            e.retried = True
            raise
        return Response(r.status, r.headers, r.body, retried=True)

    def _once(self, method: str, path: str, body: Any, query: dict[str, Any] | None,
              headers: dict[str, str] | None, allow: tuple[int, ...]) -> Response:
        """One request, no retry (see `request`)."""
        ep = self.endpoint
        target = ep.prefix + path
        q = {k: v for k, v in (query or {}).items() if v is not None}
        if q:
            target += "?" + urlencode(q)
        raw_body = isinstance(body, bytes)  # an artifact upload: sent as it is
        data = body if raw_body else (None if body is None else json.dumps(body).encode())
        h = {"Accept": "application/json", "User-Agent": "prisn-cli", **self._auth}
        if data is not None:
            h["Content-Type"] = "application/octet-stream" if raw_body else "application/json"
        h.update(headers or {})
        if self._tls is not None:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                ep.host, ep.port, timeout=self.timeout, context=self._tls)
        else:
            conn = http.client.HTTPConnection(ep.host, ep.port, timeout=self.timeout)
        connected = False
        try:
            conn.connect()
            connected = True
            conn.request(method, target, body=data, headers=h)
            resp = conn.getresponse()
            raw = resp.read()
            status = resp.status
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
        except TimeoutError:
            if not connected:
                raise Unreachable(self.url, f"connect timed out after {self.timeout:g}s") from None
            why = f"no answer within {self.timeout:g}s"
            if method not in ("GET", "HEAD"):
                why += " (the request may still be applied)"
            raise Unreachable(self.url, why) from None
        except socket.gaierror as e:
            raise Unreachable(self.url, f"cannot resolve host {ep.host!r} ({e.strerror})") from None
        except ssl.SSLCertVerificationError as e:
            where = f"the CA in --ca-file {self.ca_file}" if self.ca_file else (
                "the system's trusted CAs; pass the CA that signed it with --ca-file or "
                "PRISN_CA_FILE")
            raise Unreachable(self.url, f"TLS certificate verification failed "
                              f"({e.verify_message or e.reason}): the server's certificate "
                              f"is not trusted by {where}") from None
        except ssl.SSLError as e:
            raise Unreachable(self.url, f"TLS error: {e.reason or e}") from None
        except ConnectionResetError:  # includes http.client.RemoteDisconnected
            why = "the server closed the connection without answering"
            if ep.scheme == "http":
                why += " (if it serves HTTPS, use an https:// URL or --ca-file)"
            raise Unreachable(self.url, why) from None
        except ConnectionRefusedError:
            raise Unreachable(self.url, "connection refused") from None
        except (OSError, http.client.HTTPException) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else (str(e) or
                                                                               type(e).__name__)
            raise Unreachable(self.url, reason) from None
        finally:
            conn.close()
        parsed = _parse_body(raw, hdrs.get("content-type", ""))
        if not 200 <= status < 300 and status not in allow:
            raise ApiError(status, _message(status, parsed, raw), parsed, hdrs)
        return Response(status, hdrs, parsed)

    def download(self, path: str, out: BinaryIO, *, headers: dict[str, str] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, str]:
        """GET `path` and stream the body into `out` (1 MiB at a time); the lower-cased
        response headers. `progress(done, total)` after each chunk. `ApiError` for a status
        outside 2xx, `Unreachable` when no server answers or the body ends early."""
        ep = self.endpoint
        h = {"User-Agent": "prisn-cli", **self._auth, **(headers or {})}
        if self._tls is not None:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                ep.host, ep.port, timeout=self.timeout, context=self._tls)
        else:
            conn = http.client.HTTPConnection(ep.host, ep.port, timeout=self.timeout)
        try:
            try:
                conn.request("GET", ep.prefix + path, headers=h)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                raise Unreachable(self.url, str(e) or type(e).__name__) from None
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            if not 200 <= resp.status < 300:
                raw = resp.read(1 << 20)
                parsed = _parse_body(raw, hdrs.get("content-type", ""))
                raise ApiError(resp.status, _message(resp.status, parsed, raw), parsed)
            total = int(hdrs.get("content-length", "0") or 0)
            done = 0
            while True:
                try:
                    chunk = resp.read(1 << 20)
                except (OSError, http.client.HTTPException) as e:
                    raise Unreachable(self.url, f"download broke off after {done} bytes: "
                                      f"{e or type(e).__name__}") from None
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            if total and done != total:
                raise Unreachable(self.url, f"download broke off after {done} of {total} "
                                  "bytes")
            return hdrs
        finally:
            conn.close()

    def json_lines(self, path: str, *, query: dict[str, Any] | None = None
                   ) -> Iterator[dict[str, Any]]:
        """GET `path` and yield each line of its newline-delimited JSON body as it arrives
        (a streamed answer such as an execution log follow; a line that is not an object is
        skipped). `ApiError` for a status outside 2xx, `Unreachable` when no server answers
        or nothing arrives for `timeout` seconds (the server sends a line at least every
        10 s)."""
        ep = self.endpoint
        target = ep.prefix + path
        q = {k: v for k, v in (query or {}).items() if v is not None}
        if q:
            target += "?" + urlencode(q)
        h = {"Accept": "application/x-ndjson", "User-Agent": "prisn-cli", **self._auth}
        if self._tls is not None:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                ep.host, ep.port, timeout=self.timeout, context=self._tls)
        else:
            conn = http.client.HTTPConnection(ep.host, ep.port, timeout=self.timeout)
        try:
            try:
                conn.request("GET", target, headers=h)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                raise Unreachable(self.url, str(e) or type(e).__name__) from None
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            if not 200 <= resp.status < 300:
                raw = resp.read(1 << 20)
                parsed = _parse_body(raw, hdrs.get("content-type", ""))
                raise ApiError(resp.status, _message(resp.status, parsed, raw), parsed, hdrs)
            while True:
                try:
                    line = resp.readline(4 << 20)
                except (OSError, http.client.HTTPException) as e:
                    raise Unreachable(self.url, f"the stream broke off: "
                                      f"{e or type(e).__name__}") from None
                if not line:
                    return
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    yield obj
        finally:
            conn.close()

    # ------------------------------------------------------------------ cluster
    def cluster_status(self) -> Response:
        return self.request("GET", "/api/v1/cluster/status")

    def cluster_health(self) -> Response:
        """200 healthy or 503 unhealthy (both returned: the body says which)."""
        return self.request("GET", "/api/v1/cluster/health", allow=(503,))

    def remove_node(self, node_id: str) -> Response:
        return self.request("DELETE", f"/api/v1/cluster/nodes/{_seg(node_id)}")

    def election(self, target: str | None = None) -> Response:
        """Leadership transfer to `target` (any member), or to the serving node if None."""
        return self.request("POST", "/api/v1/cluster/election",
                            None if target is None else {"target": target})

    # ------------------------------------------------------------------ deployments
    def create(self, spec: dict[str, Any], *, namespace: str | None = None) -> Response:
        return self.request("POST", "/api/v1/deployments", spec,
                            query={"namespace": namespace})

    def replace(self, name: str, spec: dict[str, Any], *,
                namespace: str | None = None) -> Response:
        """PUT: the whole new spec of an existing deployment."""
        return self.request("PUT", f"/api/v1/deployments/{_seg(name)}", spec,
                            query={"namespace": namespace})

    def upload_artifact(self, data: bytes, digest: str) -> Response:
        """POST the raw archive; the server checks it against `digest` (400 on mismatch)."""
        return self.request("POST", "/api/v1/artifacts", data,
                            headers={"X-Prisn-Digest": digest})

    def deployments(self, *, namespace: str | None = None, limit: int = 1000, offset: int = 0,
             strong: bool = False) -> Response:
        return self.request("GET", "/api/v1/deployments",
                            query={"namespace": namespace, "limit": limit, "offset": offset},
                            headers=_consistency(strong))

    def deployment(self, name: str, *, namespace: str | None = None, strong: bool = False) -> Response:
        return self.request("GET", f"/api/v1/deployments/{_seg(name)}",
                            query={"namespace": namespace}, headers=_consistency(strong))

    def scale(self, name: str, replicas: int, *, namespace: str | None = None) -> Response:
        return self.request("POST", f"/api/v1/deployments/{_seg(name)}/scale",
                            {"replicas": replicas}, query={"namespace": namespace})

    def delete(self, name: str, *, namespace: str | None = None) -> Response:
        return self.request("DELETE", f"/api/v1/deployments/{_seg(name)}",
                            query={"namespace": namespace})

    def logs(self, name: str, *, namespace: str | None = None, instance: str | None = None,
             offset: int | None = None, tail: int | None = None, limit: int | None = None,
             follow: bool = False, stream: str | None = None) -> Response:
        """One chunk of an instance's output `stream` (None: the server's default, stdout):
        ``{instance, node, stream, offset, next_offset, data, truncated}``
        (GET /api/v1/deployments/{name}/logs)."""
        return self.request("GET", f"/api/v1/deployments/{_seg(name)}/logs",
                            query={"namespace": namespace, "instance": instance,
                                   "offset": offset, "tail": tail, "limit": limit,
                                   "follow": "true" if follow else None, "stream": stream})


def _retry_after(headers: dict[str, str]) -> float:
    """Seconds to wait before retrying a 503: its ``Retry-After`` (seconds; an HTTP date or
    garbage counts as 1), between 0 and `MAX_RETRY_AFTER`."""
    try:
        wait = float(headers.get("retry-after", "1"))
    except ValueError:
        wait = 1.0
    return min(max(wait, 0.0), MAX_RETRY_AFTER) if wait == wait else 1.0


def _check_token(token: str | None) -> str | None:
    """A bearer token: 1-4096 printable ASCII characters without spaces (never echoed)."""
    if token is not None and not (0 < len(token) <= 4096 and token.isascii()
                                  and token.isprintable() and " " not in token):
        raise BadSetting("--token must be 1-4096 printable ASCII characters without spaces")
    return token


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A client context that verifies the server (certificate chain and host name)."""
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)
        raise BadSetting(f"--ca-file {ca_file!r}: cannot load CA certificates: {reason}") \
            from None


def _seg(value: str) -> str:
    """One URL path segment (so that a name can never address another route)."""
    return quote(value, safe="")


def _consistency(strong: bool) -> dict[str, str]:
    return {"X-Prisn-Consistency": "strong"} if strong else {}


def _parse_body(raw: bytes, content_type: str) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace") if "json" not in content_type else None


def _message(status: int, parsed: Any, raw: bytes) -> str:
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        return parsed["message"]
    text = " ".join(raw.decode("utf-8", "replace").split())[:200]
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "error"
    return f"{reason}: {text}" if text else reason
