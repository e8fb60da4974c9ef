"""Operator commands of the `prisn` CLI: they talk to a running server over its HTTP API.

`register(cli)` adds them to the root group defined in `prisn.cli`:

    prisn cluster status | health | remove <id> [--yes] [--wait] | election <node>
    prisn deploy <source> ... [--wait] | status [name] | scale <name> <n> [--wait]
    prisn delete <name> [--wait] | logs <name> [--instance I] [-f] [--tail BYTES]

Common options, accepted on the root group (``prisn --server X status``), on the `cluster`
group and on every command (``prisn status --server X``); the innermost one given wins:

- ``--server``: ``host:port``, ``:port``, ``host`` or an ``http(s)://`` URL; else the
  ``PRISN_SERVER`` variable; else ``localhost:7331``.
- ``-o/--output table|json``: readable text (default) or the server's JSON for scripts.
- ``--timeout``: seconds to wait for the server (default 30).
- ``--ca-file``: PEM CA certificate(s) to verify an HTTPS server with (``PRISN_CA_FILE``);
  with it a bare ``host:port`` server is reached over HTTPS.
- ``--token``: bearer token sent as ``Authorization: Bearer <token>`` (``PRISN_TOKEN``).

Exit status: 0 success; 1 the server refused the request (its ``message`` is printed), no
server answered, `cluster health` found the cluster unhealthy, or a ``--wait`` ended without
its condition (CrashLoopBackOff, Failed, or --timeout passed); 2 bad usage.
Nothing heavy is imported here: the commands start fast.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import PurePath
from typing import Any

import click

from prisn.client import (
    DEFAULT_SERVER,
    DEFAULT_TIMEOUT,
    ApiError,
    BadServer,
    BadSetting,
    Client,
    ClientError,
    Response,
)

SERVER_ENV = "PRISN_SERVER"
CA_FILE_ENV = "PRISN_CA_FILE"
TOKEN_ENV = "PRISN_TOKEN"
_META = "prisn.ops."
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}")
PAGE = 1000


# ---------------------------------------------------------------------- common options
def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Store an explicitly given common option in the context chain's shared `meta`.

    Parents are parsed before children, so the innermost value given wins."""
    if value is not None:
        ctx.meta[_META + str(param.name)] = value
    return value


def _common_specs() -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    base = {"default": None, "expose_value": False, "callback": _remember}
    return [
        (("--server",), {**base, "metavar": "HOST:PORT|URL",
                         "help": f"prisn server to talk to [env: {SERVER_ENV}; default: "
                                 f"{DEFAULT_SERVER}]."}),
        (("-o", "--output"), {**base, "type": click.Choice(["table", "json"]),
                              "help": "Output format [default: table]."}),
        (("--timeout",), {**base, "type": click.FloatRange(min=0.1, max=3600),
                          "metavar": "SECONDS",
                          "help": f"How long to wait for the server [default: "
                                  f"{DEFAULT_TIMEOUT:g}]."}),
        (("--ca-file",), {**base, "metavar": "FILE",
                          "help": f"PEM CA certificate(s) that signed the server's HTTPS "
                                  f"certificate; a bare HOST:PORT then means https "
                                  f"[env: {CA_FILE_ENV}; default: the system's CAs]."}),
        (("--token",), {**base, "metavar": "TOKEN",
                        "help": f"API token, sent as 'Authorization: Bearer TOKEN' "
                                f"[env: {TOKEN_ENV}]."}),
    ]


def common_options(f: Callable) -> Callable:
    """Decorator: the common options on one command or group."""
    for decls, kw in reversed(_common_specs()):
        f = click.option(*decls, **kw)(f)
    return f


def _setting(ctx: click.Context, name: str) -> Any:
    return ctx.meta.get(_META + name)


def _client(ctx: click.Context) -> Client:
    server = _setting(ctx, "server") or os.environ.get(SERVER_ENV) or DEFAULT_SERVER
    timeout = _setting(ctx, "timeout") or DEFAULT_TIMEOUT
    ca_file = _setting(ctx, "ca_file") or os.environ.get(CA_FILE_ENV) or None
    token = _setting(ctx, "token") or os.environ.get(TOKEN_ENV) or None
    try:
        return Client(server, timeout=timeout, ca_file=ca_file, token=token)
    except (BadServer, BadSetting) as e:
        raise click.UsageError(str(e)) from None
    except ValueError as e:  # urllib on a malformed URL, e.g. 'http://[::1'
        raise click.UsageError(f"--server {server!r}: {e}") from None


def _json_out(ctx: click.Context) -> bool:
    return _setting(ctx, "output") == "json"


def _call(fn: Callable[[], Response]) -> Response:
    """Run one request; any failure becomes a one-line click error (exit 1). An answer that
    is not a JSON object (other than 204 No Content) is not from a prisn server."""
    try:
        r = fn()
    except ClientError as e:
        raise click.ClickException(str(e)) from None
    if r.status != 204 and not isinstance(r.body, dict):
        raise click.ClickException(f"unexpected answer (HTTP {r.status}, not a JSON object): "
                                   "is --server a prisn server's HTTP API?")
    return r


def _print_json(body: Any) -> None:
    click.echo(json.dumps(body, indent=2, sort_keys=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; None shows as '-'."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r]
                                           for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


# ---------------------------------------------------------------------- cluster
@click.group()
@common_options
def cluster() -> None:
    """Inspect and change the cluster's membership and leadership."""


def _lag(node: dict[str, Any] | None) -> str | None:
    if not node or node.get("lag_entries") is None:
        return None
    text = str(node["lag_entries"])
    if node.get("lag_seconds"):
        text += f" ({node['lag_seconds']:.3f}s)"
    return text


def _contact(node: dict[str, Any]) -> str | None:
    v = node.get("last_contact_seconds")
    return None if v is None else f"{v:.3f}s"


def _node_rows(nodes: list[dict[str, Any]], leader: str | None, health: dict[str, dict],
               with_contact: bool = False) -> list[list[Any]]:
    rows = []
    for n in nodes:
        name = n["id"] + (" *" if n["id"] == leader else "")
        row = [name, n.get("address"), n.get("state")]
        if with_contact:
            row.append(_contact(n))
        row.append(_lag(health.get(n["id"])))
        rows.append(row)
    return rows


@cluster.command("status")
@common_options
@click.pass_context
def cluster_status(ctx: click.Context) -> None:
    """Members, their state and replication lag, as the server sees them.

    Lag (entries behind, and seconds) is known on the leader only: point --server at
    the leader to see it. `*` marks the leader."""
    c = _client(ctx)
    r = _call(c.cluster_status)
    st = r.body
    if _json_out(ctx):
        _print_json(st)
        return
    health: dict[str, dict] = {}
    try:
        h = c.cluster_health().body
        if isinstance(h, dict):
            health = {n["id"]: n for n in h.get("nodes", []) if isinstance(n, dict)}
    except ClientError:
        pass  # lag stays unknown; the status itself was answered
    leader = st.get("leader")
    click.echo(table(["NODE", "ADDRESS", "STATE", "LAG"],
                     _node_rows(st.get("nodes", []), leader, health)))
    click.echo()
    click.echo(f"leader: {leader or 'none known'}  term: {st.get('term')}  "
               f"commit: {st.get('commit_index')}  applied: {st.get('applied_index')}  "
               f"{'healthy' if st.get('healthy') else 'UNHEALTHY'}  "
               f"(answered by {st.get('node_id') or r.node})")


@cluster.command("health")
@common_options
@click.pass_context
def cluster_health(ctx: click.Context) -> None:
    """Whether the cluster has a leader in contact with a quorum (exit 0) or not (exit 1)."""
    c = _client(ctx)
    r = _call(c.cluster_health)
    h = r.body
    if not isinstance(h, dict) or "healthy" not in h:
        raise click.ClickException(f"unexpected answer from {c.url} (HTTP {r.status})")
    healthy = bool(h["healthy"]) and r.status == 200
    if _json_out(ctx):
        _print_json(h)
    else:
        voters, quorum = h.get("voters"), h.get("quorum")
        if healthy:
            click.echo(f"cluster healthy: leader {h.get('leader')}, "
                       f"{_plural(voters, 'voter')}, quorum {quorum} (answered by {r.node})")
        else:
            why = h.get("message") or "unhealthy"
            click.echo(f"{why}; leader {h.get('leader') or 'none known'}, "
                       f"{_plural(voters, 'voter')}, quorum {quorum} (answered by {r.node})")
        nodes = [n for n in h.get("nodes", []) if isinstance(n, dict)]
        if nodes:
            click.echo()
            by_id = {n["id"]: n for n in nodes}
            click.echo(table(["NODE", "ADDRESS", "STATE", "LAST CONTACT", "LAG"],
                             _node_rows(nodes, h.get("leader"), by_id, with_contact=True)))
    if not healthy:
        sys.exit(1)


@cluster.command("remove")
@click.argument("node_id", metavar="ID")
@click.option("-y", "--yes", is_flag=True,
              help="Do not ask for confirmation (it is asked only when stdin is a terminal).")
@click.option("--wait/--no-wait", default=False,
              help="Wait (up to --timeout) until ID is gone from the member list the server "
                   "reports.")
@common_options
@click.pass_context
def cluster_remove(ctx: click.Context, node_id: str, yes: bool, wait: bool) -> None:
    """Remove member ID from the cluster (it stops being replicated to and voting).

    On a terminal it asks first (--yes skips the question); with stdin not a terminal
    (scripts, pipes) it does not ask. The answer comes once the new configuration is
    committed; a 503 is retried once, and a 404 on that retry means the first attempt did
    remove ID."""
    c = _client(ctx)
    if not yes and sys.stdin.isatty():
        if not click.confirm(f"Remove {node_id} from the cluster at {c.url}? It stops voting "
                             "and must be wiped before it can join again", err=True):
            raise click.ClickException(f"{node_id} not removed (answered no)")
    try:
        c.remove_node(node_id)
    except ApiError as e:
        if not (e.retried and e.status == 404):  # else: the first attempt committed
            raise click.ClickException(str(e)) from None
    except ClientError as e:
        raise click.ClickException(str(e)) from None
    if wait:
        _wait_gone(c, node_id)
    if _json_out(ctx):
        _print_json({"removed": node_id})
    else:
        click.echo(f"removed {node_id} from the cluster")


def _wait_gone(c: Client, node_id: str) -> None:
    """Poll the server's member list until `node_id` is absent (deadline: `c.timeout`)."""
    deadline = time.monotonic() + c.timeout
    while True:
        try:
            st = c.cluster_status().body
            ids = {n.get("id") for n in st.get("nodes", []) if isinstance(n, dict)} \
                if isinstance(st, dict) else {node_id}
        except ClientError:
            ids = {node_id}
        if node_id not in ids:
            return
        if time.monotonic() >= deadline:
            raise click.ClickException(f"{node_id} is still listed as a member after "
                                       f"{c.timeout:g}s")
        time.sleep(0.05)  # polling the server's view with a deadline


ELECTION_RETRY_S = 2.0  # `election --wait`: ask again this often while NODE does not lead


def _retry_election(c: Client, node_id: str) -> None:
    """One more transfer request for `election --wait`; 404/409 end the wait with the
    server's message, anything else (a 503 during an election, a timeout) is retried later."""
    try:
        c.election(node_id)
    except ApiError as e:
        if e.status in (404, 409):
            raise click.ClickException(str(e)) from None
    except ClientError:
        pass


@cluster.command("election")
@click.argument("node_id", metavar="NODE")
@click.option("--wait/--no-wait", default=False,
              help="Wait (up to --timeout) until NODE is the leader the server reports.")
@common_options
@click.pass_context
def cluster_election(ctx: click.Context, node_id: str, wait: bool) -> None:
    """Make NODE (a voter's id) the leader by a leadership transfer.

    Any member can be asked: the request is handed to the current leader, which catches
    NODE up and tells it to start an election at once."""
    c = _client(ctx)
    r = _call(lambda: c.election(node_id))
    body = r.body if isinstance(r.body, dict) else {}
    if wait:
        deadline = time.monotonic() + c.timeout
        ask_again = time.monotonic() + ELECTION_RETRY_S
        leader = ""
        while True:
            try:
                st = c.cluster_status().body
                leader = (st.get("leader") if isinstance(st, dict) else "") or ""
            except ClientError:
                leader = ""
            now = time.monotonic()
            if leader == node_id or now >= deadline:
                break
            if now >= ask_again:
                # the leader abandons a transfer the target did not win within an election
                # timeout (a busy target, a lost TimeoutNow): ask again, like the operator
                # would; a 404/409 now (member gone, demoted) is final
                ask_again = now + ELECTION_RETRY_S
                _retry_election(c, node_id)
            time.sleep(0.05)  # polling the server's view with a deadline
        if leader != node_id:
            raise click.ClickException(
                f"{node_id} did not become leader within {c.timeout:g}s "
                f"(leader: {leader or 'none known'})")
        body = {**body, "leader": node_id}
    if _json_out(ctx):
        _print_json(body)
    elif wait:
        click.echo(f"{node_id} is now the leader")
    else:
        click.echo(body.get("message") or f"leadership transfer to {node_id} started")


# ---------------------------------------------------------------------- deployments
def _wait_option(what: str) -> Callable[[Callable], Callable]:
    """The ``--wait/--no-wait`` flag of a write; its deadline is --timeout."""
    return click.option("--wait/--no-wait", default=False,
                        help=f"Wait (up to --timeout) until {what}.")


def _env_pairs(values: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in values:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="'--env'")
        env[key] = val
    return env


def _default_name(source: str) -> str | None:
    """`app.py` or `/srv/jobs/report.sh` -> `app` / `report`, when that is a valid name."""
    if not source or any(c.isspace() for c in source):
        return None
    stem = PurePath(source).stem
    return stem if _NAME_RE.fullmatch(stem) else None


def _plural(n: Any, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _summary(d: dict[str, Any]) -> str:
    parts = [f"{d.get('type')}", _plural(d.get("replicas"), "replica")]
    if d.get("port"):
        parts.append(f"port {d['port']}")
    if d.get("schedule"):
        parts.append(f"schedule {d['schedule']!r}")
    return f"{d.get('namespace')}/{d.get('name')} ({', '.join(parts)}, generation " \
           f"{d.get('generation')})"


_DETAIL = ("id", "name", "namespace", "type", "runtime", "source", "artifact", "args", "env",
           "port", "replicas", "schedule", "retries", "concurrency", "timezone",
           "starting_deadline", "generation", "created_at", "updated_at")


def _detail(d: dict[str, Any]) -> str:
    keys = [k for k in _DETAIL if k in d] + [k for k in d if k not in _DETAIL and k != "status"]
    width = max(len(k) for k in keys) + 1
    lines = []
    for k in keys:
        v = d[k]
        if isinstance(v, dict):
            v = " ".join(f"{a}={b}" for a, b in v.items()) or "-"
        elif isinstance(v, list):
            v = " ".join(json.dumps(a) if (not a or " " in a) else a for a in v) or "-"
        elif v is None or v == "":
            v = "-"
        lines.append(f"{(k + ':').ljust(width)} {v}")
    return "\n".join(lines)


@click.command("deploy")
@click.argument("source")
@click.option("--name", help="Deployment name [default: SOURCE's file name without its "
              "extension, e.g. app.py -> app].")
@click.option("--namespace", help="Namespace [default: default].")
@click.option("--runtime", help="Runtime, e.g. python3 or node.")
@click.option("--port", type=int, help="Port (0 or 1024-65535); > 0 makes it a service.")
@click.option("--replicas", type=int, help="Number of replicas (0-1000) [default: 1].")
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE",
              help="Environment variable (repeatable).")
@click.option("--arg", "args", multiple=True, metavar="ARG",
              help="Argument passed to the script (repeatable, in order).")
@click.option("--secret", "secrets", multiple=True, metavar="NAME",
              help="Secret whose keys are injected as environment variables on start "
                   "(repeatable; the deployment's `secrets`).")
@click.option("--schedule", help="Cron schedule (five fields or @hourly, @daily, ...): "
              "makes it a cronjob.")
@click.option("--type", "type_", type=click.Choice(["job", "service", "cronjob"]),
              help="Deployment type [default: cronjob with --schedule, service with "
                   "--port, else job].")
@click.option("--retries", type=int, metavar="N",
              help="Jobs and cron jobs: run a Failed or Lost execution again, up to N "
                   "(0-10) times [default: 0].")
@click.option("--concurrency", type=click.Choice(["allow", "forbid", "replace"]),
              help="Cron jobs: what a fire does while a run is unfinished [default: forbid].")
@click.option("--timezone", metavar="ZONE",
              help="Cron jobs: IANA zone of the schedule, e.g. Europe/Paris [default: UTC].")
@click.option("--starting-deadline", "starting_deadline", type=int, metavar="SECONDS",
              help="Cron jobs: how late a missed fire may still start [default: 60].")
@_wait_option("every replica is ready; exit 1 on CrashLoopBackOff, Failed or --timeout")
@click.option("--entry", metavar="FILE",
              help="For a directory SOURCE: the file to run, relative to it [default: the "
                   "first of main.py, index.js, main.sh].")
@click.option("--no-upload", is_flag=True, default=False,
              help="Store SOURCE as given (a path on the nodes) even if it exists here.")
@common_options
@click.pass_context
def deploy(ctx: click.Context, source: str, name: str | None, namespace: str | None,
           runtime: str | None, port: int | None, replicas: int | None, env: tuple[str, ...],
           args: tuple[str, ...], secrets: tuple[str, ...], schedule: str | None,
           type_: str | None, retries: int | None, concurrency: str | None,
           timezone: str | None, starting_deadline: int | None, wait: bool,
           entry: str | None, no_upload: bool) -> None:
    """Deploy SOURCE: a local file or directory is packed, uploaded as an artifact and the
    deployment created or updated to run it; anything else is stored as given (a script
    path on the nodes, or text) and created."""
    upload = not no_upload and os.path.exists(source)
    if entry is not None and not upload:
        raise click.UsageError("--entry needs SOURCE to be a local directory")
    if name is None:
        name = _default_name(os.path.abspath(source).rstrip("/") if upload else source)
        if name is None:
            raise click.UsageError("--name is required: no name can be derived from SOURCE")
    spec: dict[str, Any] = {"name": name, "source": source}
    for key, value in (("runtime", runtime), ("port", port), ("replicas", replicas),
                       ("schedule", schedule), ("type", type_), ("retries", retries),
                       ("concurrency", concurrency), ("timezone", timezone),
                       ("starting_deadline", starting_deadline)):
        if value is not None:
            spec[key] = value
    if env:
        spec["env"] = _env_pairs(env)
    if args:
        spec["args"] = list(args)
    if secrets:
        spec["secrets"] = list(dict.fromkeys(secrets))  # in order, each once
    c = _client(ctx)
    if not upload:
        r = _call(lambda: c.create(spec, namespace=namespace))
        if _json_out(ctx) and not wait:
            _print_json(r.body)
        else:
            click.echo(f"created {_summary(r.body)}", err=_json_out(ctx))
        if wait:
            _wait_ready(ctx, c, r.body)
        return
    from prisn.workloads.artifacts import ArtifactError, digest_of, pack_path

    try:
        data, entry_file = pack_path(source, entry)
    except (ArtifactError, OSError) as e:
        raise click.ClickException(f"cannot pack {source}: {e}") from None
    digest = digest_of(data)
    up = _call(lambda: c.upload_artifact(data, digest))
    spec.update(source=entry_file, artifact=digest)
    try:
        r = c.create(spec, namespace=namespace)
        verb = "created"
    except ApiError as e:
        if e.status != 409 or "already exists" not in e.message:
            raise click.ClickException(str(e)) from None
        r = _call(lambda: c.replace(name, spec, namespace=namespace))
        verb = "updated"
    except ClientError as e:
        raise click.ClickException(str(e)) from None
    if _json_out(ctx) and not wait:
        _print_json({**r.body, "artifact_upload": up.body})
    else:
        click.echo(f"uploaded artifact {digest[:12]} ({len(data)} bytes, "
                   f"{'new' if up.status == 201 else 'already stored'})", err=_json_out(ctx))
        click.echo(f"{verb} {_summary(r.body)}, running {entry_file}", err=_json_out(ctx))
    if wait:
        _wait_ready(ctx, c, r.body)


def _all_deployments(c: Client, namespace: str | None, strong: bool) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = _call(functools.partial(c.deployments, namespace=namespace, limit=PAGE,
                                       offset=offset, strong=strong)).body
        batch = page.get("items", [])
        items.extend(batch)
        total = int(page.get("total", len(items)))
        offset += len(batch)
        if not batch or offset >= total:
            break
    return {"items": items, "count": len(items), "total": total, "limit": PAGE, "offset": 0}


@click.command("status")
@click.argument("name", required=False)
@click.option("--namespace", help="Only this namespace (with NAME: the deployment's namespace "
              "[default: default]).")
@click.option("--strong", is_flag=True,
              help="Linearizable read (X-Prisn-Consistency: strong): never stale.")
@common_options
@click.pass_context
def status(ctx: click.Context, name: str | None, namespace: str | None, strong: bool) -> None:
    """List deployments (with their phase and READY ready/desired), or show deployment NAME
    with a table of its instances."""
    c = _client(ctx)
    if name is not None:
        d = _call(lambda: c.deployment(name, namespace=namespace, strong=strong)).body
        if _json_out(ctx):
            _print_json(d)
        else:
            click.echo(_detail(d))
            click.echo(_status_text(d))
        return
    listing = _all_deployments(c, namespace, strong)
    if _json_out(ctx):
        _print_json(listing)
        return
    items = listing["items"]
    if not items:
        click.echo("no deployments")
        return
    rows = [[d.get("namespace"), d.get("name"), d.get("type"), d.get("replicas"), _ready(d),
             _phase(d), d.get("port") or None, d.get("runtime"), d.get("schedule"),
             d.get("generation"), d.get("updated_at")] for d in items]
    click.echo(table(["NAMESPACE", "NAME", "TYPE", "REPLICAS", "READY", "PHASE", "PORT",
                      "RUNTIME", "SCHEDULE", "GEN", "UPDATED"], rows))


# ---------------------------------------------------------------------- workload status
# A deployment's `status` (issue 14 part 5): {phase, desired_replicas, ready_replicas,
# restarts, message, instances: [{id, node, state, pid, started_at, exit_code, restarts}]}.
# Servers (or deployments) without one show "-" everywhere.
WAIT_POLL_S = 0.25  # `--wait`: how often the deployment is read again
FAILED_PHASES = frozenset({"CrashLoopBackOff", "Failed"})


def _status_of(d: dict[str, Any]) -> dict[str, Any] | None:
    st = d.get("status")
    return st if isinstance(st, dict) else None


def _instances(d: dict[str, Any]) -> list[dict[str, Any]]:
    st = _status_of(d)
    items = st.get("instances") if st is not None else None
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _phase(d: dict[str, Any]) -> str | None:
    st = _status_of(d)
    phase = st.get("phase") if st is not None else None
    return str(phase) if phase is not None else None


def _ready(d: dict[str, Any]) -> str | None:
    """``ready/desired``, or None (shown '-') without a status."""
    st = _status_of(d)
    if st is None or st.get("ready_replicas") is None:
        return None
    return f"{st.get('ready_replicas')}/{st.get('desired_replicas', d.get('replicas'))}"


def _since(value: Any) -> str | None:
    """An instance's `started_at` (Unix milliseconds, or an ISO text) as UTC ISO seconds."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        try:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value / 1000))
        except (OverflowError, OSError, ValueError):
            return str(value)
    return str(value)


def _instance_rows(d: dict[str, Any]) -> list[list[Any]]:
    return [[i.get("id"), i.get("node"), i.get("state"), i.get("pid"),
             _since(i.get("started_at")), i.get("restarts"), i.get("exit_code")]
            for i in _instances(d)]


def _status_text(d: dict[str, Any]) -> str:
    """The phase line, the status message and the instance table of one deployment."""
    st = _status_of(d)
    if st is None:
        return f"{'phase:'.ljust(11)} - (no status reported)"
    lines = [f"{'phase:'.ljust(11)} {st.get('phase') or '-'}  READY {_ready(d) or '-'}  "
             f"restarts {st.get('restarts', '-')}"]
    if st.get("message"):
        lines.append(f"{'message:'.ljust(11)} {st['message']}")
    rows = _instance_rows(d)
    lines.append("")
    lines.append(table(["INSTANCE", "NODE", "STATE", "PID", "SINCE", "RESTARTS", "EXIT"], rows)
                 if rows else "no instances")
    return "\n".join(lines)


def _progress(seen: dict[str, tuple[Any, ...]], d: dict[str, Any]) -> list[str]:
    """One line per instance whose (node, state, pid) changed since `seen` (updated)."""
    out = []
    for i in _instances(d):
        key = str(i.get("id"))
        now = (i.get("node"), i.get("state"), i.get("pid"))
        if seen.get(key) != now:
            seen[key] = now
            pid = f" pid {i['pid']}" if i.get("pid") is not None else ""
            code = f" exit {i['exit_code']}" if i.get("exit_code") is not None else ""
            out.append(f"  {key}: {i.get('state') or '-'} on {i.get('node') or '-'}{pid}{code}")
    return out


def _read_for_wait(c: Client, name: str, namespace: str) -> tuple[dict[str, Any] | None, str]:
    """(the deployment or None if the server says 404, why it could not be read or "")."""
    try:
        r = c.deployment(name, namespace=namespace)
    except ApiError as e:
        if e.status == 404:
            return None, ""
        return {}, str(e)
    except ClientError as e:
        return {}, str(e)
    return (r.body, "") if isinstance(r.body, dict) else ({}, f"HTTP {r.status}: not JSON")


def _rolled(d: dict[str, Any], st: dict[str, Any]) -> bool:
    """True unless the status says an instance still runs an older generation than the
    deployment's (a rolling update under way). A server whose status has no
    ``observed_generation`` cannot say: True. No replica desired: nothing to roll."""
    if "observed_generation" not in st or not st.get("desired_replicas", d.get("replicas")):
        return True
    return st.get("observed_generation") == d.get("generation")


def _wait_ready(ctx: click.Context, c: Client, dep: dict[str, Any]) -> None:
    """Poll deployment `dep` until its status says ready == desired and, when the server
    reports ``observed_generation``, every instance runs the deployment's generation (a
    rolling update is done), then print it (or its
    JSON with -o json), or fail (exit 1, with the status message) on a phase in
    FAILED_PHASES or when --timeout passes. Instance changes go to stderr as they happen.
    A job or cron job without a status has nothing to wait for (exit 0 at once)."""
    name, ns = str(dep.get("name")), str(dep.get("namespace") or "default")
    deadline = time.monotonic() + c.timeout
    seen: dict[str, tuple[Any, ...]] = {}
    why = ""
    while True:
        d, err = _read_for_wait(c, name, ns)
        if d is None:
            raise click.ClickException(f"deployment {ns}/{name} was deleted while waiting")
        st = _status_of(d) if d else None
        if d:
            for line in _progress(seen, d):
                click.echo(line, err=True)
        if st is not None:
            desired = st.get("desired_replicas", d.get("replicas"))
            ready = st.get("ready_replicas")
            phase = st.get("phase")
            if phase in FAILED_PHASES:
                raise click.ClickException(
                    f"{ns}/{name} is {phase} (READY {_ready(d)}): "
                    f"{st.get('message') or 'no message'}")
            rolled = _rolled(d, st)
            if ready is not None and ready == desired and rolled:
                break
            why = f"READY {_ready(d) or '-'}, phase {phase or '-'}" + (
                f": {st['message']}" if st.get("message") else "") + (
                "" if rolled else f"; instances at generation {st.get('observed_generation')}"
                f", deployment at {d.get('generation')}")
        elif d and d.get("type", "service") != "service":
            click.echo(f"{ns}/{name} is a {d.get('type')}: no instances to wait for",
                       err=_json_out(ctx))
            if _json_out(ctx):
                _print_json(d)
            return
        elif d:
            why = "the server reports no status for it"
        else:
            why = err
        if time.monotonic() >= deadline:
            raise click.ClickException(f"{ns}/{name} not ready after {c.timeout:g}s ({why})")
        time.sleep(WAIT_POLL_S)  # polling the server's view with a deadline
    if _json_out(ctx):
        _print_json(d)
    else:
        click.echo(f"{ns}/{name} ready: {_ready(d)} ({_phase(d) or '-'})")


def _wait_deleted(c: Client, name: str, ns: str) -> None:
    """Poll until the server lists no instance of `ns/name`: a 404, or a status with no
    instances (deadline: --timeout; exit 1 after it)."""
    deadline = time.monotonic() + c.timeout
    seen: dict[str, tuple[Any, ...]] = {}
    while True:
        d, err = _read_for_wait(c, name, ns)
        if d is None:
            return
        if d:
            for line in _progress(seen, d):
                click.echo(line, err=True)
            if _status_of(d) is not None and not _instances(d):
                return
        if time.monotonic() >= deadline:
            left = len(_instances(d)) if d else "?"
            raise click.ClickException(f"{ns}/{name} still lists {left} instance(s) after "
                                       f"{c.timeout:g}s{f' ({err})' if err else ''}")
        time.sleep(WAIT_POLL_S)  # polling the server's view with a deadline


@click.command("scale")
@click.argument("name")
@click.argument("replicas", type=int)
@click.option("--namespace", help="The deployment's namespace [default: default].")
@_wait_option("every replica is ready; exit 1 on CrashLoopBackOff, Failed or --timeout")
@common_options
@click.pass_context
def scale(ctx: click.Context, name: str, replicas: int, namespace: str | None,
          wait: bool) -> None:
    """Set the number of replicas of deployment NAME."""
    c = _client(ctx)
    d = _call(lambda: c.scale(name, replicas, namespace=namespace)).body
    if _json_out(ctx) and not wait:
        _print_json(d)
    else:
        click.echo(f"scaled {_summary(d)}", err=_json_out(ctx))
    if wait:
        _wait_ready(ctx, c, d)


@click.command("delete")
@click.argument("name")
@click.option("--namespace", help="The deployment's namespace [default: default].")
@_wait_option("no instance of NAME is listed any more")
@common_options
@click.pass_context
def delete(ctx: click.Context, name: str, namespace: str | None, wait: bool) -> None:
    """Delete deployment NAME (its instances are stopped)."""
    c = _client(ctx)
    _call(lambda: c.delete(name, namespace=namespace))
    ns = namespace or "default"
    if wait:
        _wait_deleted(c, name, ns)
    if _json_out(ctx):
        _print_json({"deleted": name, "namespace": ns})
    else:
        click.echo(f"deleted {ns}/{name}")


# ---------------------------------------------------------------------- logs
LOGS_CHUNK = 1 << 20  # bytes asked per request (the server's cap)
LOGS_MAX_CHUNKS = 10_000  # without -f: at most this many requests (the files are bounded)
FOLLOW_POLL_S = 0.5  # -f: pause after an answer with no new output


@click.command("logs")
@click.argument("name", metavar="NAME|EXEC_ID")
@click.option("--namespace", help="The deployment's namespace [default: default].")
@click.option("--instance", "instance", metavar="I",
              help="Instance: a replica index (0, 1, ...) or an instance id as `prisn status "
                   "NAME` lists it [default: the lowest replica index].")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output (Ctrl-C stops).")
@click.option("--tail", type=click.IntRange(min=0), metavar="BYTES",
              help="Start at the last BYTES bytes [default: everything kept].")
@click.option("--stream", type=click.Choice(["stdout", "stderr"]), default="stdout",
              show_default=True, help="Which output of a deployment's instance to print "
              "(stderr is printed to stderr). An execution prints both.")
@common_options
@click.pass_context
def logs(ctx: click.Context, name: str, namespace: str | None, instance: str | None,
         follow: bool, tail: int | None, stream: str) -> None:
    """Print the output of an instance of deployment NAME (its stdout, or --stream stderr),
    read through any node: the server fetches it from the node that runs the instance. With
    -o json, each chunk the server answers is one line of JSON. NAME may be an execution id
    (32 hex digits): then that execution's output is printed, both streams (-f: until it is
    finished); a deployment of that name is read only when there is no such execution."""
    c = _client(ctx)
    if instance is None and tail is None:
        from prisn.cli_jobs import execution_logs, looks_like_execution

        if looks_like_execution(name) and execution_logs(ctx, c, name, follow):
            return
    iid = instance
    offset: int | None = None
    as_json = _json_out(ctx)
    try:
        for n in range(LOGS_MAX_CHUNKS if not follow else sys.maxsize):
            first = n == 0
            chunk = _call(functools.partial(
                c.logs, name, namespace=namespace, instance=iid, offset=offset,
                tail=tail if first and offset is None else None, limit=LOGS_CHUNK,
                follow=follow and not first,
                stream=None if stream == "stdout" else stream)).body
            data = chunk.get("data")
            text = data if isinstance(data, str) else ""
            nxt = chunk.get("next_offset")
            if as_json:  # one object per line (JSON lines), for a pipe into jq
                click.echo(json.dumps(chunk, separators=(",", ":")))
            elif text:
                click.echo(text, nl=False, err=stream == "stderr")
            if iid is None and isinstance(chunk.get("instance"), str):
                iid = chunk["instance"]  # keep reading the same instance
            moved = isinstance(nxt, int) and nxt != offset and bool(text)
            if isinstance(nxt, int):
                offset = nxt
            if not moved:
                if not follow:
                    break
                time.sleep(FOLLOW_POLL_S)  # the server had nothing new: ask again shortly
    except KeyboardInterrupt:
        pass


# ---------------------------------------------------------------------- registration
def register(root: click.Group) -> None:
    """Add the operator commands, and the common options, to the root `prisn` group."""
    names = {p.name for p in root.params}
    for decls, kw in _common_specs():
        opt = click.Option(list(decls), **kw)
        if opt.name not in names:
            root.params.append(opt)
    for cmd in (cluster, deploy, status, scale, delete, logs):
        root.add_command(cmd)

