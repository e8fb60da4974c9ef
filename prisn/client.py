"""A small HTTP client for the prisn API, used by the operator CLI (`prisn.cli_ops`).

Standard library only (`http.client`), one connection per request, JSON in and out. Runs on
the caller's thread; no state is shared between calls.

Errors:
- `Unreachable`: no server answered (refused, unknown host, timeout, connection reset).
- `ApiError`: the server answered with a status outside 2xx; it carries the status and the
  server's ``message`` (every prisn error body is ``{"error": ..., "message": ...}``).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

DEFAULT_SERVER = "localhost:7331"
DEFAULT_PORT = 7331
DEFAULT_TIMEOUT = 30.0


class ClientError(Exception):
    """Anything that keeps a request from getting a usable answer."""


class BadServer(ClientError):
    """The `--server` value cannot be understood."""


class Unreachable(ClientError):
    """No server answered at `url`."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach prisn server at {url}: {reason}")
        self.url = url
        self.reason = reason


class ApiError(ClientError):
    """The server refused the request (status outside 2xx)."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.message = message
        self.body = body


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None for an empty body

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


def parse_server(value: str) -> Endpoint:
    """`host:port`, `:port`, `host`, `[v6]:port` or an `http(s)://` URL -> an Endpoint.

    A bare host or ``:port`` fills in ``localhost`` / port 7331; a URL without a port uses
    the scheme's port (80 or 443).
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
    return Endpoint("http", host or "localhost", port, "")


class Client:
    """Requests to one prisn server. `timeout` bounds connecting and each read."""

    def __init__(self, server: str = DEFAULT_SERVER, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.endpoint = parse_server(server)
        self.timeout = timeout

    @property
    def url(self) -> str:
        return self.endpoint.url

    # ------------------------------------------------------------------ raw
    def request(self, method: str, path: str, body: Any = None, *,
                query: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                allow: tuple[int, ...] = ()) -> Response:
        """Send one request; a status outside 2xx (and not in `allow`) raises `ApiError`."""
        ep = self.endpoint
        target = ep.prefix + path
        q = {k: v for k, v in (query or {}).items() if v is not None}
        if q:
            target += "?" + urlencode(q)
        data = None if body is None else json.dumps(body).encode()
        h = {"Accept": "application/json", "User-Agent": "prisn-cli"}
        if data is not None:
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        if ep.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                ep.host, ep.port, timeout=self.timeout, context=ssl.create_default_context())
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
        except ssl.SSLError as e:
            raise Unreachable(self.url, f"TLS error: {e}") from None
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
            raise ApiError(status, _message(status, parsed, raw), parsed)
        return Response(status, hdrs, parsed)

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
