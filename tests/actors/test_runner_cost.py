"""What the runner's per-start cost cuts keep: `procs.json` is written at most once per
actor loop turn for a burst of starts, and still before any `Started` report of the turn
leaves; `shutil.which` is called once for many starts and again after the runtime moves.

Real processes, real files; every wait polls a condition with a deadline."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

import actors.runner as runner_mod
from actors.runner import RunnerActor, WhichCache, resolve_command
from prisn.messages import RunnerDesired
from prisn.workloads.runner import InstanceSpec, RestartPolicy
from tests.helpers import wait_until
from transport.mailbox import Outbox

BURST = 20


class CountingRunner(RunnerActor):
    """Records how many groups each procs.json write held (runner thread)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.writes: list[int] = []

    def _write_records(self) -> None:
        self.writes.append(len(self._procs))
        super()._write_records()


def _on_disk(data: Path) -> set[int]:
    doc = json.loads((data / "instances" / "procs.json").read_text())
    return {g["pid"] for g in doc["groups"]}


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.term()


def test_a_burst_of_starts_writes_the_records_once_and_before_reporting(
        tmp_path: Path, ctx: zmq.Context) -> None:
    scripts, data = tmp_path / "scripts", tmp_path / "data"
    scripts.mkdir()
    (scripts / "idle.py").write_text("import time; time.sleep(1000)\n")
    unrecorded: list[int] = []
    lock = threading.Lock()
    reported: dict[str, int] = {}

    def got(batch: list[dict[str, Any]]) -> None:  # runner thread, right after the turn
        on_disk = _on_disk(data)
        with lock:
            for r in batch:
                if r.get("pid") is not None:
                    reported[r["id"]] = r["pid"]
                    if r["pid"] not in on_disk:
                        unrecorded.append(r["pid"])

    node = f"cost-{os.getpid()}"
    r = CountingRunner(ctx, node, data, on_status=got, report_interval=0.0,
                       policy=RestartPolicy(stop_grace=1.0))
    r.start()
    assert r.started.wait(30) and r.failure is None
    out = Outbox(ctx, node)
    try:
        out.send("runner", RunnerDesired(instances=[
            {"id": f"b-{k}", "deployment": "web", "cwd": str(scripts), "source": "idle.py"}
            for k in range(BURST)]))
        wait_until(lambda: r.starts == BURST and len(reported) == BURST, timeout=120,
                   what="the burst started and reported")
        wait_until(lambda: BURST in r.writes, timeout=30, what="the records of the burst")
        upto = r.writes[: r.writes.index(BURST) + 1]
        assert [n for n in upto if n] == [BURST], upto  # one write for the whole burst
        assert _on_disk(data) == set(reported.values())
        with lock:
            assert unrecorded == []  # no Started report before its record was on disk
    finally:
        r.stop()
        r.join(60)
        out.close()
    assert r.failure is None and not r.is_alive()
    assert _on_disk(data) == set()


def _exe(d: Path, name: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text("#!/bin/sh\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return p


def test_which_runs_once_for_many_starts_and_again_after_the_runtime_moves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = shutil.which

    def counting(cmd: str, mode: int = os.F_OK | os.X_OK, path: str | None = None) -> Any:
        calls.append(cmd)
        return real(cmd, mode, path)

    monkeypatch.setattr(runner_mod.shutil, "which", counting)
    monkeypatch.setattr(runner_mod, "WHICH", WhichCache())
    first, second = tmp_path / "a", tmp_path / "b"
    exe = _exe(first, "node")
    second.mkdir()
    monkeypatch.setenv("PATH", f"{first}{os.pathsep}{second}")
    (tmp_path / "app.js").write_text("")
    spec = InstanceSpec(id="w", deployment="web", cwd=str(tmp_path), source="app.js")
    for _ in range(50):
        assert resolve_command(spec)[0][0] == str(exe)
    assert calls == ["node"]
    moved = second / "node"
    exe.rename(moved)  # the cached path vanishes: looked up again, not failed forever
    assert resolve_command(spec)[0][0] == str(moved)
    assert resolve_command(spec)[0][0] == str(moved)
    assert calls == ["node", "node"]
    moved.unlink()
    with pytest.raises(ValueError, match="not found"):
        resolve_command(spec)
    _exe(first, "node")  # a miss is not cached: it comes back as soon as it is there
    assert resolve_command(spec)[0][0] == str(first / "node")


def test_the_which_cache_is_bounded_keyed_by_path_and_expires() -> None:
    c = WhichCache(max_entries=2, ttl=10.0)
    sh = shutil.which("sh")
    assert sh is not None
    for k in range(5):
        assert c.resolve("sh", f"{os.path.dirname(sh)}{os.pathsep}/nope{k}", now=0.0) == sh
    assert len(c._d) == 2 and c.lookups == 5
    key = f"{os.path.dirname(sh)}{os.pathsep}/nope4"
    c.resolve("sh", key, now=9.0)
    assert c.lookups == 5
    c.resolve("sh", key, now=10.0)  # too old: looked up again (a shadowing exe is seen)
    assert c.lookups == 6
    c.forget_path(sh)
    assert not c._d


def test_the_start_cost_benchmark_runs(tmp_path: Path) -> None:
    from benchmarks.bench_runner_start import main
    out = tmp_path / "r.json"
    assert main(["--instances", "3", "--rounds", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["start_failures"] == 0 and len(res["cpu_ms_per_start_stop"]) == 1
