"""Shared helpers of the executions-table tests: commands fed to a `DeploymentStore` through
a `Feeder`, with one fixed timestamp and fresh idempotency keys."""

from __future__ import annotations

import itertools

from prisn.fsm.commands import COMMAND_VERSION
from prisn.fsm.executions import cron_command
from prisn.workloads.cron import Fire, Miss
from tests.feeder import Feeder

TS = "2026-06-01T12:00:00.000Z"
T0 = 1780315200  # 2026-06-01T12:00:00Z
_keys = itertools.count(1)


def cmd(op: str, **fields: object) -> dict:
    return {"v": COMMAND_VERSION, "op": op, "key": f"k{next(_keys)}",
            "ts": fields.pop("ts", TS), **fields}


def setup() -> tuple[Feeder, str, str]:
    """A store with a job `j` and a cronjob `c` (ids returned)."""
    f = Feeder()
    _, j = f.create(name="j")
    _, c = f.create(name="c", schedule="@every 1s")
    return f, j["id"], c["id"]


def fire(f: Feeder, dep: str, at: int, after: int | None, cancel: tuple[str, ...] = ()
         ) -> tuple[int, dict]:
    return f.run(cron_command(Fire(dep, at, after, cancel), ts=TS, round_id=f"r{next(_keys)}"))


def miss(f: Feeder, dep: str, first: int, last: int, after: int | None, count: int = 1,
         reason: str = "late") -> tuple[int, dict]:
    return f.run(cron_command(Miss(dep, first, last, count, reason, after), ts=TS,
                              round_id=f"r{next(_keys)}"))


def update(f: Feeder, exec_id: str, status: str, attempt: int = 1, **kw: object
           ) -> tuple[int, dict]:
    return f.run(cmd("execution.update", id=exec_id, status=status, attempt=attempt, **kw))


def reset_keys() -> None:
    """Number keys from 1 again (a golden digest must not depend on what ran before)."""
    global _keys
    _keys = itertools.count(1)


def round_id() -> str:
    """A fresh cron plan round id."""
    return f"r{next(_keys)}"
