"""Server configuration: one frozen dataclass built from flags and `PRISN_*` variables.

Pure apart from `default_data_dir`/`default_node_id`, which look at the machine once at start.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_BIND = ":7331"
DEFAULT_RAFT_ADDR = ":7332"
SYSTEM_DATA_DIR = "/var/lib/prisn"


class ConfigError(ValueError):
    """A flag or variable with a value prisn cannot use (the CLI prints it and exits 2)."""


@dataclass(frozen=True)
class ServerConfig:
    """Everything `prisn server` needs; see the README's configuration table."""

    node_id: str
    data_dir: str
    bind: str = DEFAULT_BIND
    cluster: bool = False
    raft_addr: str = DEFAULT_RAFT_ADDR
    advertise_addr: str = ""
    peers: tuple[str, ...] = ()
    bootstrap: bool = False
    force_new_cluster: bool = False
    heartbeat_interval: float = 0.05
    election_timeout: float = 0.15
    write_timeout: float = 5.0
    log_level: str = "info"
    log_format: str = "text"  # "text" or "json" (one object per line; prisn.logs)
    tick_interval: float = 0.01
    max_body_bytes: int = 10 << 20
    snapshot_threshold: int = 8192  # applied entries between state-machine snapshots
    trailing_logs: int = 10240  # log entries kept before a snapshot for slow followers
    snapshot_interval: float = 30.0  # minimum seconds between snapshots (0: threshold only)
    # Security (issue 7): peer keys, API authentication, TLS and limits on outside input.
    cluster_key_file: str = ""  # CurveZMQ cluster key (`prisn keygen`); "" = plaintext peers
    api_key: str = ""  # bootstrap admin bearer key; "" = the API is open (warned at start)
    tls_cert: str = ""  # PEM certificate chain for the HTTP API; both or neither with tls_key
    tls_key: str = ""
    metrics_auth: bool = False  # require a token on /metrics too (/health and /ready stay open)
    rate_limit: float = 1000.0  # requests/s per client address (token bucket); 0 = unlimited
    rate_burst: int = 2000  # bucket size per client address
    max_connections: int = 1024  # open HTTP connections per node; more are closed at accept
    max_inflight: int = 10_000  # requests waiting for raft per node; more are a 503 at once
    # executions kept per deployment; carried in the commands that create executions
    execution_history: int = 1000
    max_conns_per_ip: int = 128  # open HTTP connections per client address (IPv6: per /64)
    cors_origins: tuple[str, ...] = ()  # origins allowed cross-site; any other Origin is a 403
    allowed_hosts: tuple[str, ...] = ()  # extra Host names accepted with auth off ("*": any)
    max_header_bytes: int = 16384  # request line + headers
    idle_timeout: float = 60.0  # an idle keep-alive connection is closed after this
    body_timeout: float = 10.0  # a request body must arrive within this (slow clients)
    # Stored-state bounds (issue 17 item 4; actors.api.quotas): 413 / 507 past them.
    max_spec_bytes: int = 1 << 20  # one deployment's spec
    namespace_max_deployments: int = 100_000
    max_artifact_bytes: int = 8 << 20  # one artifact upload (actors.api.artifacts)
    namespace_max_bytes: int = 256 << 20  # all deployments of one namespace
    # Workloads (issue 14; actors.workloads, actors.scheduler)
    node_down_after: float = 5.0  # the leader places a node's instances elsewhere after this
    stop_grace: float = 10.0  # SIGTERM -> SIGKILL of an instance's process group
    no_workloads: bool = False  # vote only: run no instances, never placed on
    extra: dict = field(default_factory=dict)

    @property
    def advertised_raft_addr(self) -> str:
        """`--advertise-addr`, else `--raft-addr` with an empty or wildcard host filled in."""
        if self.advertise_addr:
            return self.advertise_addr
        host, _, port = self.raft_addr.rpartition(":")
        if host in ("", "0.0.0.0", "[::]", "::"):
            host = socket.gethostname()
        return f"{host}:{port}"

    @property
    def fence_after(self) -> float:
        """Seconds without quorum contact after which this node stops its own instances:
        `node_down_after` minus a margin of at least half of it and at least two (maximal,
        randomized) election timeouts, but never below two election timeouts (an election
        alone must not stop instances). See docs/operations.md "Workloads: placement,
        failover and fencing"."""
        nda, et = self.node_down_after, self.election_timeout
        return max(2 * et, min(nda / 2, nda - 4 * et))

    @property
    def fence_grace(self) -> float:
        """The stop grace of a fenced node's instances: what is left of the margin once the
        fence is detected (one maximal election timeout late), capped by --stop-grace, so
        they are gone (SIGKILL at worst) before the leader may place them elsewhere."""
        nda, et = self.node_down_after, self.election_timeout
        return max(0.0, min(self.stop_grace, nda - self.fence_after - 2 * et))

    @property
    def heartbeat_ticks(self) -> int:
        return max(1, round(self.heartbeat_interval / self.tick_interval))

    @property
    def election_ticks(self) -> int:
        return max(self.heartbeat_ticks * 2, round(self.election_timeout / self.tick_interval))


def parse_addr(value: str, what: str) -> str:
    """Check `host:port` (host may be empty); return it unchanged."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} must be host:port or :port, got {value!r}")
    if any(c.isspace() for c in host):
        raise ConfigError(f"{what} has a bad host in {value!r}")
    return value


MAX_LIST_ENTRIES = 256  # bound on --cors-origins / --allowed-hosts entries


def normalize_origin(value: str) -> str:
    """An origin as browsers serialise it, lower-cased, without a trailing slash."""
    return value.strip().rstrip("/").lower()


def parse_origins(value: str) -> tuple[str, ...]:
    """``--cors-origins``: comma-separated ``scheme://host[:port]`` -> normalised tuple.
    ConfigError with a one-line reason for anything else (``*`` included: list origins)."""
    out: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        origin = normalize_origin(entry)
        scheme, sep, rest = origin.partition("://")
        if (not sep or scheme not in ("http", "https") or not rest or "/" in rest
                or any(c.isspace() for c in rest) or "*" in rest):
            raise ConfigError(f"--cors-origins entry {entry!r} must be an origin such as "
                             "https://app.example.com or http://localhost:3000 (no path, no "
                             "wildcard)")
        out.append(origin)
    if len(out) > MAX_LIST_ENTRIES:
        raise ConfigError(f"--cors-origins has more than {MAX_LIST_ENTRIES} entries")
    return tuple(dict.fromkeys(out))


def parse_hosts(value: str) -> tuple[str, ...]:
    """``--allowed-hosts``: comma-separated names, ``*.suffix`` or ``*`` -> normalised tuple.
    ConfigError with a one-line reason for an entry that cannot be a host name."""
    out: list[str] = []
    for raw in value.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        wild = entry.startswith("*.")
        name = (entry[2:] if wild else entry).rstrip(".")
        entry = f"*.{name}" if wild else (entry if entry == "*" else name)
        if entry != "*" and (not name or any(c.isspace() or c in "/@*:[]" for c in name)):
            raise ConfigError(f"--allowed-hosts entry {raw.strip()!r} must be a host name, "
                             "*.domain or * (no port, no scheme)")
        out.append(entry)
    if len(out) > MAX_LIST_ENTRIES:
        raise ConfigError(f"--allowed-hosts has more than {MAX_LIST_ENTRIES} entries")
    return tuple(dict.fromkeys(out))


def parse_peers(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    peers = tuple(p.strip() for p in value.split(",") if p.strip())
    for p in peers:
        parse_addr(p, "--peers")
    return peers


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
               "g": 1 << 30, "gib": 1 << 30}


def parse_size(value: str, what: str) -> int:
    """A positive byte count: ``4096``, ``256KiB``, ``8MiB``, ``1GiB`` (binary units; K, M
    and G mean the same)."""
    text = value.strip()
    digits = text.rstrip("bBkKiImMgG")
    unit = text[len(digits):].strip().lower()
    if not digits.strip().isdigit() or unit not in _SIZE_UNITS or int(digits) <= 0:
        raise ConfigError(f"{what} must be a positive size such as 65536, 256KiB or 8MiB, "
                          f"not {value!r}")
    return int(digits) * _SIZE_UNITS[unit]


def parse_duration(value: str | float, what: str) -> float:
    """`150ms`, `1.5s`, `2m` or a bare number of seconds -> seconds (> 0)."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        v = value.strip().lower()
        try:
            if v.endswith("ms"):
                seconds = float(v[:-2]) / 1000
            elif v.endswith("s"):
                seconds = float(v[:-1])
            elif v.endswith("m"):
                seconds = float(v[:-1]) * 60
            else:
                seconds = float(v)
        except ValueError:
            raise ConfigError(f"{what} must be a duration like 150ms or 5s, got {value!r}") from None
    if not seconds > 0 or seconds > 3600:
        raise ConfigError(f"{what} must be between 0 and 1h, got {value!r}")
    return seconds


def default_node_id() -> str:
    return socket.gethostname() or "prisn"


def default_data_dir() -> str:
    """`/var/lib/prisn` where it exists or can be made and is writable, else a per-user dir."""
    system = Path(SYSTEM_DATA_DIR)
    try:
        # runs before `prisn server` sets its umask 077: ask for 0700 here too
        system.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.access(system, os.W_OK):
            return str(system)
    except OSError:
        pass
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "prisn")
