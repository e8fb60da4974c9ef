"""The runner actor: starts, supervises and stops this node's service instances.

A thin shell around `prisn.workloads.runner.RunnerCore` (the decisions). Threads:
- the actor thread (`prisn-runner`) owns the core, every `subprocess.Popen`, the process
  records file and all signals; it handles `runner.desired` (the FULL list of instances this
  node should run, level-triggered) and ticks the core every `poll_ms` (exits are found with
  `waitid(WNOHANG | WNOWAIT)` each tick: the loop never blocks on a child);
- one log pump thread reads every instance's two output pipes (stdout and stderr, one each)
  and writes them to bounded, rotated files `<data-dir>/instances/<id>/<stream>.<offset>.log`
  (`stream` is ``stdout`` or ``stderr``). Each stream gets half of the per-instance bound
  (`log_max_bytes` / 2 per file, `log_files_kept` files), so an instance keeps at most
  `log_max_bytes` x `log_files_kept` bytes in all, as when both streams shared one pipe.
  Files ``output.<offset>.log`` written by older versions (both streams mixed) are read as
  ``stdout`` while no ``stdout`` file exists, and are otherwise left alone.

Invariants:
- Every instance runs in its own session and process group (`start_new_session`); signals go
  to the group. When the group leader exits (crash or stop), what is left of its group is
  SIGKILLed before the leader is reaped (its zombie keeps the group id from being reused),
  like systemd's KillMode=control-group: a restart never races an old grandchild for a port.
- Orphans: each child gets PR_SET_PDEATHSIG(SIGKILL), so it dies with the thread that started
  it (this actor's thread, alive as long as the node). Each started group is also recorded
  (pid, start time from /proc/<pid>/stat) in `<data-dir>/instances/procs.json`, rewritten
  atomically after the spawn, at most once per actor loop turn: every start and reap of a
  turn marks the records dirty and the end of the turn (`on_batch_end` / `on_idle`, before
  any status report of the turn is sent) writes them once. So a started group is recorded
  before its `Started` report leaves the node; a SIGKILL of the node between a spawn and the
  end of its turn leaves that group unrecorded (its leader still dies by PDEATHSIG; a
  grandchild forked in that window survives, as it did between a spawn and its own write
  before). `on_start` SIGKILLs every recorded group still alive (checked against the start
  time, so a reused pid is left alone) BEFORE starting anything.
- Nothing a user's process does can fail the actor: a missing entry file, an unknown runtime,
  an exec failure become a `StartFailed` observation (a status with a clear message, counted).
- An exit is observed (and reported) only once the pump has read both pipes of the process
  to their end (at most `DRAIN_MAX` seconds after the exit): a report of an exited process
  comes after its last output is in the files (an execution's result carries its tail).
  Until then its pid is reaped but no signal is sent to it.
- Status reports are batched: at most one `runner.status` (and one `on_status` call) per
  `report_interval`, the latest report per instance.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import zmq

from actors.base import Actor
from prisn.messages import Msg, RunnerDesired, RunnerStatus
from prisn.workloads.runner import (
    Exited,
    InstanceSpec,
    Kill,
    Report,
    RestartPolicy,
    RunnerCore,
    Start,
    Started,
    StartFailed,
    Stop,
)

log = logging.getLogger("prisn.runner")

PR_SET_PDEATHSIG = 1
LOG_MAX_BYTES = 10 << 20  # per file of both streams together (each stream: half)
LOG_FILES = 2  # files kept per stream of an instance (the current one included)
STREAMS = ("stdout", "stderr")
LEGACY_STREAM = "output"  # the one mixed stream of older versions (read as stdout)
MAX_INSTANCES = 4096  # per node; more in one desired list are ignored (and logged)
READ_MAX = 1 << 20  # at most this many bytes per `read_log` call
TICK_MIN = 0.02  # seconds between two looks at the children (a busy inbox ticks often)
MAX_ID = 200  # characters in an instance id
DRAIN_MAX = 1.0  # seconds an exit waits for the pump to read the pipes to their end

RUNTIMES: dict[str, str] = {
    "python": sys.executable or "python3", "python3": sys.executable or "python3",
    "node": "node", "nodejs": "node", "bash": "bash", "sh": "sh",
}
EXTENSIONS: dict[str, str] = {".py": "python3", ".js": "node", ".mjs": "node", ".cjs": "node",
                              ".sh": "bash"}


# ------------------------------------------------------------------------------ processes
def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot); None if gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    try:
        rest = data[data.rindex(b")") + 2:].split()
        return int(rest[19])
    except (ValueError, IndexError):
        return None


def proc_state(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat (Z: zombie), None if gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
        return data[data.rindex(b")") + 2:].split()[0].decode()
    except (OSError, ValueError, IndexError):
        return None


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids whose process group is `pgid` (a /proc scan)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            data = Path(f"/proc/{name}/stat").read_bytes()
            rest = data[data.rindex(b")") + 2:].split()
        except (OSError, ValueError):
            continue
        if len(rest) > 2 and rest[0] != b"Z" and int(rest[2]) == pgid:
            out.append(int(name))
    return out


def kill_leftovers(records: list[dict[str, Any]], wait: float = 5.0) -> int:
    """SIGKILL every recorded group that is still ours, then wait (at most `wait` seconds)
    until their members are gone; the number of groups signalled.

    A record is ours if its leader is alive with the recorded start time, or if the leader is
    gone but members of its group remain (a group id is never reused while it has members)."""
    killed: list[int] = []
    for r in records:
        try:
            pid, start = int(r["pid"]), r.get("start")
        except (KeyError, TypeError, ValueError):
            continue
        if pid <= 1:
            continue
        now_start = proc_start_time(pid)
        if now_start is not None and proc_state(pid) != "Z":
            if start is not None and now_start != start:
                continue  # the pid was reused by another process
            try:
                if os.getpgid(pid) != pid:
                    continue
            except OSError:
                continue
        elif not group_members(pid):
            continue
        try:
            os.killpg(pid, signal.SIGKILL)
            killed.append(pid)
        except OSError:
            pass
    deadline = time.monotonic() + wait
    while killed and time.monotonic() < deadline:
        if not any(group_members(g) for g in killed):
            break
        time.sleep(0.01)
    return len(killed)


def _pdeathsig_preexec(parent: int) -> Callable[[], None]:
    """A preexec_fn: SIGKILL this child when its parent thread dies (and if it already did)."""
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl

    def pre() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(127)

    return pre


class WhichCache:
    """`shutil.which` results per (executable name, PATH), at most `max_entries` (the oldest
    dropped first). A hit is used only while it is still an executable file (one `os.access`
    and `isfile`: far cheaper than a PATH scan), else it is resolved again; `forget` drops an
    entry (a start whose exec failed). A new executable earlier on PATH that shadows a cached
    one still present is seen after `ttl` seconds. Misses (not found) are never cached.
    Thread-safe (a lock); used by the runner thread."""

    def __init__(self, max_entries: int = 64, ttl: float = 60.0) -> None:
        self.max_entries, self.ttl = max(1, max_entries), ttl
        self._lock = threading.Lock()
        self._d: dict[tuple[str, str | None], tuple[str, float]] = {}
        self.lookups = 0  # shutil.which calls made (a counter for tests and benchmarks)

    def resolve(self, exe: str, path_env: str | None, now: float | None = None) -> str | None:
        """The full path of `exe` on `path_env` (None: not found)."""
        now = time.monotonic() if now is None else now
        key = (exe, path_env)
        with self._lock:
            hit = self._d.get(key)
        if hit is not None and now - hit[1] < self.ttl and os.access(hit[0], os.X_OK) \
                and os.path.isfile(hit[0]):
            return hit[0]
        found = shutil.which(exe, path=path_env)
        with self._lock:
            self.lookups += 1
            self._d.pop(key, None)
            if found is not None:
                while len(self._d) >= self.max_entries:
                    del self._d[next(iter(self._d))]
                self._d[key] = (found, now)
        return found

    def forget(self, exe: str, path_env: str | None) -> None:
        with self._lock:
            self._d.pop((exe, path_env), None)

    def forget_path(self, path: str) -> None:
        """Drop every entry that resolved to `path`."""
        with self._lock:
            for k in [k for k, v in self._d.items() if v[0] == path]:
                del self._d[k]


WHICH = WhichCache()


def resolve_command(spec: InstanceSpec) -> tuple[list[str], str]:
    """(argv, cwd) for `spec`; ValueError with a user-facing message when it cannot run."""
    cwd = spec.cwd or os.getcwd()
    if not spec.source:
        raise ValueError("no entry file (source) given")
    entry = Path(cwd, spec.source)
    if not entry.is_file():
        raise ValueError(f"entry file not found: {entry}")
    runtime = spec.runtime
    if runtime is None:
        runtime = EXTENSIONS.get(entry.suffix.lower())
        if runtime is None:
            raise ValueError(f"cannot tell the runtime of {spec.source!r} "
                             f"(known extensions: {', '.join(sorted(EXTENSIONS))}); set runtime")
    exe = RUNTIMES.get(runtime)
    if exe is None:
        raise ValueError(f"unknown runtime {runtime!r} (known: {', '.join(sorted(RUNTIMES))})")
    path = exe if os.path.isabs(exe) else WHICH.resolve(exe, os.environ.get("PATH"))
    if path is None:
        raise ValueError(f"runtime {runtime!r} not found on this node ({exe} not on PATH)")
    return [path, str(entry), *spec.args], cwd


# ------------------------------------------------------------------------------ log files
class RotatingLog:
    """Appends to `<dir>/<stream>.<offset>.log`, where `offset` is the stream offset of the
    file's first byte; a file never grows past `max_bytes` (a larger write is split); at most
    `files` files are kept. Offsets keep growing across rotations and restarts. Pump thread."""

    def __init__(self, directory: Path, max_bytes: int = LOG_MAX_BYTES,
                 files: int = LOG_FILES, stream: str = "stdout") -> None:
        self.dir = directory
        self.stream = stream
        self.max_bytes = max(1, max_bytes)
        self.files = max(1, files)
        self.dir.mkdir(parents=True, exist_ok=True)
        existing = log_files(self.dir, stream)
        if existing:
            self.start, path = existing[-1]
            self.size = path.stat().st_size
        else:
            self.start, self.size = 0, 0
        self._f = open(self._path(self.start), "ab")  # noqa: SIM115 - closed in close()

    def _path(self, start: int) -> Path:
        return self.dir / f"{self.stream}.{start}.log"

    def write(self, data: bytes) -> None:
        while data:
            room = self.max_bytes - self.size
            if room <= 0:
                self._rotate()
                continue
            part, data = data[:room], data[room:]
            self._f.write(part)
            self.size += len(part)
        self._f.flush()

    def _rotate(self) -> None:
        self._f.close()
        self.start += self.size
        self.size = 0
        self._f = open(self._path(self.start), "ab")  # noqa: SIM115
        for _, old in log_files(self.dir, self.stream)[:-self.files]:
            try:
                old.unlink()
            except OSError:
                pass

    def close(self) -> None:
        self._f.close()


def log_files(directory: Path, stream: str = "stdout") -> list[tuple[int, Path]]:
    """(start offset, path) of the log files of `stream` in `directory`, oldest first."""
    out = []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for n in names:
        parts = n.split(".")
        if len(parts) == 3 and parts[0] == stream and parts[2] == "log" and parts[1].isdigit():
            out.append((int(parts[1]), directory / n))
    return sorted(out)


@dataclass(frozen=True)
class LogChunk:
    """Bytes [`offset`, `next_offset`) of an instance's output; `truncated`: the asked offset
    was older than what the files keep (the data starts at the oldest byte kept)."""

    data: bytes
    offset: int
    next_offset: int
    truncated: bool = False


def instance_dir(data_dir: str | Path, instance: str) -> Path:
    """`<data-dir>/instances/<quoted id>/`: the id percent-encoded (a slot id such as
    ``default/web/0`` holds slashes), so distinct ids never share a directory; ValueError for
    an id that is empty, ``.``/``..`` or longer than `MAX_ID` characters."""
    if not instance or instance in (".", "..") or len(instance) > MAX_ID:
        raise ValueError(f"bad instance id {instance!r}")
    return Path(data_dir) / "instances" / quote(instance, safe="")


def read_log(data_dir: str | Path, instance: str, *, offset: int | None = None,
             tail: int | None = None, limit: int = READ_MAX,
             stream: str = "stdout") -> LogChunk:
    """Read one stream (`STREAMS`) of an instance's output: from `offset` (follow: pass the
    last `next_offset`), or the last `tail` bytes, or from the oldest byte kept; at most
    `limit` bytes. ``stdout`` of an instance that has only an older version's mixed
    ``output`` files reads those. ValueError for an unknown stream. Any thread."""
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r:.20} (stdout or stderr)")
    directory = instance_dir(data_dir, instance)
    files = log_files(directory, stream)
    if not files and stream == "stdout":
        files = log_files(directory, LEGACY_STREAM)
    sizes = []
    for start, path in files:
        try:
            sizes.append((start, path, path.stat().st_size))
        except OSError:
            continue
    if not sizes:
        return LogChunk(b"", offset or 0, offset or 0, truncated=bool(offset))
    first = sizes[0][0]
    end = sizes[-1][0] + sizes[-1][2]
    if offset is None:
        offset = first if tail is None else max(first, end - max(0, tail))
    truncated = offset < first
    pos = start_at = max(offset, first)
    want = max(0, min(limit, READ_MAX, end - pos))
    out = bytearray()
    for start, path, size in sizes:
        if len(out) >= want or pos >= start + size:
            continue
        if pos < start:  # a file was rotated away between listing and reading: stop here
            break
        try:
            with open(path, "rb") as f:
                f.seek(pos - start)
                piece = f.read(min(want - len(out), start + size - pos))
        except OSError:
            break
        out += piece
        pos += len(piece)
    return LogChunk(bytes(out), start_at, start_at + len(out), truncated)


class LogPump(threading.Thread):
    """Reads every registered pipe and writes it to the instance's `RotatingLog`; owns the
    selector and the logs. `add` may be called from any thread (it wakes the selector)."""

    def __init__(self, max_bytes: int, files: int) -> None:
        super().__init__(name="prisn-runner-logs", daemon=True)
        self.max_bytes, self.files = max_bytes, files
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._open: dict[Path, int] = {}  # directory -> pipes added and not yet at EOF
        self._dirs: dict[int, Path] = {}  # fd -> its directory (pump thread)
        self._new: list[tuple[int, Path, str]] = []
        self._closing = False
        self.write_errors = 0

    def add(self, fd: int, directory: Path, stream: str = "stdout") -> None:
        """Pump `fd` (read end of a pipe; closed by the pump) into `stream`'s log files."""
        with self._lock:
            self._new.append((fd, directory, stream))
            self._open[directory] = self._open.get(directory, 0) + 1
        self._wake()

    def pending(self, directory: Path) -> int:
        """Pipes into `directory`'s logs not yet read to their end (any thread)."""
        with self._lock:
            return self._open.get(directory, 0)

    def _closed(self, directory: Path | None) -> None:
        if directory is None:
            return
        with self._lock:
            n = self._open.get(directory, 0) - 1
            if n > 0:
                self._open[directory] = n
            else:
                self._open.pop(directory, None)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # full: a wake is pending anyway

    def close(self) -> None:
        self._closing = True
        self._wake()
        self.join(10)

    def run(self) -> None:
        logs: dict[int, RotatingLog] = {}
        try:
            while not self._closing:
                with self._lock:
                    new, self._new = self._new, []
                for fd, d, stream in new:
                    self._dirs[fd] = d
                    try:
                        logs[fd] = RotatingLog(d, self.max_bytes, self.files, stream)
                        self._sel.register(fd, selectors.EVENT_READ, None)
                    except OSError:
                        log.exception("runner: cannot open the log in %s", d)
                        os.close(fd)
                        self._closed(self._dirs.pop(fd, None))
                for key, _ in self._sel.select(1.0):
                    fd = key.fd
                    if fd == self._wake_r:
                        try:
                            while os.read(self._wake_r, 4096):
                                pass
                        except BlockingIOError:
                            pass
                        continue
                    try:
                        self._pump_one(fd, logs)
                    except Exception:  # never let one instance's log stop the others
                        log.exception("runner: log pump failed on fd %d; its log is closed", fd)
                        self._drop(fd, logs)
        except Exception:
            log.exception("runner: the log pump stopped")  # children then block on a full pipe
            raise
        finally:
            for fd, lg in logs.items():
                lg.close()
                os.close(fd)
            self._sel.close()
            os.close(self._wake_r)
            os.close(self._wake_w)


    def _pump_one(self, fd: int, logs: dict[int, RotatingLog]) -> None:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data:  # EOF: every writer (the group) closed it
            self._drop(fd, logs)
            return
        try:
            logs[fd].write(data)
        except OSError:
            self.write_errors += 1  # a full disk: drop, never block the child

    def _drop(self, fd: int, logs: dict[int, RotatingLog]) -> None:
        try:
            self._sel.unregister(fd)
        except (KeyError, ValueError):
            pass
        try:
            os.close(fd)
        except OSError:
            pass
        lg = logs.pop(fd, None)
        if lg is not None:
            try:
                lg.close()
            except OSError:
                pass
        self._closed(self._dirs.pop(fd, None))


# ------------------------------------------------------------------------------ the actor
StatusCallback = Callable[[list[dict[str, Any]]], None]


class RunnerActor(Actor):
    """See the module doc. All methods run in the actor's thread unless they say otherwise."""

    poll_ms = 50

    def __init__(self, ctx: zmq.Context, node_id: str, data_dir: str | Path, *,
                 policy: RestartPolicy | None = None, stop_grace: float | None = None,
                 log_max_bytes: int = LOG_MAX_BYTES, log_files_kept: int = LOG_FILES,
                 report_to: str = "", on_status: StatusCallback | None = None,
                 report_interval: float = 0.2, max_instances: int = MAX_INSTANCES,
                 observe_start: Callable[[float], None] | None = None, **kw: Any) -> None:
        super().__init__("runner", ctx, node_id, **kw)
        policy = policy or RestartPolicy()
        if stop_grace is not None:
            policy = RestartPolicy(**{**policy.__dict__, "stop_grace": max(0.0, stop_grace)})
        self.policy = policy
        self.core = RunnerCore(policy)
        self.data_dir = Path(data_dir)
        self.log_max_bytes, self.log_files_kept = log_max_bytes, log_files_kept
        self.report_to = report_to
        self.on_status = on_status
        self.report_interval = report_interval
        self.max_instances = max_instances
        self.observe_start = observe_start  # metrics: seconds one process start took
        self._procs: dict[str, subprocess.Popen[bytes]] = {}  # instance id -> process
        self._starts: dict[int, int | None] = {}  # pid -> /proc start time
        self._pending: dict[str, dict[str, Any]] = {}  # unsent reports, latest per id
        # reaped, exit not yet observed: id -> (pid, code, exit time, give up at)
        self._draining: dict[str, tuple[int, int | None, float, float]] = {}
        self._last_flush = 0.0
        self._last_tick = 0.0
        self._records_dirty = False  # procs.json is behind _procs (written at turn end)
        self.records_writes = 0
        self._mono0 = time.monotonic()
        self._wall0 = time.time()
        self._pump: LogPump | None = None
        self._preexec: Callable[[], None] | None = None
        # counters (read from any thread)
        self.starts = 0
        self.start_failures = 0
        self.leftovers_killed = 0
        self.bad_desired = 0

    # -------------------------------------------------------------------- lifecycle
    def on_start(self) -> None:
        (self.data_dir / "instances").mkdir(parents=True, exist_ok=True)
        self.leftovers_killed = kill_leftovers(self._read_records())
        if self.leftovers_killed:
            log.warning("runner: stopped %d process group(s) left by a previous run",
                        self.leftovers_killed)
        self._write_records()
        self._preexec = _pdeathsig_preexec(os.getpid())
        # each stream half of the per-instance bound (module doc)
        self._pump = LogPump(max(1, self.log_max_bytes // len(STREAMS)), self.log_files_kept)
        self._pump.start()

    def on_stop(self) -> None:
        """Stop every instance: SIGTERM, then SIGKILL after the stop grace (bounded wait)."""
        for p in self._procs.values():
            _signal_group(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.policy.stop_grace
        while self._procs and time.monotonic() < deadline:
            for iid, p in list(self._procs.items()):
                if _exited(p.pid):
                    self._reap(iid, p)
            time.sleep(0.02)
        for iid, p in list(self._procs.items()):
            _signal_group(p.pid, signal.SIGKILL)
            self._reap(iid, p, wait=True)
        self._write_records()
        if self._pump is not None:
            self._pump.close()
        self._flush(force=True)

    # -------------------------------------------------------------------- messages
    def on_message(self, msg: Msg) -> None:
        if isinstance(msg, RunnerDesired):
            ms = msg.stop_grace_ms
            self.set_desired(msg.instances, ms / 1000 if ms >= 0 else None)

    def set_desired(self, instances: list[Any], stop_grace: float | None = None) -> None:
        """The full desired list (wire dicts); malformed entries are skipped and counted."""
        specs: list[InstanceSpec] = []
        for d in instances[: self.max_instances]:
            try:
                spec = InstanceSpec.from_wire(d)
                instance_dir(self.data_dir, spec.id)
            except ValueError as e:
                self.bad_desired += 1
                log.warning("runner: ignored a desired instance: %s", e)
                continue
            specs.append(spec)
        if len(instances) > self.max_instances:
            self.bad_desired += len(instances) - self.max_instances
            log.warning("runner: %d instances desired, only %d run", len(instances),
                        self.max_instances)
        self._apply(*self.core.set_desired(specs, self._now(), stop_grace))

    def on_batch_end(self) -> None:
        self._tick()
        self._sync_records()

    def on_idle(self) -> None:
        self._tick()
        self._sync_records()

    # -------------------------------------------------------------------- internals
    def _now(self) -> float:
        return time.monotonic()

    def _wall(self, t: float | None) -> int | None:
        """A core time (monotonic seconds) as Unix milliseconds."""
        return None if t is None else int((self._wall0 + t - self._mono0) * 1000)

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_tick < TICK_MIN:
            return
        self._last_tick = now
        for iid, p in list(self._procs.items()):
            if _exited(p.pid):
                code = self._reap(iid, p)
                at = self._now()
                self._draining[iid] = (p.pid, code, at, at + DRAIN_MAX)
        for iid, (pid, code, at, until) in list(self._draining.items()):
            if self._drained(iid) or self._now() >= until:
                del self._draining[iid]
                self._apply(*self.core.observe(
                    Exited(instance=iid, pid=pid, code=code, at=at), self._now()))
        self._apply(*self.core.tick(self._now()))
        self._sync_records()  # a start is on disk before its report is sent
        self._flush()

    def _drained(self, iid: str) -> bool:
        """Whether the pump has read the pipes of instance `iid` to their end."""
        if self._pump is None:
            return True
        try:
            return self._pump.pending(instance_dir(self.data_dir, iid)) == 0
        except ValueError:
            return True

    def _apply(self, actions: list[Any], reports: list[Report]) -> None:
        for r in reports:
            w = r.to_wire()
            w["node"] = self.node_id
            w["started_at"] = self._wall(r.started_at)
            self._pending[r.id] = w
        for a in actions:
            if isinstance(a, Start):
                obs = self._start(a.spec)
                self._apply(*self.core.observe(obs, self._now()))
            elif isinstance(a, (Stop, Kill)):
                if any(d[0] == a.pid for d in self._draining.values()):
                    continue  # reaped already: its pid may belong to another process now
                _signal_group(a.pid, signal.SIGTERM if isinstance(a, Stop) else signal.SIGKILL)

    def _start(self, spec: InstanceSpec) -> Started | StartFailed:
        """Start `spec`'s process; never raises for anything the user's spec or code does."""
        now = self._now()
        try:
            argv, cwd = resolve_command(spec)
            d = instance_dir(self.data_dir, spec.id)
            d.mkdir(parents=True, exist_ok=True)
        except (ValueError, OSError) as e:
            self.start_failures += 1
            return StartFailed(instance=spec.id, message=str(e), at=now)
        env = {**spec.env, "PRISN_DEPLOYMENT": spec.deployment,
               "PRISN_NAMESPACE": spec.namespace, "PRISN_INSTANCE": spec.id,
               "PRISN_NODE": self.node_id}
        if spec.port:
            env["PORT"] = str(spec.port)
        env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        t0 = time.perf_counter()
        try:
            p = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out_w,
                                 stderr=err_w, start_new_session=True, close_fds=True,
                                 preexec_fn=self._preexec)  # noqa: PLW1509 - see _pdeathsig
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            for fd in (out_r, out_w, err_r, err_w):
                os.close(fd)
            WHICH.forget_path(argv[0])  # a vanished runtime is looked up again next time
            self.start_failures += 1
            return StartFailed(instance=spec.id, message=f"cannot start {argv[0]}: {e}", at=now)
        os.close(out_w)
        os.close(err_w)
        if self.observe_start is not None:
            self.observe_start(time.perf_counter() - t0)
        assert self._pump is not None
        self._pump.add(out_r, d, "stdout")
        self._pump.add(err_r, d, "stderr")
        self._procs[spec.id] = p
        self._starts[p.pid] = proc_start_time(p.pid)
        self._records_dirty = True  # written once at the end of this turn (module doc)
        self.starts += 1
        return Started(instance=spec.id, pid=p.pid, at=now)

    def _reap(self, iid: str, p: subprocess.Popen[bytes], wait: bool = False) -> int | None:
        """The leader has exited (a zombie): SIGKILL what is left of its group, then reap."""
        _signal_group(p.pid, signal.SIGKILL)
        try:
            code = p.wait(10) if wait else p.poll()
        except subprocess.TimeoutExpired:
            code = None
        self._procs.pop(iid, None)
        self._starts.pop(p.pid, None)
        self._records_dirty = True
        return code

    def _records_path(self) -> Path:
        return self.data_dir / "instances" / "procs.json"

    def _read_records(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self._records_path().read_text())
            recs = data.get("groups", []) if isinstance(data, dict) else []
            return [r for r in recs if isinstance(r, dict)]
        except (OSError, ValueError):
            return []

    def _sync_records(self) -> None:
        """Write procs.json if a start or reap since the last write changed it."""
        if self._records_dirty:
            self._write_records()

    def _write_records(self) -> None:
        """procs.json := the groups started and not yet reaped (atomic rename; no fsync: it
        guards against a crashed process, and a crashed machine leaves no process)."""
        self._records_dirty = False
        self.records_writes += 1
        recs = [{"instance": iid, "pid": p.pid, "start": self._starts.get(p.pid)}
                for iid, p in self._procs.items()]
        path = self._records_path()
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"format": 1, "groups": recs}))
            os.replace(tmp, path)
        except OSError:
            log.exception("runner: cannot write %s", path)

    def _flush(self, force: bool = False) -> None:
        if not self._pending:
            return
        now = time.monotonic()
        if not force and now - self._last_flush < self.report_interval:
            return
        self._last_flush = now
        batch = list(self._pending.values())
        self._pending.clear()
        if self.on_status is not None:
            try:
                self.on_status(batch)
            except Exception:
                log.exception("runner: the status callback failed")
        if self.report_to and self.outbox is not None:
            self.send(self.report_to, RunnerStatus(src="runner", dst=self.report_to,
                                                   node=self.node_id, reports=batch))


def _exited(pid: int) -> bool:
    """True once `pid` (our child) has exited; it stays a zombie (WNOWAIT) until reaped."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None and info.si_pid == pid


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
