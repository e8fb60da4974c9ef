"""The test helpers every layer shares: waiting for a condition with a deadline (never a bare
sleep), free ports, unique node ids. The one place for them: test modules import from here
(or from tests/procs.py, which re-exports `wait_for` for process tests), never from each other.

Runs on the calling thread (`until` on the running asyncio loop).
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

# what a process test retries while a node starts or restarts
NET_ERRORS: tuple[type[BaseException], ...] = (OSError, http.client.HTTPException, ValueError,
                                                KeyError)


class WaitTimeout(AssertionError, TimeoutError):
    """A condition did not hold before its deadline (an AssertionError for pytest, a
    TimeoutError for callers that handle a timeout)."""


def wait_until(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
               interval: float = 0.002,
               ignore: tuple[type[BaseException], ...] = ()) -> Any:
    """Poll `cond` until it returns a truthy value, and return that value; raise
    `WaitTimeout` once `timeout` seconds passed. Exceptions of the `ignore` types count as
    "not yet" (the last one is named in the failure)."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except ignore as e:
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc})" if last_exc is not None else ""
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """`wait_until` for real processes: network errors while a node is down are retried."""
    return wait_until(cond, timeout, what, interval, ignore=NET_ERRORS)


async def until(cond: Callable[[], Any], what: str = "condition", timeout: float = 10.0,
                interval: float = 0.002) -> None:
    """`wait_until` on the running asyncio loop: yields to it between polls."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


_HANDED_OUT: set[int] = set()  # ports free_port returned in this process (bounded below)


def free_port() -> int:
    """A loopback TCP port nobody listens on (bound and released at once), never one this
    process handed out before: a port given to a node that is not listening yet (not
    started, or down for a restart) is free to the kernel and came back twice (CI: a node's
    HTTP port was another node's raft port)."""
    if len(_HANDED_OUT) > 20_000:  # most of the ephemeral range: start over
        _HANDED_OUT.clear()
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("free_port: 100 ports in a row were handed out before")


PROMTOOL = shutil.which("promtool")  # tests that need it skip when it is None


def promtool_check(text: str) -> None:
    """`promtool check metrics` accepts this exposition (lint: names, types, help)."""
    assert PROMTOOL is not None
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()


_ids = itertools.count()


def unique_id(prefix: str, tag: str) -> str:
    """A node id no other test in this process uses (inproc names live per context, but a
    readable unique id keeps failures easy to attribute)."""
    return f"{prefix}-{tag}-{os.getpid()}-{next(_ids)}"
