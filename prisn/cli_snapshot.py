"""`prisn snapshot save | restore | status`: online backup and restore (main thread).

    prisn snapshot save FILE [--server ...]      stream a running node's state into FILE
    prisn snapshot status FILE                   verify FILE, print index, term, hash
    prisn snapshot restore FILE --data-dir DIR --node-id ID [--raft-addr ADDR]

`save` downloads into ``FILE.part`` (progress on a terminal), checks the SHA-256 the server
announced and the whole file (`prisn.backup.verify`), and only then renames it to FILE: a
failed save leaves no FILE behind. `restore` writes nothing unless the whole file verifies
(see `prisn.backup`). Every failure is one line on stderr, exit 1 (usage errors exit 2).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from prisn.cli_ops import _client, _json_out, common_options
from prisn.client import ClientError
from prisn.config import DEFAULT_RAFT_ADDR, ConfigError, parse_addr

SNAPSHOT_PATH = "/api/v1/cluster/snapshot"


@click.group("snapshot")
@common_options
def snapshot() -> None:
    """Online backup (save) and restore of the cluster state."""


class _Progress:
    """Progress on stderr when it is a terminal, at most 10 updates a second."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.tty or (now - self._last < 0.1 and done != total):
            return
        self._last = now
        pct = f" {100 * done / total:5.1f}%" if total else ""
        click.echo(f"\r{done / 2**20:9.1f} MiB{pct}", err=True, nl=False)

    def end(self) -> None:
        if self.tty:
            click.echo("", err=True)


@snapshot.command("save")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--strong", is_flag=True, help="Wait for a read barrier first: the snapshot then "
              "holds every write acknowledged before the request.")
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@common_options
@click.pass_context
def save(ctx: click.Context, file: str, strong: bool, force: bool) -> None:
    """Stream a consistent snapshot of a running node's applied state into FILE."""
    from prisn.backup import RestoreError, verify

    target = Path(file)
    if target.exists() and not force:
        raise click.ClickException(f"{file} exists (--force replaces it)")
    part = target.with_name(target.name + ".part")
    client = _client(ctx)
    progress = _Progress()
    t0 = time.monotonic()
    try:
        # 0600: the file holds the whole state, token records included
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as out:
            hdrs = client.download(SNAPSHOT_PATH, out, progress=progress,
                                   headers={"X-Prisn-Consistency": "strong"} if strong else {})
            out.flush()
            os.fsync(out.fileno())
        progress.end()
        found, _data = verify(part)
        del _data
        want = hdrs.get("x-prisn-snapshot-sha256", "")
        if want and want != found.meta.checksum:
            raise RestoreError(f"the file's SHA-256 {found.meta.checksum} is not the one the "
                               f"server announced ({want})")
        os.replace(part, target)
    except (ClientError, RestoreError, OSError) as e:
        progress.end()
        part.unlink(missing_ok=True)
        raise click.ClickException(str(e)) from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    meta = found.meta
    info = {"file": str(target), "index": meta.index, "term": meta.term, "size": meta.size,
            "sha256": meta.checksum, "deployments": found.deployments,
            "state_hash": found.state_hash, "seconds": round(time.monotonic() - t0, 3)}
    if _json_out(ctx):
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(f"saved snapshot at index {meta.index} (term {meta.term}) to {target}: "
                   f"{meta.size} bytes, {found.deployments} deployments, sha256 "
                   f"{meta.checksum}")


@snapshot.command("status")
@click.argument("file", type=click.Path(dir_okay=False))
@common_options
@click.pass_context
def status(ctx: click.Context, file: str) -> None:
    """Verify a snapshot file and print what it holds."""
    from prisn.backup import RestoreError, verify

    try:
        found, _data = verify(file)
    except RestoreError as e:
        raise click.ClickException(str(e)) from None
    meta = found.meta
    info = {"index": meta.index, "term": meta.term, "size": meta.size,
            "sha256": meta.checksum, "deployments": found.deployments,
            "state_hash": found.state_hash}
    if _json_out(ctx):
        click.echo(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            click.echo(f"{k:12} {v}")


@snapshot.command("restore")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--data-dir", required=True, help="The new node's data directory (must not "
              "exist, or be empty).")
@click.option("--node-id", required=True, help="The new node's id (its --node-id).")
@click.option("--raft-addr", default="", help="The new node's advertised Raft address "
              "(its --advertise-addr); an empty or wildcard host is this machine's name "
              f"[default: {DEFAULT_RAFT_ADDR}].")
@common_options
@click.pass_context
def restore(ctx: click.Context, file: str, data_dir: str, node_id: str, raft_addr: str) -> None:
    """Seed a new one-node cluster's data directory from a snapshot file."""
    from prisn.backup import RestoreError
    from prisn.backup import restore as do_restore
    from prisn.config import ServerConfig

    if not node_id.strip() or any(c.isspace() for c in node_id):
        raise click.UsageError("--node-id must be a non-empty word")
    addr = raft_addr or DEFAULT_RAFT_ADDR
    try:
        parse_addr(addr, "--raft-addr")
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    # as the server advertises it: an empty or wildcard host is this machine's name (peers
    # could not reach ":7332" or "0.0.0.0:7332")
    addr = ServerConfig(node_id=node_id, data_dir=data_dir, raft_addr=addr).advertised_raft_addr
    t0 = time.monotonic()
    try:
        found = do_restore(file, data_dir, node_id, addr)
    except RestoreError as e:
        raise click.ClickException(str(e)) from None
    meta = found.meta
    info = {"data_dir": data_dir, "node_id": node_id, "raft_addr": addr,
            "cluster_id": found.cluster, "index": meta.index, "term": meta.term,
            "deployments": found.deployments, "state_hash": found.state_hash,
            "seconds": round(time.monotonic() - t0, 3)}
    if _json_out(ctx):
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(f"restored snapshot at index {meta.index} (term {meta.term}, "
                   f"{found.deployments} deployments) into {data_dir} as node {node_id} of "
                   f"a new cluster {found.cluster}; start it with `prisn server --data-dir "
                   f"{data_dir} --node-id {node_id} --cluster --advertise-addr {addr}`, then "
                   "join the other nodes to it with --peers")


def register(cli: click.Group) -> None:
    cli.add_command(snapshot)
