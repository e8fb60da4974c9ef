"""Prometheus metrics of one node: one `NodeMetrics`, one private `CollectorRegistry`.

Who calls what, on which thread (prometheus-client counters and histograms are thread-safe):
- API IOLoop thread: `observe_request` after each response; `render` for ``GET /metrics``,
  which also runs the scrape-time collectors (so `status()` and `deployments()` are called
  on the API thread).
- logstore thread: `observe_fsync(seconds)`, `observe_batch(entries)`.
- raft actor thread: `leader_changed()`, `proposals_committed(n)`, `proposals_failed(n)`.
- fsm snapshot writer thread: `observe_snapshot(seconds)`.
- anyone: `counter(...)` to register an extra counter once at start and `.inc()` it later.

Raft gauges are not pushed: a collector asks `status()` at scrape time. The deployment count
is exposed as `prisn_deployments_total` with type *untyped*: the seed fixes that name, and
promtool refuses a gauge whose name ends in ``_total`` (it is a current count, not a counter).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from prisn import __version__
from prisn.messages import WIRE_VERSION

if TYPE_CHECKING:  # no runtime import: actors.api.app imports this module
    from actors.api.node import NodeStatus

ROLE_VALUES = {"follower": 0, "learner": 0, "candidate": 1, "leader": 2}
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
RUNNER_START_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
INSTANCE_STATES = ("Starting", "Running", "Exited", "CrashLoopBackOff")  # prisn.workloads.runner
SNAPSHOT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _RaftCollector(Collector):
    """Scrape-time raft series from `status()`; a failing `status()` yields no raft series."""

    def __init__(self, status: Callable[[], NodeStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        try:
            st = self._status()
        except Exception:  # a scrape must not fail because the node is stopping
            return
        yield GaugeMetricFamily("raft_state", "Raft role: 0 follower or learner, 1 candidate, "
                                "2 leader.", value=ROLE_VALUES.get(st.state, 0))
        yield GaugeMetricFamily("prisn_ready", "1 while this node is ready (GET /ready "
                                "answers 200: a leader is known and the log is applied), "
                                "else 0.", value=1 if st.ready else 0)
        yield GaugeMetricFamily("raft_term", "Current Raft term.", value=st.term)
        yield GaugeMetricFamily("raft_commit_index", "Highest log index known committed.",
                                value=st.commit_index)
        yield GaugeMetricFamily("raft_applied_index", "Highest log index applied.",
                                value=st.applied_index)
        others = [n for n in st.nodes if n.id != st.node_id]
        yield GaugeMetricFamily("raft_peers", "Number of other voting members.",
                                value=sum(1 for n in others if n.is_voter))
        lag = GaugeMetricFamily("raft_replication_lag_seconds",
                                "On the leader, seconds each peer's log is behind it; on any "
                                "other node, its own lag behind the leader (peer = its id).",
                                labels=["peer"])
        contact = GaugeMetricFamily("raft_peer_last_contact_seconds",
                                    "Seconds since the peer last answered.", labels=["peer"])
        inflight = GaugeMetricFamily("raft_peer_inflight_messages",
                                     "Messages queued or in flight to the peer.", labels=["peer"])
        if st.state != "leader":
            me = next((n for n in st.nodes if n.id == st.node_id), None)
            if me is not None and me.lag_seconds is not None:
                lag.add_metric([me.id], me.lag_seconds)
        for n in others:
            if st.state == "leader" and n.lag_seconds is not None:
                lag.add_metric([n.id], n.lag_seconds)
            if n.last_contact_seconds is not None:
                contact.add_metric([n.id], n.last_contact_seconds)
            if n.inflight_messages is not None:
                inflight.add_metric([n.id], n.inflight_messages)
        yield lag
        yield contact
        yield inflight


class _CountCollector(Collector):
    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count

    def collect(self) -> Iterator[Metric]:
        yield UnknownMetricFamily("prisn_deployments_total",
                                  "Number of deployments in the local state machine.",
                                  value=self._count())


class NodeMetrics:
    """All metrics of one node. Create once at start; pass to the actors that report."""

    def __init__(self, *, status: Callable[[], NodeStatus] | None = None,
                 deployments: Callable[[], int] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self._requests = Counter("prisn_api_requests", "HTTP API requests answered.",
                                 ["method", "route", "code"], registry=r)
        self._duration = Histogram("prisn_api_request_duration_seconds",
                                   "HTTP API request duration.", ["method", "route"],
                                   buckets=REQUEST_BUCKETS, registry=r)
        self._leader_changes = Counter("raft_leader_changes",
                                       "Times this node saw the leader change.", registry=r)
        self._committed = Counter("raft_proposals_committed",
                                  "Proposals of this node committed and applied.", registry=r)
        self._failed = Counter("raft_proposals_failed",
                               "Proposals of this node that failed or timed out.", registry=r)
        self._fsync = Histogram("prisn_log_fsync_seconds", "Duration of synced log writes.",
                                buckets=FSYNC_BUCKETS, registry=r)
        self._batch = Histogram("prisn_log_batch_entries", "Entries per synced log write.",
                                buckets=BATCH_BUCKETS, registry=r)
        self._snapshot = Histogram("prisn_snapshot_duration_seconds", "Duration of local "
                                   "state-machine snapshots, from copy to durable file.",
                                   buckets=SNAPSHOT_BUCKETS, registry=r)
        self._runner_start = Histogram("prisn_runner_start_seconds", "Time the runner took "
                                       "to start one instance's process (fork and exec).",
                                       buckets=RUNNER_START_BUCKETS, registry=r)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        # the process (CPU, RSS, open fds, start time) and the interpreter (python_info)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Gauge("prisn_build_info", "Always 1; the labels name the running build: prisn version, "
              "Python version and peer wire protocol version.",
              ["version", "python", "wire_version"], registry=r).labels(
            __version__, platform.python_version(), str(WIRE_VERSION)).set(1)
        self._auth_failures = Counter("prisn_http_auth_failures",
                                      "API requests refused by authentication (401) or "
                                      "authorization (403), by reason.", ["reason"], registry=r)
        self._auth_children: dict[str, Any] = {}
        if status is not None:
            r.register(_RaftCollector(status))
        if deployments is not None:
            r.register(_CountCollector(deployments))

    # ------------------------------------------------------------------ API thread
    def observe_request(self, method: str, route: str, code: int, seconds: float) -> None:
        """Count one answered request; `route` is the route pattern, not the raw path."""
        key = (method, route, code)
        pair = self._children.get(key)
        if pair is None:
            pair = (self._requests.labels(method, route, str(code)),
                    self._duration.labels(method, route))
            self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def auth_failed(self, reason: str) -> None:
        """Count one refused request; `reason` is one of a small fixed set (missing,
        malformed, invalid, revoked, expired, forbidden: `actors.api.auth.REASONS`)."""
        child = self._auth_children.get(reason)
        if child is None:
            child = self._auth_children[reason] = self._auth_failures.labels(reason)
        child.inc()

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """(body, content type) for a scrape, negotiated from the Accept header."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    # ------------------------------------------------------------------ other actors' threads
    def observe_fsync(self, seconds: float) -> None:
        """Logstore thread: one synced write took `seconds`."""
        self._fsync.observe(seconds)

    def observe_batch(self, entries: int) -> None:
        """Logstore thread: one synced write carried `entries` entries."""
        self._batch.observe(entries)

    def observe_snapshot(self, seconds: float) -> None:
        """Snapshot writer thread: one local snapshot took `seconds` (copy to durable)."""
        self._snapshot.observe(seconds)

    def observe_runner_start(self, seconds: float) -> None:
        """Runner thread: starting one instance's process took `seconds`."""
        self._runner_start.observe(seconds)

    def leader_changed(self) -> None:
        self._leader_changes.inc()

    def proposals_committed(self, n: int = 1) -> None:
        self._committed.inc(n)

    def proposals_failed(self, n: int = 1) -> None:
        self._failed.inc(n)

    def counter(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()) -> Counter:
        """Register an extra counter in this registry (once, at start) and return it."""
        return Counter(name, documentation, list(labelnames), registry=self.registry)


class SnapshotCollector(Collector):
    """Scrape-time snapshot series from the raft status and the state-machine actor.

    `raft_status()` returns the core's RaftStatus (or None before start); `fsm()` returns the
    StateMachineActor (or None). Both are read without locks: plain attribute reads of values
    their owning threads replace."""

    def __init__(self, raft_status: Callable[[], Any], fsm: Callable[[], Any]) -> None:
        self._raft_status = raft_status
        self._fsm = fsm

    def collect(self) -> Iterator[Metric]:
        try:
            st, fsm = self._raft_status(), self._fsm()
        except Exception:  # a scrape must not fail because the node is stopping
            return
        if st is None or fsm is None:
            return
        yield GaugeMetricFamily("prisn_snapshot_index", "Log index of the newest durable "
                                "snapshot (0: none).", value=st.snapshot_index)
        yield GaugeMetricFamily("prisn_snapshot_size_bytes", "Size of the newest snapshot file.",
                                value=fsm.snapshot_size)
        yield GaugeMetricFamily("prisn_raft_log_start_index", "First index still in the log "
                                "(compaction point + 1).", value=st.log_start)
        yield CounterMetricFamily("prisn_snapshots_taken", "Local snapshots written.",
                                  value=fsm.snapshots_taken)
        yield CounterMetricFamily("prisn_snapshot_failures", "Local snapshots that failed.",
                                  value=fsm.snapshot_failures)
        yield CounterMetricFamily("prisn_snapshot_installs_sent", "Snapshots followers "
                                  "reported installed from this leader.",
                                  value=st.snapshot_installs_sent)
        yield CounterMetricFamily("prisn_snapshot_installs_received", "Snapshots this node "
                                  "installed from a leader.", value=st.snapshot_installs_received)
        yield GaugeMetricFamily("prisn_disk_error", "1 while the log cannot be written (writes "
                                "get 507; the node retries by itself), else 0.",
                                value=1 if getattr(st, "disk_error", "") else 0)


class WorkloadsCollector(Collector):
    """Scrape-time workload series: `prisn_instances{state}` (this node's instances by runner
    state, every state present), `prisn_instance_restarts_total` (restarts of this node's
    instances after unplanned exits) from the workloads actor, and
    `prisn_scheduler_unplaced_instances` (replicas the leader's last round could not place;
    0 on followers) from the scheduler shell. Either may return None (not running)."""

    def __init__(self, workloads: Callable[[], Any], scheduler: Callable[[], Any]) -> None:
        self._workloads, self._scheduler = workloads, scheduler

    def collect(self) -> Iterator[Metric]:
        try:
            wl, sched = self._workloads(), self._scheduler()
        except Exception:  # a scrape must not fail because the node is stopping
            return
        states = wl.instance_states() if wl is not None else {}
        g = GaugeMetricFamily("prisn_instances", "Instances on this node by runner state.",
                              labels=["state"])
        for state in sorted(set(INSTANCE_STATES) | set(states)):
            g.add_metric([state], states.get(state, 0))
        yield g
        yield CounterMetricFamily("prisn_instance_restarts", "Restarts of this node's "
                                  "instances after unplanned exits.",
                                  value=getattr(wl, "restarts_total", 0) if wl else 0)
        yield GaugeMetricFamily("prisn_scheduler_unplaced_instances", "Service replicas the "
                                "scheduler could not place in its last round (leader only).",
                                value=getattr(sched, "unplaced", 0) if sched else 0)


class LogStoreCollector(Collector):
    """Scrape-time `prisn_log_disk_errors_total`: failed writes (and compactions) of the Raft
    log, each of which put the log store in its FAILED state (`LogStoreActor.write_failures`,
    an int written by the logstore thread only). `logstore()` may return None before start."""

    def __init__(self, logstore: Callable[[], Any]) -> None:
        self._logstore = logstore

    def collect(self) -> Iterator[Metric]:
        try:
            ls = self._logstore()
        except Exception:  # a scrape must not fail because the node is stopping
            return
        yield CounterMetricFamily("prisn_log_disk_errors", "Failed writes of the Raft log "
                                  "(full disk, I/O error); each makes the node refuse writes "
                                  "until a retry succeeds.",
                                  value=getattr(ls, "write_failures", 0) if ls else 0)


class PeerDropsCollector(Collector):
    """Scrape-time `prisn_peer_messages_dropped_total{reason}`: peer messages refused and
    counted instead of handled. `shell()` returns the raft actor's ShellStats
    (``peer_dropped``: undecodable frames and non-peer types on the Raft port) and `core()`
    the RaftStatus (``drops``: the core's reasons, e.g. ``bad_append``,
    ``bad_snapshot_chunk``, ``duplicate_forward``); either may return None before start."""

    def __init__(self, shell: Callable[[], Any], core: Callable[[], Any]) -> None:
        self._shell = shell
        self._core = core

    def collect(self) -> Iterator[Metric]:
        try:
            shell, core = self._shell(), self._core()
        except Exception:  # a scrape must not fail because the node is stopping
            return
        fam = CounterMetricFamily("prisn_peer_messages_dropped", "Peer messages dropped and "
                                  "counted: reason malformed (undecodable or not a peer "
                                  "message type), or the Raft core's reason.", labels=["reason"])
        fam.add_metric(["malformed"], getattr(shell, "peer_dropped", 0) if shell else 0)
        fam.add_metric(["replicator_full"], getattr(shell, "repl_full", 0) if shell else 0)
        reasons: dict[str, int] = {}
        for drops in (getattr(shell, "peer_drops", None), getattr(core, "drops", None)):
            for reason, n in (drops or {}).items():  # codec: unknown_type, wire_version
                reasons[str(reason)] = reasons.get(str(reason), 0) + n
        for reason, n in sorted(reasons.items()):
            fam.add_metric([reason], n)
        yield fam


class PeerWireCollector(Collector):
    """Scrape-time `prisn_peer_wire_version{peer,version}`: 1 for the wire version
    ("major.minor") each member was last heard speaking. `shell()` returns the raft actor's
    ShellStats (``wire_versions``) or None before start; a member not heard from yet has no
    series."""

    def __init__(self, shell: Callable[[], Any]) -> None:
        self._shell = shell

    def collect(self) -> Iterator[Metric]:
        try:
            shell = self._shell()
        except Exception:  # a scrape must not fail because the node is stopping
            return
        fam = GaugeMetricFamily("prisn_peer_wire_version", "1 for the wire version "
                                "(major.minor) each peer was last heard speaking; a major "
                                "other than this node's means its messages are dropped.",
                                labels=["peer", "version"])
        for peer, version in sorted((getattr(shell, "wire_versions", None) or {}).items()):
            fam.add_metric([str(peer), str(version)], 1)
        yield fam


class PeerAuthCollector(Collector):
    """Scrape-time `prisn_peer_auth_failures_total{reason}` from the node's peer-auth counts.

    `counts()` returns {reason: refusals since start} (`transport.curve.PeerAuthStats.counts`:
    ``key`` refused by the ZAP handler, ``handshake`` failed before it). Without a cluster key
    nothing is refused and the series stay at 0."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        try:
            counts = self._counts()
        except Exception:  # a scrape must not fail because the node is stopping
            return
        fam = CounterMetricFamily("prisn_peer_auth_failures", "Peer connections refused on the "
                                  "Raft port: reason key (the ZAP handler refused the client "
                                  "key or mechanism), handshake (failed before it: no key, "
                                  "another key, garbage).", labels=["reason"])
        for reason, n in sorted(counts.items()):
            fam.add_metric([reason], n)
        yield fam


class InflightCollector(Collector):
    """Scrape-time gauges of the API's in-flight bounds, read on the API thread: `counts()`
    returns (writes in flight, requests waiting for raft, --max-inflight). Plain ints kept by
    the API thread; after any burst both counts return to 0 (nothing leaks, issue 17)."""

    def __init__(self, counts: Callable[[], tuple[int, int, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        try:
            writes, waiting, limit = self._counts()
        except Exception:  # a scrape must not fail because the node is stopping
            return
        yield GaugeMetricFamily("prisn_api_writes_inflight", "Writes this node's API proposed "
                                "and has not answered yet (at most --max-inflight).",
                                value=writes)
        yield GaugeMetricFamily("prisn_api_raft_requests_inflight", "Requests of this node's "
                                "API waiting for raft or the state machine: writes, strong "
                                "reads, elections, removals (at most --max-inflight).",
                                value=waiting)
        yield GaugeMetricFamily("prisn_api_max_inflight", "The --max-inflight bound of both "
                                "in-flight gauges; at it, writes get 503 and /ready says not "
                                "ready.", value=limit)


class HttpLimitsCollector(Collector):
    """Scrape-time series of the HTTP limits (`actors.api.limits`), read on the API thread.

    `stats()` returns the server's `LimitStats` (or None before it listens); `rate_limited()`
    the limiter's refusal count (0 without a limiter). Plain ints kept by the API thread: no
    lock or metric call on the request path."""

    def __init__(self, stats: Callable[[], Any], rate_limited: Callable[[], int]) -> None:
        self._stats = stats
        self._rate_limited = rate_limited

    def collect(self) -> Iterator[Metric]:
        try:
            s, limited = self._stats(), self._rate_limited()
        except Exception:  # a scrape must not fail because the node is stopping
            return
        yield CounterMetricFamily("prisn_http_rate_limited", "Requests refused with 429: the "
                                  "client address was over --rate-limit.", value=limited)
        if s is None:
            return
        yield GaugeMetricFamily("prisn_http_connections_open", "Open HTTP API connections.",
                                value=s.connections_open)
        yield CounterMetricFamily("prisn_http_connections_refused", "HTTP connections refused "
                                  "at accept: --max-connections were open, or the client "
                                  "address held --max-conns-per-ip.",
                                  value=s.connections_refused)
        yield CounterMetricFamily("prisn_http_connections_refused_per_ip", "HTTP connections "
                                  "refused at accept because their client address already held "
                                  "--max-conns-per-ip (also counted in "
                                  "prisn_http_connections_refused_total).",
                                  value=s.connections_refused_per_ip)
        slow = CounterMetricFamily("prisn_http_slow_clients_closed", "HTTP connections closed "
                                   "because a request's header or body did not arrive in time, "
                                   "or its response was not taken in time, by phase.",
                                   labels=["phase"])
        for phase, n in sorted(s.slow_clients_closed.items()):
            slow.add_metric([phase], n)
        yield slow
        yield CounterMetricFamily("prisn_http_idle_closed", "Keep-alive HTTP connections closed "
                                  "after sitting idle for the idle timeout.", value=s.idle_closed)


class ExecutionsCollector(Collector):
    """Scrape-time execution and cron series from the state machine's executions table
    (`stats()`: `DeploymentStore.execution_stats`, read under the store lock on the API
    thread; None before start). Every node applies the same log, so every node reports the
    same table; the in-memory counts (fires, durations, lag) restart at 0 with the node or
    a snapshot install (a counter reset).

    - `prisn_executions_total{status}` (untyped, like prisn_deployments_total: a current
      count, not a counter) executions the table holds by status, every status present;
    - `prisn_execution_duration_seconds` histogram of executions this node saw finish;
    - `prisn_cron_fires_total` cron fires this node applied;
    - `prisn_cron_missed_total` scheduled times recorded missed (the table's totals of the
      cron deployments that exist: deleting one removes its share);
    - `prisn_scheduler_lag_seconds` started_at - scheduled_at of the latest cron execution
      to start (absent until one has)."""

    def __init__(self, stats: Callable[[], Any]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        try:
            st = self._stats()
        except Exception:  # a scrape must not fail because the node is stopping
            return
        if st is None:
            return
        fam = UnknownMetricFamily("prisn_executions_total", "Executions held in the "
                                  "replicated table (newest --execution-history per "
                                  "deployment), by status.", labels=["status"])
        for status, n in st["by_status"].items():
            fam.add_metric([status], n)
        yield fam
        yield HistogramMetricFamily(
            "prisn_execution_duration_seconds", "Duration (started to finished) of the "
            "executions this node saw finish.",
            buckets=[("+Inf" if b == float("inf") else repr(float(b)), n)
                     for b, n in st["buckets"]], sum_value=st["sum"])
        yield CounterMetricFamily("prisn_cron_fires", "Cron fires (executions created for a "
                                  "scheduled time) this node applied.", value=st["fires"])
        yield CounterMetricFamily("prisn_cron_missed", "Scheduled times of cron jobs recorded "
                                  "missed (no leader in time, or skipped by concurrency "
                                  "forbid).", value=st["missed"])
        if st["lag"] is not None:
            yield GaugeMetricFamily("prisn_scheduler_lag_seconds", "How late the latest cron "
                                    "execution started: started_at - scheduled_at.",
                                    value=st["lag"])
