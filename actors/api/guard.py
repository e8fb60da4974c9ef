"""Cross-site request and DNS-rebinding checks on the HTTP API (issue 17, item 5).

A browser lets any web page send requests to any address its user can reach; with auth off
(no ``--api-key``, the default) that would make every page a client. Three checks close this:

- **Content type.** A request with a body (a non-zero Content-Length, or any
  Transfer-Encoding) must say ``Content-Type: application/json`` (parameters such as
  ``; charset=utf-8`` allowed), else 415. A browser sends that type cross-site only after a
  CORS preflight, which the next check refuses.
- **Origin.** A request that carries an ``Origin`` header is refused 403 unless that origin
  is on the allow list (``--cors-origins``, empty by default). An allowed origin gets proper
  CORS answers (`cors_headers`, `preflight_headers`).
- **Host** (only while auth is off). The ``Host`` header must name this node: an IP literal
  (a DNS-rebinding page always reaches the node under a name it controls, never under an
  IP), ``localhost``, the machine's hostname, the ``--bind`` host, the advertised and Raft
  hosts, or an ``--allowed-hosts`` entry (``name``, ``*.suffix``, or ``*`` = no check);
  else 421. A request without a Host (HTTP/1.0 probes) is not a browser's and passes.

Pure and immutable once built: `RequestGuard` is made once at start (any thread) and then
read on the API IOLoop thread only.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from actors.api.errors import ApiError
from prisn.config import normalize_origin
from prisn.outcomes import Outcome

JSON_MEDIA_TYPE = "application/json"
# Request headers a browser may send cross-origin once preflighted (answered in preflights).
CORS_REQUEST_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "X-Request-Id",
                        "X-Prisn-Consistency")
# Response headers a cross-origin page may read.
CORS_EXPOSE_HEADERS = ("X-Prisn-Node", "X-Prisn-Leader", "X-Request-Id", "Retry-After",
                       "WWW-Authenticate")
PREFLIGHT_MAX_AGE = 600  # seconds a browser may cache a preflight answer
LOOPBACK_NAMES = ("localhost",)


class UnsupportedMediaType(ApiError):
    outcome = Outcome.UNSUPPORTED_MEDIA


class CrossOriginForbidden(ApiError):
    outcome = Outcome.FORBIDDEN


class MisdirectedRequest(ApiError):
    outcome = Outcome.MISDIRECTED


def host_of(addr: str) -> str:
    """The host part of ``host:port`` / ``[v6]:port`` / ``host`` (lower-case, no brackets,
    no trailing dot); "" for an empty or wildcard host."""
    a = addr.strip()
    if a.startswith("["):
        host = a[1:].partition("]")[0]
    elif a.count(":") == 1:
        host = a.partition(":")[0]
    else:
        host = a  # a bare name, or a bare IPv6 literal
    host = host.lower().rstrip(".")
    return "" if host in ("0.0.0.0", "::", "*") else host


def own_names(*addrs: str) -> tuple[str, ...]:
    """The names this machine answers to: ``localhost``, its hostname (and the hostname's
    first label), and the hosts of `addrs` (``--bind``, ``--raft-addr``, the advertised
    address). Looks at the machine once (socket.gethostname); no DNS lookups."""
    names: list[str] = list(LOOPBACK_NAMES)
    hostname = socket.gethostname().lower().rstrip(".")
    if hostname:
        names += [hostname, hostname.partition(".")[0]]
    names += [host_of(a) for a in addrs]
    return tuple(dict.fromkeys(n for n in names if n))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


def _is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == JSON_MEDIA_TYPE


def has_body(headers: Mapping[str, str]) -> bool:
    """True when the request carries a body: any Transfer-Encoding, or a Content-Length
    other than 0 (a malformed one counts: its own 400 comes later)."""
    if "Transfer-Encoding" in headers:
        return True
    length = headers.get("Content-Length")
    if length is None:
        return False
    text = length.strip()
    return not (text.isascii() and text.isdigit() and int(text) == 0)


@dataclass(frozen=True)
class RequestGuard:
    """The three checks of the module doc. `hosts` None = no Host check (auth on, or
    ``*`` in --allowed-hosts); else the allowed names (exact, or ``*.suffix``)."""

    origins: frozenset[str] = frozenset()
    hosts: frozenset[str] | None = None

    @classmethod
    def build(cls, *, origins: Iterable[str] = (), allowed_hosts: Iterable[str] = (),
              own: Iterable[str] = (), check_hosts: bool = True) -> RequestGuard:
        """`own`: the node's names (`own_names`); `allowed_hosts`: --allowed-hosts entries.
        `check_hosts` False (auth on) or a ``*`` entry switches the Host check off."""
        extra = tuple(allowed_hosts)
        if not check_hosts or "*" in extra:
            hosts = None
        else:
            hosts = frozenset((*LOOPBACK_NAMES, *own, *extra))
        return cls(origins=frozenset(normalize_origin(o) for o in origins), hosts=hosts)

    @property
    def cors(self) -> bool:
        """True when some origin is allowed (responses then carry ``Vary: Origin``)."""
        return bool(self.origins)

    # ------------------------------------------------------------------ single checks
    def host_allowed(self, host_header: str | None) -> bool:
        """True if the Host header names this node (module doc)."""
        hosts = self.hosts
        if hosts is None or not host_header:
            return True
        host = host_of(host_header)
        if not host or host in hosts or _is_ip(host):
            return True
        return any(h.startswith("*.") and host.endswith(h[1:]) for h in hosts)

    def origin_allowed(self, origin: str | None) -> bool:
        """True for a request without Origin or with an allowed one."""
        return origin is None or normalize_origin(origin) in self.origins

    def plain(self, headers: Mapping[str, str]) -> bool:
        """True when `check` would pass and no CORS headers are due: the fast paths
        (`actors.api.fastpath`) serve only such requests; the rest go to the handlers."""
        if "Origin" in headers or self.origins:
            return False
        if not self.host_allowed(headers.get("Host")):
            return False
        return not has_body(headers) or _is_json(headers.get("Content-Type", ""))

    # ------------------------------------------------------------------ the checks in order
    def check_source(self, headers: Mapping[str, str]) -> None:
        """421 for a foreign Host (auth off), 403 for an Origin not on the allow list."""
        host = headers.get("Host")
        if not self.host_allowed(host):
            raise MisdirectedRequest(
                f"Host {host!r} is not a name of this node; while the API is open (no "
                "--api-key) only its own names and IP addresses are accepted, against DNS "
                "rebinding: add the name to --allowed-hosts (PRISN_ALLOWED_HOSTS)")
        origin = headers.get("Origin")
        if not self.origin_allowed(origin):
            raise CrossOriginForbidden(f"cross-origin request from {origin!r} refused: the origin is not "
                            "in --cors-origins (PRISN_CORS_ORIGINS)")

    @staticmethod
    def check_content_type(headers: Mapping[str, str]) -> None:
        """415 for a request body that is not declared ``application/json``."""
        if has_body(headers) and not _is_json(headers.get("Content-Type", "")):
            got = headers.get("Content-Type")
            raise UnsupportedMediaType(
                "request body must be sent with Content-Type: application/json"
                + (f" (got {got!r})" if got else " (none given)"))

    # ------------------------------------------------------------------ CORS answers
    def cors_headers(self, headers: Mapping[str, str]) -> list[tuple[str, str]]:
        """Headers for any response: ``Vary: Origin`` when CORS is on, plus the allow and
        expose headers for an allowed Origin on a request whose Host is accepted."""
        if not self.origins:
            return []
        out = [("Vary", "Origin")]
        origin = headers.get("Origin")
        if (origin is not None and normalize_origin(origin) in self.origins
                and self.host_allowed(headers.get("Host"))):
            out += [("Access-Control-Allow-Origin", origin.strip()),
                    ("Access-Control-Expose-Headers", ", ".join(CORS_EXPOSE_HEADERS))]
        return out

    @staticmethod
    def preflight_headers(methods: Iterable[str]) -> list[tuple[str, str]]:
        """Headers of a preflight answer (204) for a route allowing `methods`."""
        return [("Access-Control-Allow-Methods", ", ".join(methods)),
                ("Access-Control-Allow-Headers", ", ".join(CORS_REQUEST_HEADERS)),
                ("Access-Control-Max-Age", str(PREFLIGHT_MAX_AGE))]
