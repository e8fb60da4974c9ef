"""The `prisn` command line (click). Runs on the main thread.

Every `server` flag is also read from `PRISN_<FLAG>` (dashes become underscores); a flag given
on the command line beats the environment. Any bad value ends with a one-line error and exit 2.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from prisn import __version__
from prisn.config import (
    DEFAULT_BIND,
    DEFAULT_RAFT_ADDR,
    ConfigError,
    ServerConfig,
    default_data_dir,
    default_node_id,
    parse_addr,
    parse_duration,
    parse_hosts,
    parse_origins,
    parse_peers,
    parse_size,
)


def _env(name: str) -> str:
    return "PRISN_" + name.upper().replace("-", "_")


F = TypeVar("F", bound=Callable[..., Any])


def _opt(name: str, **kw: Any) -> Callable[[F], F]:
    return click.option(f"--{name}", envvar=_env(name), show_envvar=True, **kw)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="prisn")
def cli() -> None:
    """prisn: a Raft-replicated control plane for deployments of scripts and services."""


@cli.command()
@_opt("bind", default=DEFAULT_BIND, show_default=True, help="HTTP API address (host:port).")
@_opt("data-dir", default=None, help="Data directory for the Raft log [default: /var/lib/prisn "
      "if writable, else ~/.local/share/prisn].")
@_opt("node-id", default=None, help="Node identifier [default: hostname].")
@_opt("log-level", default="info", show_default=True,
      type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@_opt("log-format", default="text", show_default=True,
      type=click.Choice(["text", "json"], case_sensitive=False),
      help="Log lines as plain text, or one JSON object per line (time, level, logger, node, "
           "message, and fields such as term, leader and member on cluster events).")
@_opt("cluster", is_flag=True, default=False, help="Enable clustering.")
@_opt("raft-addr", default=DEFAULT_RAFT_ADDR, show_default=True, help="Raft consensus address.")
@_opt("advertise-addr", default="", help="Raft address peers use to reach this node "
      "[default: --raft-addr with the hostname filled in].")
@_opt("peers", default="", help="Comma-separated peer Raft addresses to join.")
@_opt("bootstrap", is_flag=True, default=False, help="Bootstrap a new cluster (first node only).")
@_opt("force-new-cluster", is_flag=True, default=False,
      help="Dangerous: start a new single-node cluster from local state.")
@_opt("heartbeat-interval", default="50ms", show_default=True, help="Leader heartbeat interval.")
@_opt("election-timeout", default="150ms", show_default=True,
      help="Minimum election timeout (randomized up to twice this).")
@_opt("write-timeout", default="5s", show_default=True,
      help="How long a write waits for a quorum before 503.")
@_opt("snapshot-threshold", default=8192, show_default=True, type=click.IntRange(min=1),
      help="Snapshot the state machine every this many applied entries.")
@_opt("snapshot-interval", default="30s", show_default=True,
      help="Minimum time between two snapshots (0 = only the threshold counts).")
@_opt("trailing-logs", default=10240, show_default=True, type=click.IntRange(min=0),
      help="Log entries kept before a snapshot for slow followers.")
@_opt("cluster-key-file", default="", help="CurveZMQ cluster key made by `prisn keygen`: "
      "peers are encrypted and only key holders may join [default: none, plaintext].")
@_opt("api-key", default="", help="Bootstrap admin key, sent as `Authorization: Bearer <key>` "
      "[default: none, the API is open]. On the command line it is visible to every local "
      "user in `ps`: prefer PRISN_API_KEY or --api-key-file.")
@_opt("api-key-file", default="", help="Read the bootstrap admin key from this file (first "
      "line; keep it 0600) instead of --api-key.")
@_opt("tls-cert", default="", help="PEM certificate (chain) for HTTPS on --bind.")
@_opt("tls-key", default="", help="PEM private key for --tls-cert.")
@_opt("metrics-auth", is_flag=True, default=False,
      help="Require a token on /metrics too (/health and /ready stay open).")
@_opt("rate-limit", default=1000.0, show_default=True, type=click.FloatRange(min=0),
      help="Requests per second per client address (token bucket; 0 = unlimited).")
@_opt("rate-burst", default=2000, show_default=True, type=click.IntRange(min=1),
      help="Burst size of the per-address token bucket.")
@_opt("max-connections", default=1024, show_default=True, type=click.IntRange(min=1),
      help="Open HTTP connections per node; more are refused.")
@_opt("max-spec-bytes", default="1MiB", show_default=True,
      help="Largest deployment spec (its strings); larger writes are refused with 413.")
@_opt("max-artifact-bytes", default="8MiB", show_default=True,
      help="Largest artifact upload (POST /api/v1/artifacts, at most 12MiB); larger uploads "
      "are refused with 413.")
@_opt("namespace-max-deployments", default=100_000, show_default=True,
      type=click.IntRange(min=1), help="Deployments per namespace; a create past it is a 507.")
@_opt("namespace-max-bytes", default="256MiB", show_default=True,
      help="Stored bytes of all deployments of one namespace; a write past it is a 507.")
@_opt("max-inflight", default=10000, show_default=True, type=click.IntRange(1, 1_000_000),
      help="Writes (and strong reads, elections, removals) waiting for raft per node; more "
      "are refused with 503 and /ready reports the node not ready.")
@_opt("execution-history", default=1000, show_default=True,
      type=click.IntRange(1, 100_000), help="Executions kept per deployment (older finished "
      "ones are pruned). Carried in the commands that create executions: set it the same "
      "on every node, or the bound follows whichever node proposed.")
@_opt("max-conns-per-ip", default=128, show_default=True, type=click.IntRange(min=1),
      help="Open HTTP connections per client address (IPv6: per /64); more are refused 429. "
      "Raise it behind a reverse proxy.")
@_opt("cors-origins", default="", help="Comma-separated origins (https://app.example.com) "
      "allowed to call the API from a browser; a request with any other Origin is refused "
      "403 [default: none].")
@_opt("allowed-hosts", default="", help="Comma-separated extra Host names (name, *.domain) "
      "accepted while the API is open (no --api-key), besides the node's own names and IP "
      "addresses; * accepts any (no DNS-rebinding protection) [default: none].")
@_opt("node-down-after", default="5s", show_default=True,
      help="The leader places the instances of a node it has not heard from for this long on "
      "other nodes; a node without a quorum for a bit less stops its own (fencing).")
@_opt("stop-grace", default="10s", show_default=True,
      help="Time an instance has to exit after SIGTERM before its process group is SIGKILLed.")
@_opt("no-workloads", is_flag=True, default=False,
      help="This node votes and serves the API but runs no instances (never placed on).")
def server(**kw: object) -> None:
    """Run a prisn server node."""
    try:
        cfg = build_config(kw)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    from prisn.server import run  # heavy imports only when serving

    sys.exit(run(cfg))


def build_config(kw: dict) -> ServerConfig:
    """Flags (already merged with the environment by click) -> a checked ServerConfig."""
    bind = parse_addr(str(kw["bind"]), "--bind")
    raft_addr = parse_addr(str(kw["raft_addr"]), "--raft-addr")
    adv = str(kw["advertise_addr"] or "")
    if adv:
        parse_addr(adv, "--advertise-addr")
        if not adv.rpartition(":")[0]:
            raise ConfigError("--advertise-addr needs a host")
    peers = parse_peers(str(kw["peers"] or ""))
    node_id = str(kw["node_id"] or default_node_id())
    if not node_id or len(node_id) > 128 or any(c.isspace() or c in "/@" for c in node_id):
        raise ConfigError(f"--node-id {node_id!r} must be 1-128 characters without spaces, / or @")
    hb = parse_duration(kw["heartbeat_interval"], "--heartbeat-interval")
    et = parse_duration(kw["election_timeout"], "--election-timeout")
    if et < 2 * hb:
        raise ConfigError("--election-timeout must be at least twice --heartbeat-interval")
    wt = parse_duration(kw["write_timeout"], "--write-timeout")
    cluster = bool(kw["cluster"]) or bool(peers) or bool(kw["bootstrap"])
    if kw["force_new_cluster"] and not cluster:
        cluster = True
    return ServerConfig(
        node_id=node_id,
        data_dir=str(kw["data_dir"] or default_data_dir()),
        bind=bind,
        cluster=cluster,
        raft_addr=raft_addr,
        advertise_addr=adv,
        peers=peers,
        bootstrap=bool(kw["bootstrap"]),
        force_new_cluster=bool(kw["force_new_cluster"]),
        heartbeat_interval=hb,
        election_timeout=et,
        write_timeout=wt,
        log_level=str(kw["log_level"]).lower(),
        log_format=str(kw.get("log_format") or "text").lower(),
        snapshot_threshold=int(kw.get("snapshot_threshold", 8192)),
        trailing_logs=int(kw.get("trailing_logs", 10240)),
        snapshot_interval=_interval(str(kw.get("snapshot_interval", "30s"))),
        **_security(kw),
        **_workloads(kw, et),
    )


def _workloads(kw: dict, et: float) -> dict:
    """--node-down-after (at least 4 election timeouts), --stop-grace, --no-workloads."""
    nda = parse_duration(kw.get("node_down_after") or "5s", "--node-down-after")
    if nda < 4 * et:
        raise ConfigError("--node-down-after must be at least 4 election timeouts "
                          f"({4 * et:g}s): a node is not down before an election could replace "
                          "its leader")
    return {"node_down_after": nda,
            "stop_grace": parse_duration(kw.get("stop_grace") or "10s", "--stop-grace"),
            "no_workloads": bool(kw.get("no_workloads", False))}


def _security(kw: dict) -> dict:
    """The issue-7 flags, checked: files must be readable, TLS cert and key come together."""
    out: dict = {}
    key_file = str(kw.get("cluster_key_file") or "")
    if key_file and not os.access(key_file, os.R_OK):
        raise ConfigError(f"--cluster-key-file {key_file!r} is not a readable file")
    out["cluster_key_file"] = key_file
    api_key = str(kw.get("api_key") or "")
    api_key_file = str(kw.get("api_key_file") or "")
    if api_key_file:
        if api_key:
            raise ConfigError("--api-key and --api-key-file are mutually exclusive")
        try:
            with open(api_key_file, encoding="utf-8") as f:
                api_key = f.readline().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--api-key-file {api_key_file!r}: cannot read it: {e}") from None
        if not api_key:
            raise ConfigError(f"--api-key-file {api_key_file!r} is empty")
    if api_key and (len(api_key) < 16 or not api_key.isascii() or not api_key.isprintable()
                    or " " in api_key):
        raise ConfigError("--api-key must be at least 16 printable ASCII characters, no spaces")
    out["api_key"] = api_key
    cert, key = str(kw.get("tls_cert") or ""), str(kw.get("tls_key") or "")
    if bool(cert) != bool(key):
        raise ConfigError("--tls-cert and --tls-key must be given together")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"{flag} {path!r} is not a readable file")
    out["tls_cert"], out["tls_key"] = cert, key
    out["metrics_auth"] = bool(kw.get("metrics_auth", False))
    rate = float(kw.get("rate_limit", 1000.0))
    if not math.isfinite(rate):
        raise ConfigError("--rate-limit must be a finite number of requests/s (0 = unlimited)")
    out["rate_limit"] = rate
    out["rate_burst"] = int(kw.get("rate_burst", 2000))
    out["max_connections"] = int(kw.get("max_connections", 1024))
    out["max_spec_bytes"] = parse_size(str(kw.get("max_spec_bytes") or "1MiB"),
                                       "--max-spec-bytes")
    from prisn.workloads.artifacts import HARD_MAX_ARTIFACT_BYTES  # only for the server

    out["max_artifact_bytes"] = parse_size(str(kw.get("max_artifact_bytes") or "8MiB"),
                                           "--max-artifact-bytes")
    if out["max_artifact_bytes"] > HARD_MAX_ARTIFACT_BYTES:
        raise ConfigError(f"--max-artifact-bytes must be at most {HARD_MAX_ARTIFACT_BYTES} "
                          "(12MiB): one artifact travels in one log entry")
    out["namespace_max_deployments"] = int(
        kw.get("namespace_max_deployments", 100_000))
    out["namespace_max_bytes"] = parse_size(str(kw.get("namespace_max_bytes") or "256MiB"),
                                            "--namespace-max-bytes")
    out["max_inflight"] = int(kw.get("max_inflight", 10000))
    out["max_conns_per_ip"] = int(kw.get("max_conns_per_ip", 128))
    out["execution_history"] = int(kw.get("execution_history", 1000))
    out["cors_origins"] = parse_origins(str(kw.get("cors_origins") or ""))
    out["allowed_hosts"] = parse_hosts(str(kw.get("allowed_hosts") or ""))
    return out


@cli.command()
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Write the key to this file (mode 0600) instead of printing it.")
@click.option("--force", is_flag=True, default=False, help="Replace an existing --out file.")
def keygen(out: str | None, force: bool) -> None:
    """Make a new random cluster key for --cluster-key-file (copy it to every node)."""
    from transport.curve import derive_keys, format_key_file, generate_secret, write_key_file

    secret = generate_secret()
    if out is None:
        if force:
            raise click.UsageError("--force needs --out")
        click.echo(format_key_file(secret), nl=False)
        click.echo(f"prisn: cluster key fingerprint {derive_keys(secret).fingerprint}",
                   err=True)
        return
    try:
        write_key_file(out, secret, force=force)
    except FileExistsError:
        raise click.UsageError(f"--out {out!r} already exists (--force replaces it; every node "
                               "then needs the new key)") from None
    except OSError as e:
        raise click.UsageError(f"--out {out!r}: cannot write: {e.strerror or e}") from None
    click.echo(f"prisn: wrote a new cluster key to {out} (fingerprint "
               f"{derive_keys(secret).fingerprint}); copy it to every node", err=True)


from prisn.cli_ops import register as _register_ops  # noqa: E402 - after `cli` is defined

_register_ops(cli)  # operator commands: cluster, deploy, status, scale, delete

from prisn.cli_snapshot import register as _register_snapshot  # noqa: E402

_register_snapshot(cli)  # prisn snapshot save | status | restore

from prisn.cli_secrets import register as _register_secrets  # noqa: E402

_register_secrets(cli)  # prisn secret create | list | get | rotate | delete

from prisn.cli_jobs import register as _register_jobs  # noqa: E402

_register_jobs(cli)  # prisn run | executions | execution | cancel


def _interval(value: str) -> float:
    """`--snapshot-interval`: a duration, or 0 for none."""
    return 0.0 if value.strip() in ("0", "0s", "0ms") else parse_duration(value,
                                                                           "--snapshot-interval")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: click errors become one line on stderr and exit 2."""
    try:
        cli.main(args=argv, prog_name="prisn", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as e:
        msg = " ".join(e.format_message().split())
        click.echo(f"prisn: error: {msg}", err=True)
        sys.exit(e.exit_code if isinstance(e, click.UsageError) else 1)


if __name__ == "__main__":
    main()
