"""The runner actor (`actors.runner.RunnerActor`) with real processes and real scripts: an
HTTP service gets PORT and answers, a crashing script backs off into CrashLoopBackOff, stops
escalate from SIGTERM to SIGKILL, whole process groups go, a SIGKILLed host leaves no child,
a restarted runner stops its predecessor's leftovers, and log files rotate at their bound.

Every wait polls a condition with a deadline (generous: the machine is shared)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from actors.runner import (
    RunnerActor,
    kill_leftovers,
    log_files,
    proc_start_time,
    proc_state,
    read_log,
)
from prisn.messages import RunnerDesired
from prisn.workloads.runner import RestartPolicy
from tests.helpers import wait_until
from tests.procs import free_port
from transport.mailbox import Outbox

REPO = Path(__file__).resolve().parents[2]
_ids = itertools.count()


def dead(pid: int) -> bool:
    return proc_state(pid) in (None, "Z")


FAST = RestartPolicy(backoff_base=0.2, backoff_max=1.0, crashloop_after=3, startup_grace=0.3,
                     roll_settle=0.5, stop_grace=1.0)


class Rig:
    """A context, a runner on `data_dir`, an outbox to it and the reports it sent."""

    def __init__(self, data_dir: Path, scripts: Path, **kw: Any) -> None:
        self.ctx = zmq.Context()
        self.node = f"runner-{os.getpid()}-{next(_ids)}"
        self.data_dir, self.scripts = data_dir, scripts
        self.reports: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        kw.setdefault("policy", FAST)
        self.runner = RunnerActor(self.ctx, self.node, data_dir, on_status=self._got,
                                  report_interval=0.0, **kw)
        self.runner.start()
        assert self.runner.started.wait(30) and self.runner.failure is None
        self.out = Outbox(self.ctx, self.node)

    def _got(self, batch: list[dict[str, Any]]) -> None:
        with self._lock:
            self.reports.extend(batch)

    def desire(self, *instances: dict[str, Any]) -> None:
        full = [{"deployment": "web", "cwd": str(self.scripts), **d} for d in instances]
        self.out.send("runner", RunnerDesired(instances=full))

    def of(self, iid: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.reports if r["id"] == iid]

    def last(self, iid: str) -> dict[str, Any] | None:
        rs = self.of(iid)
        return rs[-1] if rs else None

    def state(self, iid: str) -> str | None:
        r = self.last(iid)
        return None if r is None else r["state"]

    def close(self) -> None:
        self.runner.stop()
        self.runner.join(60)
        assert not self.runner.is_alive()
        self.out.close()
        self.ctx.term()


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    d = tmp_path / "scripts"
    d.mkdir()
    return d


@pytest.fixture
def rig(tmp_path: Path, scripts: Path) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(**kw: Any) -> Rig:
        rigs.append(Rig(tmp_path / "data", scripts, **kw))
        return rigs[-1]

    try:
        yield make
    finally:
        for r in rigs:
            r.close()
        assert rigs[-1].runner.failure is None if rigs else True


def write(scripts: Path, name: str, body: str) -> str:
    (scripts / name).write_text(textwrap.dedent(body))
    return name


def test_a_python_http_service_gets_port_and_answers(rig: Callable[..., Rig],
                                                     scripts: Path) -> None:
    port = free_port()
    write(scripts, "web.py", """
        import http.server, os
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = ("%s %s %s %s %s" % (os.environ["PRISN_INSTANCE"], os.environ["PORT"],
                        os.environ["PRISN_DEPLOYMENT"], os.environ["PRISN_NAMESPACE"],
                        os.environ["MODE"])).encode()
                self.send_response(200); self.end_headers(); self.wfile.write(body)
        print("listening", flush=True)
        http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
    """)
    r = rig()
    iid = "default/web/0"  # a slot id: slashes are fine
    r.desire({"id": iid, "source": "web.py", "port": port, "env": {"MODE": "prod"}})

    def get() -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                return resp.read()
        except OSError:
            return None

    assert wait_until(get, what="the service to answer") == \
        f"{iid} {port} web default prod".encode()
    wait_until(lambda: r.state(iid) == "Running", what="Running")
    last = r.last(iid)
    assert last is not None and last["pid"] and last["restarts"] == 0
    assert abs(last["started_at"] / 1000 - time.time()) < 600 and last["node"] == r.node
    wait_until(lambda: b"listening" in read_log(r.data_dir, iid).data, what="its log")
    r.desire()
    wait_until(lambda: r.state(iid) == "Stopped", what="Stopped")
    assert get() is None


def test_a_crashing_script_backs_off_into_crash_loop(rig: Callable[..., Rig],
                                                     scripts: Path) -> None:
    write(scripts, "crash.py", "import sys; print('boom', flush=True); sys.exit(3)\n")
    r = rig()
    r.desire({"id": "c-0", "source": "crash.py"})
    wait_until(lambda: r.state("c-0") == "CrashLoopBackOff" and r.last("c-0")["restarts"] >= 3,
               what="CrashLoopBackOff")
    last = r.last("c-0")
    assert last is not None and last["exit_code"] == 3 and "exited with code 3" in last["message"]
    starts = sorted({x["started_at"] for x in r.of("c-0") if x["started_at"] is not None})
    assert len(starts) >= 4
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    for k, gap in enumerate(gaps[:3], start=1):  # restart k waits backoff(k) after exit k
        assert gap >= FAST.backoff(k) * 1000 - 5, (k, gaps)
    assert r.runner.failure is None


def test_bad_specs_give_a_clear_status_and_never_fail_the_runner(
        rig: Callable[..., Rig], scripts: Path) -> None:
    write(scripts, "x.rb", "puts 1\n")
    r = rig()
    r.desire({"id": "missing-0", "source": "nope.py"},
             {"id": "unknown-0", "source": "x.rb"},
             {"id": "rt-0", "source": "x.rb", "runtime": "cobol"},
             {"id": "..", "source": "x.py"}, {"deployment": ""})
    wait_until(lambda: all(r.last(i) for i in ("missing-0", "unknown-0", "rt-0")),
               what="three statuses")
    assert "entry file not found" in r.last("missing-0")["message"]  # type: ignore[index]
    assert "cannot tell the runtime" in r.last("unknown-0")["message"]  # type: ignore[index]
    assert "unknown runtime 'cobol'" in r.last("rt-0")["message"]  # type: ignore[index]
    assert r.runner.bad_desired == 2 and r.runner.start_failures >= 3
    assert r.runner.failure is None and r.runner.is_alive()


def test_stop_sends_sigterm_then_sigkill_after_the_grace(rig: Callable[..., Rig],
                                                         scripts: Path) -> None:
    write(scripts, "stubborn.py", """
        import signal, time
        def on_term(*_):
            print("got TERM", flush=True)
        signal.signal(signal.SIGTERM, on_term)
        print("up", flush=True)
        while True:
            time.sleep(0.05)
    """)
    r = rig()
    r.desire({"id": "s-0", "source": "stubborn.py"})
    wait_until(lambda: b"up" in read_log(r.data_dir, "s-0").data, what="the script to start")
    pid = r.last("s-0")["pid"]  # type: ignore[index]
    t0 = time.monotonic()
    r.desire()
    wait_until(lambda: b"got TERM" in read_log(r.data_dir, "s-0").data, what="SIGTERM")
    assert not dead(pid), "SIGTERM ignored: still alive within the grace"
    wait_until(lambda: r.state("s-0") == "Stopped", what="Stopped")
    assert time.monotonic() - t0 >= FAST.stop_grace
    assert dead(pid)
    assert [x["exit_code"] for x in r.of("s-0")][-1] == -signal.SIGKILL


def test_a_process_group_with_a_grandchild_is_fully_stopped(rig: Callable[..., Rig],
                                                            scripts: Path) -> None:
    write(scripts, "parent.py", """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('child up', flush=True); time.sleep(1000)"])
        print("grandchild", child.pid, flush=True)
        time.sleep(1000)
    """)
    r = rig()
    r.desire({"id": "g-0", "source": "parent.py"})
    wait_until(lambda: b"child up" in read_log(r.data_dir, "g-0").data, what="the grandchild")
    line = next(x for x in read_log(r.data_dir, "g-0").data.decode().splitlines()
                if x.startswith("grandchild"))
    gpid = int(line.split()[1])
    pid = r.last("g-0")["pid"]  # type: ignore[index]
    r.desire()
    wait_until(lambda: r.state("g-0") == "Stopped", what="Stopped")
    wait_until(lambda: dead(pid) and dead(gpid), timeout=10, what="the whole group to go")


HOST = """
import sys, time
sys.path.insert(0, {repo!r})
import zmq
from actors.runner import RunnerActor
from prisn.messages import RunnerDesired
from transport.mailbox import Outbox
ctx = zmq.Context()
a = RunnerActor(ctx, "host", {data!r})
a.start()
assert a.started.wait(30) and a.failure is None
Outbox(ctx, "host").send("runner", RunnerDesired(instances=[
    {{"id": "o-0", "deployment": "orphan", "source": "sleeper.py", "cwd": {cwd!r}}}]))
print("host ready", flush=True)
while True:
    time.sleep(1)
"""

SLEEPER = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
with open("pids.tmp", "w") as f:
    f.write("%d %d" % (os.getpid(), child.pid))
os.replace("pids.tmp", "pids")
time.sleep(1000)
"""


def _host(tmp_path: Path, scripts: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """A python process hosting a runner with one instance (which has a grandchild)."""
    write(scripts, "sleeper.py", SLEEPER)
    host = tmp_path / "host.py"
    host.write_text(HOST.format(repo=str(REPO), data=str(tmp_path / "data"), cwd=str(scripts)))
    p = subprocess.Popen([sys.executable, str(host)], cwd=str(REPO))
    pids = wait_until(lambda: (scripts / "pids").exists() and (scripts / "pids").read_text(),
                      what="the instance to start")
    leader, grandchild = (int(x) for x in pids.split())
    return p, leader, grandchild


def test_sigkill_of_the_host_leaves_no_child_behind(tmp_path: Path, scripts: Path) -> None:
    host, leader, grandchild = _host(tmp_path, scripts)
    try:
        assert not dead(leader)
        host.send_signal(signal.SIGKILL)
        host.wait(30)
        wait_until(lambda: dead(leader), timeout=10, what="the instance to die with its host")
    finally:
        for pid in (leader, grandchild):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_a_restarted_runner_stops_what_its_predecessor_left(
        tmp_path: Path, scripts: Path, rig: Callable[..., Rig]) -> None:
    host, leader, grandchild = _host(tmp_path, scripts)
    try:
        host.send_signal(signal.SIGKILL)
        host.wait(30)
        wait_until(lambda: dead(leader), timeout=10, what="the leader to die with its host")
        # the grandchild has no parent-death signal: it is what a restart must clean up
        assert not dead(grandchild)
        r = rig()
        assert r.runner.leftovers_killed == 1
        wait_until(lambda: dead(grandchild), timeout=10, what="the leftover to be stopped")
    finally:
        for pid in (leader, grandchild):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_leftover_records_with_a_reused_pid_are_left_alone() -> None:
    p = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        start = proc_start_time(p.pid)
        assert start is not None
        assert kill_leftovers([{"pid": p.pid, "start": start + 1}]) == 0
        assert p.poll() is None
        assert kill_leftovers([{"pid": "x"}, {"nope": 1}, {"pid": 1}]) == 0
        assert kill_leftovers([{"pid": p.pid, "start": start}]) == 1
        assert p.wait(10) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_log_files_rotate_at_their_bound_and_follow_by_offset(
        rig: Callable[..., Rig], scripts: Path) -> None:
    write(scripts, "chatty.py", """
        import sys, time
        for i in range(6000):
            sys.stdout.write("line %06d %s\\n" % (i, "x" * 40))
        sys.stdout.flush()
        sys.stderr.write("the end\\n"); sys.stderr.flush()
        time.sleep(1000)
    """)
    bound = 64 << 10
    r = rig(log_max_bytes=2 * bound, log_files_kept=2)  # each stream: half of it per file
    r.desire({"id": "l-0", "source": "chatty.py"})
    total = 6000 * 53
    wait_until(lambda: read_log(r.data_dir, "l-0", tail=0).next_offset >= total
               and read_log(r.data_dir, "l-0", tail=0, stream="stderr").next_offset > 0,
               what="all the output")
    d = r.data_dir / "instances" / "l-0"
    files = log_files(d)
    assert len(files) == 2 and all(p.stat().st_size <= bound for _, p in files)
    assert files[-1][0] + files[-1][1].stat().st_size == total
    tail = read_log(r.data_dir, "l-0", tail=100)
    assert tail.data.endswith(b"line 005999 " + b"x" * 40 + b"\n")
    assert len(tail.data) == 100 and tail.next_offset == total
    err = read_log(r.data_dir, "l-0", stream="stderr")
    assert (err.data, err.offset, err.next_offset) == (b"the end\n", 0, 8)
    assert [p.name for _, p in log_files(d, "stderr")] == ["stderr.0.log"]
    old = read_log(r.data_dir, "l-0", offset=0)
    assert old.truncated and old.offset == files[0][0] and old.data
    assert read_log(r.data_dir, "l-0", offset=total).data == b""
    mid = read_log(r.data_dir, "l-0", offset=total - 8, limit=4)
    assert (mid.data, mid.next_offset) == (b"x" * 4, total - 4)
    with pytest.raises(ValueError):
        read_log(r.data_dir, "l-0", stream="both")


def test_logs_an_older_version_wrote_read_as_stdout(tmp_path: Path) -> None:
    d = tmp_path / "instances" / "old-0"
    d.mkdir(parents=True)
    (d / "output.0.log").write_bytes(b"mixed ")
    (d / "output.6.log").write_bytes(b"streams\n")
    assert read_log(tmp_path, "old-0").data == b"mixed streams\n"
    assert read_log(tmp_path, "old-0", stream="stderr").data == b""
    (d / "stdout.0.log").write_bytes(b"new\n")  # a process of this version took over
    assert read_log(tmp_path, "old-0").data == b"new\n"


def test_a_new_generation_rolls_one_instance_at_a_time(rig: Callable[..., Rig],
                                                       scripts: Path) -> None:
    write(scripts, "gen.py", """
        import os, time
        print("mode", os.environ["MODE"], flush=True)
        time.sleep(1000)
    """)
    r = rig()
    ids = ("r-0", "r-1")

    def desire(gen: int, mode: str) -> None:
        r.desire(*[{"id": i, "source": "gen.py", "generation": gen, "env": {"MODE": mode}}
                   for i in ids])

    desire(1, "old")
    wait_until(lambda: all(r.state(i) == "Running" for i in ids), what="gen 1 Running")
    desire(2, "new")
    wait_until(lambda: all(r.state(i) == "Running" and r.last(i)["generation"] == 2  # type: ignore[index]
                           for i in ids), what="gen 2 Running")
    for i in ids:
        assert b"mode new" in read_log(r.data_dir, i).data
        assert r.last(i)["restarts"] == 0  # type: ignore[index]
    first, second = sorted(ids, key=lambda i: r.last(i)["started_at"])  # type: ignore[index]
    # the second was replaced only after the first's new process had run roll_settle seconds
    new_first = [x for x in r.of(first) if x["generation"] == 2 and x["pid"]][0]
    gen2_second = [x for x in r.of(second) if x["generation"] == 2 and x["pid"]][0]
    assert gen2_second["started_at"] - new_first["started_at"] >= FAST.roll_settle * 1000 - 5


def test_status_batches_go_to_the_report_actor_as_messages(tmp_path: Path,
                                                           scripts: Path) -> None:
    from transport.codec import decode
    from transport.mailbox import inproc_address
    write(scripts, "idle.py", "import time; time.sleep(1000)\n")
    ctx = zmq.Context()
    node = f"runner-msg-{os.getpid()}-{next(_ids)}"
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind(inproc_address(node, "leader"))
    runner = RunnerActor(ctx, node, tmp_path / "data", policy=FAST, report_to="leader")
    runner.start()
    out = Outbox(ctx, node)
    try:
        assert runner.started.wait(30)
        out.send("runner", RunnerDesired(instances=[
            {"id": "m-0", "deployment": "m", "source": "idle.py", "cwd": str(scripts)}]))
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while not any(x["state"] == "Running" for x in seen):
            assert time.monotonic() < deadline, seen
            if pull.poll(100):
                msg = decode(pull.recv())
                assert msg.node == node  # type: ignore[attr-defined]
                seen += msg.reports  # type: ignore[attr-defined]
        assert {x["id"] for x in seen} == {"m-0"}
    finally:
        runner.stop()
        runner.join(60)
        out.close()
        pull.close(0)
        ctx.term()
    assert runner.failure is None


def test_stopping_the_runner_stops_every_instance(tmp_path: Path, scripts: Path) -> None:
    write(scripts, "idle.py", "import time; print('up', flush=True); time.sleep(1000)\n")
    r = Rig(tmp_path / "data", scripts)
    try:
        r.desire(*[{"id": f"i-{k}", "source": "idle.py"} for k in range(3)])
        wait_until(lambda: all(r.state(f"i-{k}") == "Running" for k in range(3)),
                   what="three Running")
        pids = [r.last(f"i-{k}")["pid"] for k in range(3)]  # type: ignore[index]
    finally:
        r.close()
    assert r.runner.failure is None
    assert all(dead(p) for p in pids)
    assert '"groups": []' in (tmp_path / "data" / "instances" / "procs.json").read_text()


def test_an_exit_is_reported_after_its_output_is_in_the_files(rig: Callable[..., Rig],
                                                               scripts: Path) -> None:
    """A process of another session holding the pipes writes after the leader exits: the
    exit is observed once the pipes reached their end, so its output is in the files when
    the report comes (an execution's result carries that tail)."""
    write(scripts, "late.py", """
        import os, subprocess, sys
        subprocess.Popen([sys.executable, "-c",
                          "import sys, time; time.sleep(0.4); print('late', flush=True); "
                          "print('late err', file=sys.stderr, flush=True)"],
                         start_new_session=True)
        print('early', flush=True)
    """)
    r = rig()
    r.desire({"id": "late-0", "source": "late.py", "restart": "never"})
    wait_until(lambda: r.state("late-0") == "Exited", what="the exit")
    assert read_log(r.data_dir, "late-0").data == b"early\nlate\n"
    assert read_log(r.data_dir, "late-0", stream="stderr").data == b"late err\n"
