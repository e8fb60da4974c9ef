"""`prisn secret create | list | get | rotate | delete` (main thread; one request each).

    prisn secret create NAME --from-literal K=V [--from-literal K=V ...] [--namespace NS]
    prisn secret list [--namespace NS]            names and key names, never values
    prisn secret get NAME [--namespace NS]        the values (developer or admin token)
    prisn secret rotate NAME --from-literal K=V ... [--namespace NS]   replaces all values
    prisn secret delete NAME [--namespace NS]

Values are given on the command line (visible in the shell history and to `ps` on this host
while the command runs); ``--from-literal K=-`` reads that value from stdin instead. Every
failure is one line on stderr, exit 1 (usage errors exit 2).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from urllib.parse import quote

import click

from prisn.cli_ops import _call, _client, _json_out, _print_json, common_options, table

PATH = "/api/v1/secrets"


def _literals(values: Sequence[str]) -> dict[str, str]:
    """``K=V`` pairs (``K=-``: the value is stdin, read once); at least one."""
    if not values:
        raise click.UsageError("give at least one --from-literal KEY=VALUE")
    data: dict[str, str] = {}
    stdin_used = False
    for item in values:
        key, sep, val = item.partition("=")
        if not sep or not key:  # never echo what may be a value
            raise click.BadParameter("must be KEY=VALUE with a non-empty KEY",
                                     param_hint="'--from-literal'")
        if val == "-":
            if stdin_used:
                raise click.BadParameter("only one value can be read from stdin",
                                         param_hint="'--from-literal'")
            stdin_used = True
            val = sys.stdin.read()
        data[key] = val
    return data


def _seg(name: str) -> str:
    return quote(name, safe="")


@click.group("secret")
@common_options
def secret() -> None:
    """Secrets: named maps of values that deployments list (encrypted at rest with a
    cluster key)."""


_LITERAL = click.option("--from-literal", "literals", multiple=True, metavar="KEY=VALUE",
                        help="A key and its value (repeatable); KEY=- reads the value from "
                        "stdin.")
_NAMESPACE = click.option("--namespace", help="The secret's namespace [default: default].")


@secret.command("create")
@click.argument("name")
@_LITERAL
@_NAMESPACE
@common_options
@click.pass_context
def create(ctx: click.Context, name: str, literals: tuple[str, ...],
           namespace: str | None) -> None:
    """Create secret NAME."""
    data = _literals(literals)
    c = _client(ctx)
    r = _call(lambda: c.request("POST", PATH, {"name": name, "data": data},
                                query={"namespace": namespace}))
    if _json_out(ctx):
        _print_json(r.body)
    else:
        b = r.body
        click.echo(f"created secret {b['namespace']}/{b['name']} ({len(b['keys'])} keys)")


@secret.command("list")
@_NAMESPACE
@common_options
@click.pass_context
def list_(ctx: click.Context, namespace: str | None) -> None:
    """List secrets (names and key names only)."""
    c = _client(ctx)
    r = _call(lambda: c.request("GET", PATH, query={"namespace": namespace, "limit": 1000}))
    if _json_out(ctx):
        _print_json(r.body)
        return
    rows = [(s["namespace"], s["name"], ",".join(s["keys"]), s["version"], s["updated_at"])
            for s in r.body["items"]]
    click.echo(table(("NAMESPACE", "NAME", "KEYS", "VERSION", "UPDATED"), rows))


@secret.command("get")
@click.argument("name")
@_NAMESPACE
@common_options
@click.pass_context
def get(ctx: click.Context, name: str, namespace: str | None) -> None:
    """Print the values of secret NAME (KEY=VALUE lines; -o json for the whole record)."""
    c = _client(ctx)
    r = _call(lambda: c.request("GET", f"{PATH}/{_seg(name)}", query={"namespace": namespace}))
    if _json_out(ctx):
        _print_json(r.body)
        return
    for key, value in sorted(r.body["data"].items()):
        click.echo(f"{key}={value}")


@secret.command("rotate")
@click.argument("name")
@_LITERAL
@_NAMESPACE
@common_options
@click.pass_context
def rotate(ctx: click.Context, name: str, literals: tuple[str, ...],
           namespace: str | None) -> None:
    """Replace all the values of secret NAME (bumps its version)."""
    data = _literals(literals)
    c = _client(ctx)
    r = _call(lambda: c.request("PUT", f"{PATH}/{_seg(name)}", {"data": data},
                                query={"namespace": namespace}))
    if _json_out(ctx):
        _print_json(r.body)
    else:
        b = r.body
        click.echo(f"rotated secret {b['namespace']}/{b['name']} (version {b['version']})")


@secret.command("delete")
@click.argument("name")
@_NAMESPACE
@common_options
@click.pass_context
def delete(ctx: click.Context, name: str, namespace: str | None) -> None:
    """Delete secret NAME (refused while a deployment lists it)."""
    c = _client(ctx)
    _call(lambda: c.request("DELETE", f"{PATH}/{_seg(name)}", query={"namespace": namespace}))
    ns = namespace or "default"
    if _json_out(ctx):
        _print_json({"deleted": name, "namespace": ns})
    else:
        click.echo(f"deleted secret {ns}/{name}")


def register(root: click.Group) -> None:
    """Add `prisn secret` to the root group."""
    root.add_command(secret)
