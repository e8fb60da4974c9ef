"""`prisn run | trigger | executions | execution | cancel` (main thread; issue 15).

    prisn run NAME [--env K=V ...] [--arg A ...] [--job-timeout S] [--async] [--namespace NS]
        runs job NAME once: waits (state changes on stderr), prints its output, exits with
        its exit code (1 when it has none: timed out, cancelled, lost); --async prints the
        execution id and returns at once
    prisn run SCRIPT [--wait] [-e K=V ...] [--runtime R] [--job-timeout S] [-- ARGS...]
        a one-off (ad-hoc) execution of a local file or directory: packed and uploaded as
        an artifact (as `prisn deploy PATH`), then run once on a node the scheduler picks;
        prints the execution id, or with --wait follows it as above. An argument is a
        SCRIPT when it is not a valid deployment name (it holds a '.' or a '/', e.g.
        ``job.py`` or ``./job``); a plain name is always the job deployment NAME
    prisn trigger NAME [--wait] [-e K=V ...] [--arg A ...] [--job-timeout S]
        the same run; without --wait it prints the execution id and returns (``run --async``)
    prisn executions [NAME] [--status S] [--namespace NS]   newest first
    prisn execution ID                                      one execution
    prisn cancel ID                                         cancel an unfinished one
    prisn logs EXEC_ID [-f]      its output, stdout to stdout, stderr to stderr (-f: follow)

The wait polls ``GET /api/v1/executions/{id}`` (so no HTTP request outlives the client's
timeout); interrupting it (Ctrl-C) cancels nothing. Every failure is one line on stderr,
exit 1 (usage errors exit 2).
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
from urllib.parse import quote

import click

from prisn.cli_ops import _call, _client, _env_pairs, _json_out, _print_json, common_options, table
from prisn.client import Client, ClientError

PATH = "/api/v1/executions"
TERMINAL = ("Completed", "Failed", "Lost", "Cancelled")
POLL = 0.2  # seconds between looks while waiting
WAIT_GRACE = 60.0  # seconds the wait may take beyond the execution's timeout

_DEP_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_-]*")
_NAMESPACE = click.option("--namespace", help="The deployment's namespace [default: default].")


def _seg(value: str) -> str:
    return quote(value, safe="")


@click.command("run")
@click.argument("name", metavar="NAME|SCRIPT")
@click.argument("extra", nargs=-1, metavar="[-- ARGS...]")
@click.option("--env", "-e", "env", multiple=True, metavar="KEY=VALUE",
              help="Environment for this run (repeatable; wins over the deployment's).")
@click.option("--arg", "args", multiple=True, help="Arguments replacing the deployment's "
              "(repeatable; ARGS after -- are appended).")
@click.option("--job-timeout", "timeout", type=click.IntRange(1, 7 * 86400), default=None,
              help="Seconds before the run is killed [default: 600].")
@click.option("--runtime", help="SCRIPT only: the runtime (python3, node, bash, ...) "
              "[default: told by the file's extension].")
@click.option("--entry", metavar="FILE", help="For a directory SCRIPT: the file to run, "
              "relative to it [default: the first of main.py, index.js, main.sh].")
@click.option("--wait", is_flag=True, help="SCRIPT: follow the run (state changes, output) "
              "and exit with its exit code (NAME always does, unless --async).")
@click.option("--async", "run_async", is_flag=True, help="Print the execution id and return.")
@_NAMESPACE
@common_options
@click.pass_context
def run(ctx: click.Context, name: str, extra: tuple[str, ...], env: tuple[str, ...],
        args: tuple[str, ...], timeout: int | None, runtime: str | None, entry: str | None,
        wait: bool, run_async: bool, namespace: str | None) -> None:
    """Run job NAME once and exit with its exit code; or run the local file (or directory)
    SCRIPT once as an ad-hoc execution: print its id, or with --wait follow it."""
    if wait and run_async:
        raise click.UsageError("--wait and --async exclude each other")
    args = (*args, *extra)
    if not is_script(name):
        if runtime is not None or entry is not None:
            raise click.UsageError(f"--runtime and --entry are for a SCRIPT; {name!r} is a "
                                   "deployment name (write ./NAME to run a local file)")
        _run(ctx, name, env, args, timeout, run_async, namespace)
        return
    _run(ctx, name, env, args, timeout, not wait, namespace,
         target=_upload_script(ctx, name, runtime, entry))


def is_script(arg: str) -> bool:
    """Whether `prisn run ARG` means a local file: ARG is not a valid deployment name
    (names hold only letters, digits, '_' and '-', so ``job.py``, ``./job`` and
    ``/tmp/x.sh`` are files, ``job`` is a deployment)."""
    return _DEP_NAME_RE.fullmatch(arg) is None


def _upload_script(ctx: click.Context, path: str, runtime: str | None,
                   entry: str | None) -> dict:
    """Pack and upload SCRIPT (as `prisn deploy PATH` does); the execution body's fields
    naming it (``artifact``, ``entry``, and ``runtime`` when given)."""
    from prisn.workloads.artifacts import ArtifactError, digest_of, pack_path

    if not os.path.exists(path):
        raise click.ClickException(f"no such file: {path} (a SCRIPT names a local file; a "
                                   "job deployment is named without '.' or '/')")
    try:
        data, entry_file = pack_path(path, entry)
    except (ArtifactError, OSError) as e:
        raise click.ClickException(f"cannot pack {path}: {e}") from None
    digest = digest_of(data)
    c = _client(ctx)
    up = _call(lambda: c.upload_artifact(data, digest))
    click.echo(f"uploaded artifact {digest[:12]} ({len(data)} bytes, "
               f"{'new' if up.status == 201 else 'already stored'})", err=True)
    target = {"artifact": digest, "entry": entry_file}
    if runtime is not None:
        target["runtime"] = runtime
    return target


@click.command("trigger")
@click.argument("name")
@click.option("--env", "-e", "env", multiple=True, metavar="KEY=VALUE",
              help="Environment for this run (repeatable; wins over the deployment's).")
@click.option("--arg", "args", multiple=True, help="Arguments replacing the deployment's "
              "(repeatable).")
@click.option("--job-timeout", "timeout", type=click.IntRange(1, 7 * 86400), default=None,
              help="Seconds before the run is killed [default: 600].")
@click.option("--wait", is_flag=True, help="Show its state changes and output, and exit "
              "with its exit code.")
@_NAMESPACE
@common_options
@click.pass_context
def trigger(ctx: click.Context, name: str, env: tuple[str, ...], args: tuple[str, ...],
            timeout: int | None, wait: bool, namespace: str | None) -> None:
    """Start an execution of job (or cron job) NAME now; print its id, or with --wait
    follow it to the end (as `prisn run NAME`)."""
    _run(ctx, name, env, args, timeout, not wait, namespace)


def _run(ctx: click.Context, name: str, env: tuple[str, ...], args: tuple[str, ...],
         timeout: int | None, run_async: bool, namespace: str | None,
         target: dict | None = None) -> None:
    body: dict = {**(target or {"name": name}), "async": True}
    if env:
        body["env"] = _env_pairs(env)
    if args:
        body["args"] = list(args)
    if timeout is not None:
        body["timeout"] = timeout
    c = _client(ctx)
    r = _call(lambda: c.request("POST", PATH, body, query={"namespace": namespace}))
    e = r.body
    if run_async:
        if _json_out(ctx):
            _print_json(e)
        else:
            click.echo(e["id"])
        return
    deadline = time.monotonic() + (timeout or 600) + WAIT_GRACE
    seen = None
    while True:
        state = (e["status"], e.get("node"))
        if state != seen:
            seen = state
            where = f" on {e['node']}" if e.get("node") else ""
            click.echo(f"execution {e['id']}: {e['status']}{where}", err=True)
        if e["status"] in TERMINAL:
            break
        if time.monotonic() > deadline:
            raise click.ClickException(f"execution {e['id']} is still {e['status']}; "
                                       f"see prisn execution {e['id']}")
        time.sleep(POLL)
        e = _get(c, e["id"])
    if e.get("node"):
        out = c.request("GET", f"{PATH}/{_seg(e['id'])}/logs", allow=(404, 503))
        if out.status == 200 and isinstance(out.body, dict):
            _write_streams(out.body)
        else:
            click.echo(f"prisn: output not available (HTTP {out.status})", err=True)
    if _json_out(ctx):
        _print_json(e)
    if e["status"] != "Completed" and e.get("error"):
        click.echo(f"execution {e['id']}: {e['error']}", err=True)
    code = e.get("exit_code")
    # sys.exit, not ctx.exit: with standalone_mode off click returns ctx.exit's code unused
    sys.exit(code if isinstance(code, int) and 0 < code <= 255 and e["status"] == "Failed"
             else (0 if e["status"] == "Completed" else 1))


def _get(c: Client, exec_id: str) -> dict:
    return _call(lambda: c.request("GET", f"{PATH}/{_seg(exec_id)}")).body


def _rows(items: list[dict]) -> list[list]:
    return [[e["id"], e["namespace"], e["name"], e["status"], e.get("exit_code"),
             e.get("node"), e.get("scheduled_at") or "", e.get("created_at"),
             e.get("duration_ms")] for e in items]


_HEADERS = ("ID", "NAMESPACE", "NAME", "STATUS", "EXIT", "NODE", "SCHEDULED", "CREATED",
            "MS")


@click.command("executions")
@click.argument("name", required=False)
@click.option("--status", "status_", help="Only executions in this status.")
@_NAMESPACE
@common_options
@click.pass_context
def executions(ctx: click.Context, name: str | None, status_: str | None,
               namespace: str | None) -> None:
    """List executions (of deployment NAME), newest first."""
    c = _client(ctx)
    query: dict = {"namespace": namespace, "status": status_, "limit": 1000}
    if name is not None:
        dep = _call(lambda: c.request("GET", f"/api/v1/deployments/{_seg(name)}",
                                      query={"namespace": namespace})).body
        query["deployment_id"] = dep["id"]
    r = _call(lambda: c.request("GET", PATH, query=query))
    if _json_out(ctx):
        _print_json(r.body)
        return
    click.echo(table(_HEADERS, _rows(r.body["items"])))


@click.command("execution")
@click.argument("exec_id", metavar="ID")
@common_options
@click.pass_context
def execution(ctx: click.Context, exec_id: str) -> None:
    """Show one execution."""
    c = _client(ctx)
    r = _call(lambda: c.request("GET", f"{PATH}/{_seg(exec_id)}"))
    if _json_out(ctx):
        _print_json(r.body)
        return
    for k, v in r.body.items():
        click.echo(f"{k}: {'' if v is None else v}")


@click.command("cancel")
@click.argument("exec_id", metavar="ID")
@common_options
@click.pass_context
def cancel(ctx: click.Context, exec_id: str) -> None:
    """Cancel an unfinished execution."""
    c = _client(ctx)
    r = _call(lambda: c.request("POST", f"{PATH}/{_seg(exec_id)}/cancel"))
    if _json_out(ctx):
        _print_json(r.body)
    else:
        click.echo(f"execution {r.body['id']}: {r.body['status']}")


# ---------------------------------------------------------------------- logs EXEC_ID
EXEC_ID_RE = re.compile(r"[0-9a-f]{32}")  # `new_id` and `fire_id`: 32 lowercase hex digits


def looks_like_execution(arg: str) -> bool:
    """Whether `arg` has an execution id's shape (a deployment may be named so too: the
    caller tries the execution first and falls back to the deployment on 404)."""
    return EXEC_ID_RE.fullmatch(arg) is not None


def execution_logs(ctx: click.Context, c: Client, exec_id: str, follow: bool) -> bool:
    """`prisn logs EXEC_ID [-f]`: print the execution's output, stdout to stdout and stderr
    to stderr; with `follow`, stream it (``GET .../logs?follow=true``, newline-delimited
    JSON) until the execution is finished; with -o json, print the answer (follow: each
    line) as JSON. False, printing nothing, when there is no such execution."""
    r = _call(lambda: c.request("GET", f"{PATH}/{_seg(exec_id)}", allow=(404,)))
    if r.status == 404:
        return False
    if not follow:
        e = r.body
        if not e.get("node") and e.get("status") not in TERMINAL:
            raise click.ClickException(f"execution {exec_id} has not been placed on a node "
                                       "yet")
        out = _call(functools.partial(c.request, "GET", f"{PATH}/{_seg(exec_id)}/logs"))
        if _json_out(ctx):
            _print_json(out.body)
            return True
        _write_streams(out.body)
        return True
    try:
        for line in c.json_lines(f"{PATH}/{_seg(exec_id)}/logs", query={"follow": "true"}):
            if _json_out(ctx):
                click.echo(json.dumps(line, separators=(",", ":")))
            elif "stream" in line:
                _write_streams({line["stream"]: line.get("data", "")})
            if "status" in line and not _json_out(ctx) and line["status"] not in TERMINAL:
                raise click.ClickException(f"execution {exec_id} is still {line['status']}")
    except ClientError as err:
        raise click.ClickException(str(err)) from None
    except KeyboardInterrupt:
        pass
    return True


def _write_streams(body: dict) -> None:
    """Write the ``stdout`` and ``stderr`` texts of `body` to this process's own."""
    for name, f in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        text = body.get(name)
        if isinstance(text, str) and text:
            f.write(text)
            f.flush()


def register(root: click.Group) -> None:
    for cmd in (run, trigger, executions, execution, cancel):
        root.add_command(cmd)
