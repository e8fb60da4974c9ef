"""`prisn server`: wires storage, the Raft core and the actors of one node, then waits.

Runs on the main thread. Start order (each waits for the previous to be serving): logstore,
state machine, raft (with its replicators), timer, api. Stop order is the reverse. SIGTERM or
SIGINT stops gracefully (a leader first hands leadership to a peer) and exits 0; an actor
failure stops the node and exits 1 so that systemd restarts it.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import secrets
import select
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import cbor2
import zmq

from actors.api.actor import ApiActor, tls_context
from actors.api.bridge import RaftNodeClient, build_status
from actors.api.node import NodeStatus
from actors.logstore import LogStoreActor
from actors.metrics import (
    ExecutionsCollector,
    LogStoreCollector,
    NodeMetrics,
    PeerAuthCollector,
    PeerDropsCollector,
    PeerWireCollector,
    SnapshotCollector,
    WorkloadsCollector,
)
from actors.raft import RaftActor
from actors.runner import RunnerActor
from actors.scheduler import SchedulerActor
from actors.statemachine import StateMachineActor
from actors.supervisor import Supervisor
from actors.timer import TimerActor
from actors.workloads import WorkloadsActor
from prisn import __version__
from prisn.config import ConfigError, ServerConfig
from prisn.fsm.deployments import DeploymentStore
from prisn.logs import setup_logging
from prisn.messages import EntryKind, Role, TransferLeadership
from prisn.raft.boot import BootState
from prisn.raft.core import RaftCore, RaftOptions
from prisn.raft.status import RaftStatus
from prisn.secretbox import UNENCRYPTED_WARNING, SecretBox, opener
from prisn.snapshots import BootError, SnapshotStore, assemble_boot
from prisn.storage import LogStorage, StorageError
from prisn.workloads.materialize import clear_stale
from transport.codec import encode
from transport.curve import (
    CurveKeys,
    KeyFileError,
    PeerAuthStats,
    ZapHandler,
    load_keys,
    loosely_permitted,
    read_key_file,
)

log = logging.getLogger("prisn.server")


def console(cfg: ServerConfig, text: str, level: int = logging.ERROR, **fields: object) -> None:
    """Main thread: a line for the operator. Text logs: ``prisn: error: <text>`` (or
    ``prisn: <text>`` below ERROR) on stderr; JSON logs: one record of `level`, so that
    every line of the output parses."""
    if cfg.log_format == "json":
        log.log(level, "%s", text, extra={"event": "startup_failed", **fields}
                if level >= logging.ERROR else fields)
        return
    prefix = "prisn: error: " if level >= logging.ERROR else "prisn: "
    print(prefix + text, file=sys.stderr, flush=True)


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as e:
        log.warning("sd_notify failed: %s", e)


class StopSignals:
    """SIGTERM and SIGINT for `run`'s main thread.

    A Python signal handler runs in the main thread between two bytecodes, possibly while that
    thread holds a lock: waiting in `Event.wait`, it holds the Event's condition lock for a
    few bytecodes each turn, and a handler calling `Event.set()` there blocks on that lock
    forever (the node then never stopped on SIGTERM; seen once in CI as a missing
    STOPPING=1). So the handler only records the signal, and the byte that
    `signal.set_wakeup_fd` writes wakes `wait`, which runs in normal context."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.hangups: list[int] = []  # SIGHUP: logged by the main loop, the node keeps running
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def install(self) -> None:
        """Main thread only (as `signal.signal`)."""
        signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGHUP, self.on_hangup)

    def on_hangup(self, signum: int, _frame: object) -> None:
        """SIGHUP (a closed terminal, `systemctl reload`): recorded only, as `on_signal`."""
        self.hangups.append(signum)

    def take_hangups(self) -> int:
        """Main thread: how many SIGHUPs came since the last call."""
        n = len(self.hangups)
        del self.hangups[:n]
        return n

    def on_signal(self, signum: int, _frame: object) -> None:
        """The handler: takes no lock (a list append is one C call under the GIL)."""
        self.received.append(signum)

    def wait(self, sup: Supervisor, timeout: float) -> bool:
        """True once a signal came or the supervisor is stopping (an actor failed); else
        after at most `timeout` seconds (or a signal's wake-up byte), False."""
        if not self.received and not sup.stop_requested.is_set():
            select.select([self._r], [], [], timeout)
            try:
                while os.read(self._r, 512):
                    pass
            except BlockingIOError:
                pass
        return bool(self.received) or sup.stop_requested.is_set()


class Node:
    """One running node: owns the ZeroMQ context, the storage and the supervisor."""

    def __init__(self, cfg: ServerConfig, *, seed: int | None = None,
                 curve: CurveKeys | None = None) -> None:
        self.cfg = cfg
        self.sup = Supervisor()
        self.ctx = zmq.Context()
        self.metrics: NodeMetrics | None = None
        self.storage: LogStorage | None = None
        self.raft: RaftActor | None = None
        self.api: ApiActor | None = None
        self.fsm: StateMachineActor | None = None
        self.runner: RunnerActor | None = None
        self.workloads: WorkloadsActor | None = None
        self.scheduler: SchedulerActor | None = None
        self.seed = seed if seed is not None else secrets.randbits(64)
        self.curve = curve  # peer keys from --cluster-key-file (None: plaintext peers)
        self.peer_auth = PeerAuthStats()
        self.zap: ZapHandler | None = None  # started before raft, stopped after every actor

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        cfg = self.cfg
        data = Path(cfg.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self.storage = LogStorage(str(data / "raft"))
        log.info("log store %s: writes made durable by %s", data / "raft", self.storage.sync_mode)
        t_boot = time.perf_counter()
        stored = self.storage.load()
        snaps = SnapshotStore(data / "snapshots")
        store = DeploymentStore()
        # restored while choosing: a newest file that verifies but whose state the store
        # refuses is logged by name and the previous snapshot is used
        latest = snaps.latest(accept=lambda _meta, state: store.restore(state))
        try:
            boot, reset = assemble_boot(stored, latest[0] if latest else None)
        except BootError as e:
            raise RuntimeError(str(e)) from None
        if reset:
            # an installed snapshot the log had not caught up with (crash mid-install)
            self.storage.reset_to(boot.snapshot_index, boot.snapshot_term)
        if latest is not None:
            log.info("restored snapshot %d (term %d, %d bytes) + %d log entries in %.3f s",
                     boot.snapshot_index, boot.snapshot_term, latest[0].size,
                     len(boot.entries), time.perf_counter() - t_boot)
        fresh = not boot.entries and boot.snapshot_index == 0
        addr = cfg.advertised_raft_addr
        opts = RaftOptions(heartbeat_ticks=cfg.heartbeat_ticks, election_ticks=cfg.election_ticks,
                           trailing_logs=cfg.trailing_logs)
        rng = random.Random(self.seed)
        kwargs: dict = {}
        marker = data / "force-new-cluster"
        forced_before = marker.exists() and marker.read_text().strip() == _boot_cluster(boot)
        if cfg.force_new_cluster and forced_before:
            log.warning("--force-new-cluster already took effect on this data dir (cluster %s); "
                        "ignoring it. Remove the flag from the node's configuration.",
                        _boot_cluster(boot))
        if cfg.force_new_cluster and not forced_before:
            new_id = secrets.token_hex(8)
            _write_durably(marker, new_id)
            log.warning("!!! --force-new-cluster: starting a NEW cluster %s with this node as its "
                        "only voter, from local state (last index %d). Other nodes must be "
                        "re-added. !!!", new_id, boot.entries[-1][0] if boot.entries else 0)
            kwargs["force_new_cluster"] = new_id
        elif not cfg.cluster or cfg.force_new_cluster:
            kwargs["bootstrap"] = True
        elif cfg.peers:
            kwargs.update(_founding(cfg, addr, fresh))
        elif cfg.bootstrap:
            kwargs["bootstrap"] = True
        elif fresh:
            raise ConfigError("--cluster needs --bootstrap (first node) or --peers")
        core = RaftCore(cfg.node_id, addr, opts, rng, boot, **kwargs)
        # Committed before this process started: /ready waits for it, the fsm sends no results
        # up to it. Only these scalars outlive start(): a closure holding `boot` would pin
        # every entry loaded at boot after the core has compacted them away.
        boot_commit = max(boot.commit, boot.snapshot_index)
        self.store = store
        started_at = time.monotonic()
        sup = self.sup
        fail = sup.on_failure

        raft_holder: dict = {}

        def raft_status() -> Any:
            return raft_holder["raft"].status

        def raft_stats() -> Any:
            return raft_holder["raft"].stats

        metrics = NodeMetrics(status=self.node_status, deployments=store.count)
        metrics.registry.register(SnapshotCollector(
            lambda: self.raft.status if self.raft is not None else None, lambda: self.fsm))
        metrics.registry.register(PeerDropsCollector(
            lambda: self.raft.stats if self.raft is not None else None,
            lambda: self.raft.status if self.raft is not None else None))
        metrics.registry.register(PeerWireCollector(
            lambda: self.raft.stats if self.raft is not None else None))
        self.metrics = metrics

        def observe_fsync(seconds: float, entries: int) -> None:
            metrics.observe_fsync(seconds)
            metrics.observe_batch(entries)

        logstore = LogStoreActor(self.storage, self.ctx, cfg.node_id,
                                 observe_fsync=observe_fsync, on_failure=fail)
        metrics.registry.register(LogStoreCollector(lambda: logstore))
        sup.start(logstore)
        self.fsm = StateMachineActor(self.ctx, cfg.node_id, store, snapshots=snaps,
                                     threshold=cfg.snapshot_threshold,
                                     min_interval=cfg.snapshot_interval,
                                     snapshot_index=boot.snapshot_index,
                                     snapshot_term=boot.snapshot_term,
                                     membership=boot.snapshot_membership,
                                     boot_commit=boot_commit,
                                     observe_snapshot=metrics.observe_snapshot, on_failure=fail)
        if latest is not None:
            self.fsm.snapshot_size = latest[0].size
        sup.start(self.fsm)
        listen = cfg.raft_addr if cfg.cluster else None
        curve = self.curve if cfg.cluster else None
        metrics.registry.register(PeerAuthCollector(self.peer_auth.counts))
        if curve is not None:
            zap = ZapHandler(self.ctx, curve, self.peer_auth,
                             on_failure=lambda exc: fail(zap, exc))  # type: ignore[arg-type]
            zap.start()  # before any CURVE socket binds; raises if it cannot bind
            self.zap = zap
            log.info("peers: CurveZMQ encryption and authentication on, cluster key "
                     "fingerprint %s", curve.fingerprint)
        elif cfg.cluster:
            log.warning("no --cluster-key-file: peer traffic is unauthenticated and "
                        "unencrypted; anyone who can reach %s can join, vote and append. Make "
                        "a key with `prisn keygen --out FILE` and give it to every node "
                        "(see docs/security.md)", cfg.raft_addr)
        self.raft = RaftActor(self.ctx, cfg.node_id, core, listen_addr=listen, on_failure=fail,
                              on_leader_change=metrics.leader_changed, curve=curve,
                              peer_auth=self.peer_auth)
        raft_holder["raft"] = self.raft
        sup.start(self.raft)
        sup.start(TimerActor(self.ctx, cfg.node_id, cfg.tick_interval, on_failure=fail))

        fsm = self.fsm

        def client_factory() -> RaftNodeClient:
            client = RaftNodeClient(self.ctx, cfg.node_id, store, raft_status=raft_status,
                                    raft_stats=raft_stats, boot_commit=boot_commit,
                                    started_at=started_at, metrics=metrics,
                                    tick_seconds=cfg.tick_interval,
                                    max_inflight=cfg.max_inflight)
            client.snapshot_source = fsm.capture  # type: ignore[attr-defined] # online backup
            return client

        self.api = ApiActor(self.ctx, cfg.node_id, bind=cfg.bind, client_factory=client_factory,
                            metrics=metrics, write_timeout=cfg.write_timeout,
                            max_body=cfg.max_body_bytes, config=cfg, on_failure=fail)
        sup.start(self.api)
        self._start_workloads(data, store)

    def _start_workloads(self, data: Path, store: DeploymentStore) -> None:
        """After the API (they propose through it): the runner (unless --no-workloads), the
        node-side controller and the scheduler shell (active only while leading)."""
        cfg, sup, fail = self.cfg, self.sup, self.sup.on_failure
        api, raft = self.api, self.raft
        assert api is not None and raft is not None

        def status() -> RaftStatus:  # the raft actor's published status (any thread)
            return raft.status

        box = SecretBox(read_key_file(cfg.cluster_key_file)) if cfg.cluster_key_file else None
        wl = WorkloadsActor(self.ctx, cfg.node_id, store, raft_status=status,
                            submit=api.submit, data_dir=data, fence_after=cfg.fence_after,
                            fence_grace=cfg.fence_grace,
                            runs_workloads=not cfg.no_workloads,
                            write_timeout=cfg.write_timeout, decrypt=opener(box),
                            barrier=api.barrier,
                            on_failure=fail)
        if not cfg.no_workloads:
            removed = clear_stale(data)
            if removed:
                log.info("removed %d interrupted artifact materialization(s)", removed)
            self.runner = RunnerActor(self.ctx, cfg.node_id, data, stop_grace=cfg.stop_grace,
                                      on_status=wl.on_runner_status, on_failure=fail,
                                      observe_start=self.metrics.observe_runner_start
                                      if self.metrics is not None else None)
            sup.start(self.runner)
        else:
            log.info("--no-workloads: this node runs no instances and is never placed on")
        self.workloads = wl
        sup.start(wl)
        self.scheduler = SchedulerActor(self.ctx, cfg.node_id, store, raft_status=status,
                                        submit=api.submit, tick_seconds=cfg.tick_interval,
                                        node_down_after=cfg.node_down_after,
                                        round_timeout=cfg.write_timeout, on_failure=fail,
                                        execution_history=cfg.execution_history)
        sup.start(self.scheduler)
        if self.metrics is not None:
            self.metrics.registry.register(WorkloadsCollector(lambda: self.workloads,
                                                              lambda: self.scheduler))
            self.metrics.registry.register(ExecutionsCollector(store.execution_stats))
        log.info("workloads: node down after %gs, fencing after %gs without quorum (stop "
                 "grace %gs then), stop grace %gs", cfg.node_down_after, cfg.fence_after,
                 cfg.fence_grace, cfg.stop_grace)

    def node_status(self) -> NodeStatus:
        """The API's NodeStatus (any thread; used by the metrics collector at scrape time)."""
        api = self.api
        if api is not None and api.client is not None:
            return api.client.status()
        raft = self.raft
        assert raft is not None
        return build_status(self.cfg.node_id, raft.status, raft.stats,
                            applied=self.store.applied_index, ready=False, uptime=0.0,
                            tick_seconds=self.cfg.tick_interval)

    # ------------------------------------------------------------------ stop
    def hand_over(self, timeout: float) -> None:
        """If this node leads a multi-voter cluster, transfer leadership before stopping."""
        raft = self.raft
        if raft is None or not self.cfg.cluster:
            return
        st = raft.status
        if st.role != Role.LEADER or len(st.voters) < 2:
            return
        peers = [(p.match, pid) for pid, p in st.progress.items()
                 if pid in st.voters and pid != self.cfg.node_id and p.recent_active]
        if not peers:
            log.warning("no reachable voter to hand leadership to before stopping")
            return
        target = max(peers)[1]
        push = self.ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        try:
            push.connect(f"inproc://{self.cfg.node_id}/raft")
            push.send(encode(TransferLeadership(src="server", dst="raft", rid=0, target=target)))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and raft.status.role == Role.LEADER:
                time.sleep(0.005)  # polling a published status with a deadline
            if raft.status.role == Role.LEADER:
                log.warning("leadership NOT handed over to %s before stop", target)
            else:
                log.info("leadership handed over to %s before stop", target)
        finally:
            push.close(0)

    def stop(self) -> None:
        # The runner first, with room for its stop grace (the supervisor's join is shorter):
        # its instances get SIGTERM, then SIGKILL after --stop-grace.
        for actor in (self.scheduler, self.workloads):
            if actor is not None:
                actor.stop()
                actor.join(5)
        if self.runner is not None:
            self.runner.stop()
            self.runner.join(self.cfg.stop_grace + 5)
        self.sup.stop_all()
        if any(a.is_alive() for a in self.sup.actors):
            log.error("some actors did not stop; leaving the ZeroMQ context for process exit")
            return
        if self.zap is not None:  # after raft closed its CURVE socket, before ctx.term()
            self.zap.stop()
            self.zap.join(5)
            self.zap = None
        if self.storage is not None:
            try:
                self.storage.close()
            except Exception as e:  # noqa: BLE001 - e.g. RocksDB after a failed write
                log.error("closing the log store: %s", e)
            self.storage = None
        self.ctx.term()


def _founding(cfg: ServerConfig, addr: str, fresh: bool) -> dict:
    """RaftCore arguments for a node started with --peers (main thread, at start).

    No two nodes may ever found a cluster from one member list, and an existing cluster
    always wins over founding (issue 12):
    - static form (the list names this node too): only the node with the lowest address
      founds, and only once a majority of the list (itself included) has answered that it
      holds no cluster; any peer answering with a cluster id makes it join that cluster (a
      wiped founder is then refused as a wiped voter, never founds a second cluster).
      --bootstrap is ignored in this form: the lowest address decides, without a race;
    - --bootstrap with a list of other nodes: founds once every listed peer answered that it
      holds no cluster, or after 10 election timeouts with no cluster answering; joins the
      cluster of any peer that answers with one;
    - otherwise a joiner."""
    others = [p for p in cfg.peers if not _same_addr(p, addr, cfg.raft_addr)]
    out: dict = {"join": others}
    if not fresh:
        return out
    if len(others) < len(cfg.peers):
        first = sorted(cfg.peers)[0]
        lowest = _same_addr(first, addr, cfg.raft_addr)
        if cfg.bootstrap:
            log.warning("--bootstrap ignored: --peers lists this node (static form), so the "
                        "node with the lowest address (%s) founds the cluster%s", first,
                        " (this node)" if lowest else "")
        if lowest:
            out.update(bootstrap=True, found_quorum=len(cfg.peers) // 2)
            log.info("static --peers form: this node has the lowest address and founds the "
                     "cluster once %d other listed node(s) answer that they hold none",
                     len(cfg.peers) // 2)
    elif cfg.bootstrap:
        out.update(bootstrap=True, found_quorum=len(others),
                   found_wait_ticks=10 * cfg.election_ticks)
    return out


def _boot_cluster(boot: BootState) -> str:
    """The cluster id of the newest configuration in the recovered state ("" if none)."""
    for e in reversed(boot.entries):
        if e[2] == EntryKind.CONFIG:
            return str(cbor2.loads(e[3]).get("cluster", ""))
    m = boot.snapshot_membership
    return m.cluster if m is not None else ""


def _write_durably(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_addr(peer: str, advertised: str, raft_addr: str) -> bool:
    """Whether `peer` names this node (its advertised or literal raft address)."""
    if peer in (advertised, raft_addr):
        return True
    host, _, port = peer.rpartition(":")
    my_port = raft_addr.rpartition(":")[2]
    if port != my_port:
        return False
    return host in (socket.gethostname(), socket.getfqdn(), advertised.rpartition(":")[0])


GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Cyclic GC tuned for a node that holds a large, long-lived state.

    With CPython's defaults (700, 10, 10) a node under load ran a young collection every few
    hundred requests and full collections that walk every deployment, more often as the state
    grew: p99 of creates at c=64 rose from 35 ms to 150-250 ms over a minute of load
    (benchmarks/README.md). Most garbage here is freed by reference counting anyway; cycles
    (futures, tracebacks) are still collected, just in larger, rarer batches."""
    gc.set_threshold(*GC_THRESHOLDS)


def run(cfg: ServerConfig) -> int:
    """Run a node until SIGTERM/SIGINT (exit 0) or an actor failure (exit 1)."""
    setup_logging(cfg.log_level, cfg.log_format, cfg.node_id)
    if cfg.tls_cert:  # a bad certificate/key pair is bad configuration: exit 2 before starting
        try:
            tls_context(cfg.tls_cert, cfg.tls_key)
        except ConfigError as e:
            console(cfg, str(e))
            return 2
    elif cfg.bind.rpartition(":")[0] not in ("127.0.0.1", "localhost", "[::1]"):
        log.warning("no --tls-cert: the HTTP API on %s is plain HTTP (tokens and data travel "
                    "unencrypted); see docs/security.md", cfg.bind)
    log.info("prisn %s starting: node %s, data dir %s, API %s%s", __version__, cfg.node_id,
             cfg.data_dir, cfg.bind,
             f", raft {cfg.raft_addr} (advertised {cfg.advertised_raft_addr})"
             if cfg.cluster else " (single node)")
    console(cfg, f"data dir {cfg.data_dir}", logging.INFO, data_dir=cfg.data_dir)
    curve = None
    if cfg.cluster_key_file:
        try:
            curve = load_keys(cfg.cluster_key_file)
        except KeyFileError as e:
            console(cfg, f"--cluster-key-file {e}")
            return 2
        if loosely_permitted(cfg.cluster_key_file):
            log.warning("--cluster-key-file %s may be read by other users: chmod 600 it",
                        cfg.cluster_key_file)
        if not cfg.cluster:
            log.info("--cluster-key-file only encrypts secrets at rest: this node is not "
                     "clustered")
    else:
        log.warning(UNENCRYPTED_WARNING)
    if (cfg.cluster and not (cfg.bootstrap or cfg.peers or cfg.force_new_cluster)
            and not (Path(cfg.data_dir) / "raft").exists()):
        # bad configuration: refuse before creating anything
        console(cfg, "--cluster needs --bootstrap (first node) or --peers")
        return 2
    os.umask(0o077)  # data dir 0700, data files 0600, whatever the caller's umask
    node = Node(cfg, curve=curve)

    signals = StopSignals()
    signals.install()
    tune_gc()
    try:
        node.start()
    except ConfigError as e:
        console(cfg, str(e))
        node.stop()
        return 2
    except Exception as e:  # noqa: BLE001 - a start-up failure is one line, never a traceback
        # (StorageError, OSError, ZMQError, RuntimeError from a failed actor, or a bug)
        log.debug("start-up failure", exc_info=True)
        known = isinstance(e, StorageError | OSError | zmq.ZMQError | RuntimeError)
        console(cfg, f"cannot start: {e if known else f'{type(e).__name__}: {e}'}")
        node.stop()
        return 1
    gc.freeze()  # the state restored at boot is long-lived: never traverse it again
    sd_notify("READY=1")
    while not signals.wait(node.sup, 0.25):
        if signals.take_hangups():
            log.info("received SIGHUP: nothing to reload (restart the node to apply changed "
                     "flags, TLS files or log level); still running")
    if signals.received:
        log.info("received %s, stopping", signal.Signals(signals.received[0]).name)
        node.sup.stop_requested.set()
    sd_notify("STOPPING=1")
    if not node.sup.failed.is_set():
        node.hand_over(timeout=2 * cfg.election_timeout * 4)
    node.stop()
    if node.sup.failed.is_set():
        name, exc = node.sup.failure or ("?", None)
        log.error("stopped because actor %s failed: %s", name, exc)
        return 1
    log.info("stopped")
    return 0
