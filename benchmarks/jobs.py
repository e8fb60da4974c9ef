"""Pieces of benchmarks/bench_jobs.py (issue 15) that only talk to a cluster's public HTTP API
and to /proc: the stamp script every benchmark job runs, reading the stamps back, RFC 3339
times, an execution listing per deployment, metric values and a server's CPU ticks.

The stamp script is a bash script (runtime `bash` from the `.sh` extension, the cheapest
runtime of actors/runner.RUNTIMES): one `printf` builtin appends
"<PRISN_INSTANCE> <EPOCHREALTIME>" to a file, a single `write(2)` of < PIPE_BUF bytes with
O_APPEND, so concurrent runs on every node never interleave a line. PRISN_INSTANCE of an
execution is `x.<execution id>.<attempt>` (actors/workloads.EXEC_PREFIX).

Stdlib only. Every function is a plain blocking call run by the caller's (main) thread."""

from __future__ import annotations

import http.client
import shlex
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.cluster import PrisnNode, http_call, try_http_json

EXEC_PREFIX = "x."


def stamp_script(stamps: Path) -> str:
    """A bash script appending "<PRISN_INSTANCE> <EPOCHREALTIME>" to `stamps`."""
    return ("#!/bin/bash\n"
            f"printf '%s %s\\n' \"$PRISN_INSTANCE\" \"$EPOCHREALTIME\" >> {shlex.quote(str(stamps))}\n")


def read_stamps(stamps: Path) -> dict[str, float]:
    """execution id -> the wall time (s) its process (first attempt seen) wrote its stamp.
    Lines that are not `x.<id>.<attempt> <float>` are skipped."""
    out: dict[str, float] = {}
    try:
        text = stamps.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2 or not parts[0].startswith(EXEC_PREFIX):
            continue
        exec_id = parts[0][len(EXEC_PREFIX):].rsplit(".", 1)[0]
        try:
            out.setdefault(exec_id, float(parts[1]))
        except ValueError:
            continue
    return out


def stamp_counts(stamps: Path) -> Counter[str]:
    """execution id -> how many processes wrote a stamp for it (all attempts)."""
    c: Counter[str] = Counter()
    try:
        text = stamps.read_text()
    except OSError:
        return c
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith(EXEC_PREFIX):
            c[parts[0][len(EXEC_PREFIX):].rsplit(".", 1)[0]] += 1
    return c


def epoch(ts: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 time (`...Z`), None for None."""
    if not ts:
        return None
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def create_deployment(node: PrisnNode, doc: dict[str, Any]) -> dict[str, Any]:
    """POST /api/v1/deployments on `node`; the created deployment (RuntimeError otherwise)."""
    res = try_http_json(node.http_port, "POST", "/api/v1/deployments", doc, timeout=30.0)
    if res is None or res[0] != 201 or not isinstance(res[1], dict):
        raise RuntimeError(f"create {doc.get('name')} on {node.node_id}: {res}")
    return res[1]


def delete_deployment(node: PrisnNode, name: str) -> bool:
    res = try_http_json(node.http_port, "DELETE", f"/api/v1/deployments/{name}", timeout=30.0)
    return res is not None and res[0] in (204, 404)


def executions_of(node: PrisnNode, deployment_id: str) -> list[dict[str, Any]] | None:
    """Every execution of `deployment_id` `node` holds (paged, 1,000 a page, at most 20
    pages), None if the node does not answer."""
    items: list[dict[str, Any]] = []
    for page in range(20):
        res = try_http_json(node.http_port, "GET", f"/api/v1/executions?deployment_id="
                            f"{deployment_id}&limit=1000&offset={page * 1000}", timeout=30.0)
        if res is None or res[0] != 200 or not isinstance(res[1], dict):
            return None
        got = res[1].get("items") or []
        items += got
        if len(got) < 1000:
            break
    return items


def metric_values(node: PrisnNode, names: tuple[str, ...]) -> dict[str, float]:
    """Sum of the samples of each metric in `names` from `node`'s GET /metrics (labels
    ignored; a missing metric is absent from the answer; empty if the node does not answer)."""
    try:
        status, raw = http_call(node.http_port, "GET", "/metrics", timeout=15.0)
    except (OSError, http.client.HTTPException):
        return {}
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for line in raw.decode(errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            try:
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
    return out


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime + stime of `pid`'s own threads, cutime + cstime of its reaped children) in
    clock ticks; (0, 0) if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return 0, 0
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from the first line of /proc/stat
    (idle and iowait count as not busy)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)
