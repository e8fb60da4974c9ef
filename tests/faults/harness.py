"""Jepsen-style runs against real `prisn server` clusters: workload, nemesis, checks.

One `run(cfg)`:
1. starts a cluster (3 or 5 nodes) on loopback, or one node per network namespace;
   every node runs with ``PRISN_TEST_FAULTS`` pointing at this run's control file (the
   test-only link fault layer of `transport/faults.py`), empty until a nemesis writes it;
2. creates `keys` deployments whose ``env.V`` is the register under test (initial "init");
3. runs `clients` threads for `duration` seconds: each picks a random key and a random node and
   either writes a unique value (PUT, the whole spec) or does a strong read
   (``X-Prisn-Consistency: strong``), recording invoke/return times; a write that fails after
   it may have been sent (503, timeout, reset) is *unknown*;
4. meanwhile a nemesis injects faults on a schedule drawn from the seed, and a monitor polls
   every node's ``/api/v1/cluster/status`` and ``/metrics``;
5. heals everything and checks (`Report.violations` lists what failed):
   - the history is linearizable per key (tests/faults/linearizability.py), including a final
     strong read of every key on every node;
   - at most one leader per term (every status and metrics sample of every node);
   - a leader that a majority agrees on within three (maximum) election timeouts of each heal;
   - every node converges (same leader, applied index = the leader's commit index), the full
     deployment listings (strong reads) are identical on every node, and every acknowledged
     write is present: each key's final value was written by a write that no acknowledged
     write strictly follows;
   - after a graceful stop, the committed logs stored in RocksDB are identical on every node
     and replaying them gives the same state-machine hash;
   - no node exited on its own.
A run's directory (history.jsonl, events.json, samples.jsonl, report.json, node logs and data
dirs) is deleted when the run passes, unless PRISN_FAULTS_KEEP=1; a failure keeps it and the
assertion message prints its path and the seed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.faults import linearizability as lin
from tests.faults.netns import Netns, ns_socket
from tests.helpers import wait_until
from tests.procs import Response, ServerProc, free_port

FAULT_ENV = "PRISN_TEST_FAULTS"
STRONG = {"X-Prisn-Consistency": "strong"}
INIT = "init"

PROCESS_FAULTS = ("kill", "kill-leader", "pause-leader", "wipe", "transfer")
NET_FAULTS = ("net", "net-harsh")  # transport layer: delay, jitter, duplication, reordering,
# loss; "net-harsh" holds frames back for longer than an election timeout on every link
PARTITIONS = ("isolate-leader", "halves", "oneway", "lossy")  # netns only

PROBE_CLIENT = 100  # the client index of the nemesis's wake-up probes

RUNS: list[dict] = []  # summaries for the terminal report (tests/faults/conftest.py)


@dataclass
class RunConfig:
    name: str
    seed: int
    faults: tuple[str, ...]
    duration: float = 15.0
    nodes: int = 3
    clients: int = 4
    keys: int = 3
    netns: bool = False
    write_ratio: float = 0.5
    think_ms: tuple[int, int] = (2, 12)
    fault_s: tuple[float, float] = (1.0, 3.0)
    gap_s: tuple[float, float] = (1.0, 2.5)
    heartbeat_ms: int = 50
    election_ms: int = 150
    write_timeout_s: float = 1.0
    client_timeout_s: float = 2.5
    converge_s: float = 40.0
    retries: int = 1  # retries of a write with an unknown outcome (same Idempotency-Key)
    lin_budget: int = lin.DEFAULT_BUDGET
    strong_reads: bool = True  # False: local reads (the negative control: must be caught)
    start_links: list = field(default_factory=list)  # link fault rules from the start
    expect_violation: bool = False
    # tests/faults/test_procedures.py: `form` forms the cluster instead of the Quick Start
    # (`Cluster.start`); `script` drives a scripted procedure instead of the nemesis, and the
    # load runs until it returns (at most `duration` seconds, else a violation)
    form: Callable[[Cluster], None] | None = None
    script: Callable[[Cluster, Recorder], None] | None = None


# ---------------------------------------------------------------------------------- nodes
class NsServerProc(ServerProc):
    """A `ServerProc` started with ``ip netns exec`` and reached through its namespace."""

    netns: str = ""

    def start(self) -> NsServerProc:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns, sys.executable, "-m",
                                      "prisn.cli", *self.args],
                                     stdout=out, stderr=subprocess.STDOUT, env=env)
        out.close()
        return self

    def req(self, method: str, path: str, body: Any = None, **kw: Any) -> Response:
        return ns_request(self.netns, self.http_port, method, path, body, **kw)


class _NsConnection(http.client.HTTPConnection):
    def __init__(self, ns: str, port: int, timeout: float) -> None:
        super().__init__("127.0.0.1", port, timeout=timeout)
        self._ns = ns

    def connect(self) -> None:
        sock = ns_socket(self._ns)
        sock.settimeout(self.timeout)
        try:
            sock.connect((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def ns_request(ns: str, port: int, method: str, path: str, body: Any = None,
               headers: dict[str, str] | None = None, timeout: float = 10.0) -> Response:
    conn = _NsConnection(ns, port, timeout)
    try:
        return _exchange(conn, method, path, body, headers)
    finally:
        conn.close()


class NotSent(Exception):
    """The request never reached the server (connection refused): it had no effect."""


def _exchange(conn: http.client.HTTPConnection, method: str, path: str, body: Any,
              headers: dict[str, str] | None) -> Response:
    data = None if body is None else json.dumps(body).encode()
    h = {"Content-Type": "application/json"} if data is not None else {}
    h.update(headers or {})
    conn.request(method, path, body=data, headers=h)
    r = conn.getresponse()
    return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())


def client_request(node: ServerProc, method: str, path: str, body: Any, headers: dict,
                   timeout: float) -> Response:
    """Like `node.req`, but a failure to connect raises `NotSent`."""
    if isinstance(node, NsServerProc):
        conn: http.client.HTTPConnection = _NsConnection(node.netns, node.http_port, timeout)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=timeout)
    try:
        try:
            conn.connect()
        except OSError as e:
            raise NotSent(str(e)) from e
        return _exchange(conn, method, path, body, headers)
    finally:
        conn.close()


def _status(node: ServerProc, timeout: float = 0.5) -> dict | None:
    try:
        r = node.req("GET", "/api/v1/cluster/status", timeout=timeout)
        return r.json() if r.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError):
        return None


_METRIC_RE = re.compile(r"^(raft_term|raft_state) ([0-9.e+]+)$", re.M)


def _metrics(node: ServerProc, timeout: float = 0.5) -> dict | None:
    try:
        r = node.req("GET", "/metrics", timeout=timeout)
    except (OSError, http.client.HTTPException):
        return None
    if r.status != 200:
        return None
    out = {k: int(float(v)) for k, v in _METRIC_RE.findall(r.body.decode(errors="replace"))}
    return out if len(out) == 2 else None


# ---------------------------------------------------------------------------------- cluster
class Cluster:
    """The current members (alive or not) and how to start, stop and replace them."""

    def __init__(self, cfg: RunConfig, root: Path, control: Path, net: Netns | None) -> None:
        self.cfg = cfg
        self.root = root
        self.control = control
        self.net = net
        self.nodes: list[ServerProc] = []  # replaced, never mutated: other threads read it
        self.retired: list[ServerProc] = []
        self.slot_of: dict[str, int] = {}
        self.paused: set[str] = set()
        self.expected_down: set[str] = set()
        self._next_id = 1
        self._raft_ports: dict[int, int] = {}

    @property
    def extra(self) -> list[str]:
        c = self.cfg
        return ["--heartbeat-interval", f"{c.heartbeat_ms}ms", "--election-timeout",
                f"{c.election_ms}ms", "--write-timeout", f"{c.write_timeout_s:g}s"]

    def raft_addr(self, slot: int) -> str:
        if self.net is not None:
            return f"{self.net.ip(slot)}:7332"
        if slot not in self._raft_ports:
            self._raft_ports[slot] = free_port()
        return f"127.0.0.1:{self._raft_ports[slot]}"

    def make(self, slot: int, *, bootstrap: bool = False, peers: list[str] = (),
             node_id: str | None = None) -> ServerProc:
        """A node for `slot` (its Raft address); a new id unless `node_id` is given."""
        if node_id is None:
            node_id = f"n{self._next_id}"
            self._next_id += 1
        data = self.root / node_id / "data"
        if self.net is not None:
            hp = 7331
            bind = f"127.0.0.1:{hp}"
        else:
            hp = free_port()
            bind = f"127.0.0.1:{hp}"
        addr = self.raft_addr(slot)
        args = ["server", "--bind", bind, "--data-dir", str(data), "--node-id", node_id,
                "--cluster", "--raft-addr", addr, *self.extra]
        if bootstrap:
            args.append("--bootstrap")
        if peers:
            args += ["--peers", ",".join(peers)]
        env = {FAULT_ENV: str(self.control)}
        if self.net is not None:
            p: ServerProc = NsServerProc(node_id, data, hp, int(addr.rpartition(":")[2]), args,
                                         env)
            p.netns = self.net.ns(slot)  # type: ignore[attr-defined]
        else:
            p = ServerProc(node_id, data, hp, int(addr.rpartition(":")[2]), args, env)
        self.slot_of[node_id] = slot
        return p

    def addr_of(self, node: ServerProc) -> str:
        return self.raft_addr(self.slot_of[node.node_id])

    def start(self) -> None:
        first = self.make(0, bootstrap=True).start()
        self.nodes = [first]
        first.wait_ready(30)
        for slot in range(1, self.cfg.nodes):
            n = self.make(slot, peers=[self.addr_of(m) for m in self.nodes]).start()
            self.nodes = [*self.nodes, n]
            n.wait_ready(30)
        wait_until(lambda: self.all_voters(), 30, "every node a voter")

    def all_voters(self) -> bool:
        ids = {n.node_id for n in self.nodes}
        for n in self.nodes:
            st = _status(n)
            if st is None:
                return False
            voters = {x["id"] for x in st["nodes"] if x["state"] in ("leader", "follower")}
            if voters != ids or not st.get("leader"):
                return False
        return True

    def live(self) -> list[ServerProc]:
        return [n for n in self.nodes if n.alive() and n.node_id not in self.paused]

    def agreed_leader(self) -> tuple[ServerProc, int] | None:
        """The leader a majority of members reports in one term (it says so itself)."""
        members = self.nodes
        votes: dict[tuple[int, str], int] = defaultdict(int)
        self_claims: set[tuple[int, str]] = set()
        for n in self.live():
            st = _status(n, 0.3)
            if st is None:
                continue
            if st.get("leader"):
                votes[(st["term"], st["leader"])] += 1
            if _self_state(st) == "leader":
                self_claims.add((st["term"], n.node_id))
        for (term, lid), count in votes.items():
            if count > len(members) // 2 and (term, lid) in self_claims:
                node = next((m for m in members if m.node_id == lid), None)
                if node is not None:
                    return node, term
        return None

    def replace(self, old: ServerProc, new: ServerProc) -> None:
        self.nodes = [new if n is old else n for n in self.nodes]
        self.retired.append(old)

    def add(self, new: ServerProc) -> None:
        self.nodes = [*self.nodes, new]

    def stop_all(self, graceful: bool = True) -> dict[str, int | None]:
        procs = self.nodes + self.retired
        for n in procs:
            if n.alive():
                n.kill(signal.SIGCONT)
        self.paused.clear()
        for n in procs:
            if n.alive():
                n.kill(signal.SIGTERM if graceful else signal.SIGKILL)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + 20
        for i, n in enumerate(procs):
            if n.proc is None:
                continue
            # a retired process may share its id with a member (a disk replaced in place)
            key = n.node_id if n.node_id not in codes else f"{n.node_id} (retired #{i})"
            try:
                codes[key] = n.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                n.kill(signal.SIGKILL)
                codes[key] = None
                with contextlib.suppress(subprocess.TimeoutExpired):
                    n.proc.wait(5)
        return codes


# ---------------------------------------------------------------------------------- recording
class Recorder:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self.ops: list[dict] = []
        self.events: list[dict] = []
        self.samples: list[dict] = []
        self.anomalies: list[str] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    def op(self, rec: dict) -> None:
        with self._lock:
            rec["id"] = len(self.ops)
            self.ops.append(rec)

    def event(self, **kw: Any) -> dict:
        kw.setdefault("t", round(self.now(), 4))
        with self._lock:
            self.events.append(kw)
        return kw

    def sample(self, rec: dict) -> None:
        with self._lock:
            self.samples.append(rec)

    def anomaly(self, msg: str) -> None:
        with self._lock:
            self.anomalies.append(msg)


class Client(threading.Thread):
    def __init__(self, idx: int, cfg: RunConfig, cluster: Cluster, rec: Recorder,
                 keys: list[str], stop: threading.Event) -> None:
        super().__init__(name=f"fault-client-{idx}", daemon=True)
        self.idx = idx
        self.cfg = cfg
        self.cluster = cluster
        self.rec = rec
        self.keys = keys
        self.stop_event = stop
        self.rng = random.Random(f"{cfg.seed}:client:{idx}")

    def run(self) -> None:
        seq = 0
        cfg, rng = self.cfg, self.rng
        while not self.stop_event.is_set():
            nodes = self.cluster.nodes
            node = rng.choice(nodes)
            key = rng.choice(self.keys)
            if rng.random() < cfg.write_ratio:
                seq += 1
                self.write(node, key, f"c{self.idx}-{seq}")
            else:
                self.read(node, key)
            self.stop_event.wait(rng.uniform(*cfg.think_ms) / 1000)

    def write(self, node: ServerProc, key: str, value: str) -> None:
        """PUT `value`; after an unknown outcome, retry up to `cfg.retries` times on random
        nodes with the same Idempotency-Key. The op spans every attempt: acknowledged if one
        attempt was, else unknown (or dropped when no attempt reached a server)."""
        rec = self.rec
        t0 = rec.now()
        status = None
        outcome = "fail"
        err = ""
        nodes = [node.node_id]
        idem = {"Idempotency-Key": f"s{self.cfg.seed}-c{self.idx}-{key}-{value}"}
        for attempt in range(1 + max(0, self.cfg.retries)):
            if attempt:
                if self.stop_event.is_set():
                    break
                node = self.rng.choice(self.cluster.nodes)
                nodes.append(node.node_id)
            result, status, e = self._put(node, key, value, idem)
            if result == "fail" and outcome == "unknown":
                continue  # this attempt did nothing; an earlier one may have
            outcome, err = result, e or err
            if outcome == "ok":
                break
            if outcome == "fail":
                self.stop_event.wait(0.02)  # node down: do not spin
        t1 = rec.now()
        if outcome == "fail":
            return
        rec.op({"client": self.idx, "node": ",".join(nodes), "key": key, "kind": lin.WRITE,
                "value": value, "invoke": t0, "ret": t1 if outcome == "ok" else None,
                "end": t1, "status": status, "outcome": outcome, "err": err,
                "attempts": len(nodes)})

    def _put(self, node: ServerProc, key: str, value: str,
             headers: dict) -> tuple[str, int | None, str]:
        rec = self.rec
        try:
            r = client_request(node, "PUT", f"/api/v1/deployments/{key}",
                               {"source": "x", "env": {"V": value}}, headers,
                               self.cfg.client_timeout_s)
        except NotSent as e:
            return "fail", None, str(e)
        except (OSError, http.client.HTTPException, ValueError) as e:
            return "unknown", None, f"{type(e).__name__}: {e}"
        if r.status == 200:
            got = (r.json().get("env") or {}).get("V")
            if got != value:
                rec.anomaly(f"write {key}={value} on {node.node_id} answered 200 with "
                            f"V={got!r}")
            return "ok", 200, ""
        if r.status != 503:
            rec.anomaly(f"write {key}={value} on {node.node_id}: unexpected {r.status} "
                        f"{r.body[:200]!r}")
        return "unknown", r.status, r.body[:120].decode(errors="replace")

    def read(self, node: ServerProc, key: str) -> None:
        rec = self.rec
        t0 = rec.now()
        try:
            r = client_request(node, "GET", f"/api/v1/deployments/{key}", None,
                               STRONG if self.cfg.strong_reads else {},
                               self.cfg.client_timeout_s)
        except NotSent:
            self.stop_event.wait(0.02)
            return
        except (OSError, http.client.HTTPException, ValueError):
            return  # a read that did not complete has no effect
        t1 = rec.now()
        if r.status == 200:
            value = (r.json().get("env") or {}).get("V")
        elif r.status == 404:
            value = None
        else:
            if r.status != 503:
                rec.anomaly(f"strong read {key} on {node.node_id}: unexpected {r.status}")
            return
        rec.op({"client": self.idx, "node": node.node_id, "key": key, "kind": lin.READ,
                "value": value, "invoke": t0, "ret": t1, "end": t1, "status": r.status,
                "outcome": "ok", "err": ""})


class Monitor(threading.Thread):
    """Polls every member's status (and metrics, less often) until stopped."""

    def __init__(self, cluster: Cluster, rec: Recorder, stop: threading.Event,
                 interval: float = 0.1) -> None:
        super().__init__(name="fault-monitor", daemon=True)
        self.cluster = cluster
        self.rec = rec
        self.stop_event = stop
        self.interval = interval

    def run(self) -> None:
        rounds = 0
        while not self.stop_event.is_set():
            rounds += 1
            self.poll_once(metrics=rounds % 5 == 0)
            self.stop_event.wait(self.interval)

    def poll_once(self, metrics: bool = True) -> None:
        for n in self.cluster.nodes:
            if n.node_id in self.cluster.paused or not n.alive():
                if (n.proc is not None and not n.alive()
                        and n.node_id not in self.cluster.expected_down
                        and n in self.cluster.nodes):
                    self.rec.anomaly(f"{n.node_id} exited by itself (rc {n.proc.returncode}): "
                                     f"{n.tail(15)}")
                    self.cluster.expected_down.add(n.node_id)  # report once
                continue
            st = _status(n, 0.3)
            if st is not None:
                self.rec.sample({"t": round(self.rec.now(), 4), "src": "status",
                                 "node": n.node_id, "term": st["term"],
                                 "state": _self_state(st),
                                 "leader": st.get("leader"), "commit": st.get("commit_index"),
                                 "applied": st.get("applied_index")})
            if metrics:
                m = _metrics(n, 0.3)
                if m is not None:
                    self.rec.sample({"t": round(self.rec.now(), 4), "src": "metrics",
                                     "node": n.node_id, "term": m["raft_term"],
                                     "state": {0: "follower", 1: "candidate",
                                               2: "leader"}.get(m["raft_state"], "?")})


def _self_state(st: dict) -> str:
    for x in st.get("nodes", []):
        if x["id"] == st.get("node_id"):
            return x["state"]
    return "?"


# ---------------------------------------------------------------------------------- nemesis
class Nemesis(threading.Thread):
    """Injects the run's faults on a seeded schedule; heals each one before the next."""

    def __init__(self, cfg: RunConfig, cluster: Cluster, rec: Recorder, end: float,
                 stop: threading.Event, keys: list[str]) -> None:
        super().__init__(name="fault-nemesis", daemon=True)
        self.keys = keys
        # probes hit a node the moment it wakes up or rejoins (recorded like any client)
        self.prober = Client(PROBE_CLIENT, cfg, cluster, rec, keys, threading.Event())
        self._probe_seq = 0
        self._probes: list[threading.Thread] = []
        self.cfg = cfg
        self.cluster = cluster
        self.rec = rec
        self.end = end
        self.stop_event = stop
        self.rng = random.Random(f"{cfg.seed}:nemesis")
        self.injected = 0
        self.heal_times: list[float] = []
        self.error: BaseException | None = None

    @property
    def leader_bound(self) -> float:
        """Three maximum election timeouts (the timeout is randomized up to twice the flag)."""
        return 3 * 2 * self.cfg.election_ms / 1000

    def run(self) -> None:
        try:
            self.stop_event.wait(self.rng.uniform(0.5, 1.5))
            while (self.cfg.faults and not self.stop_event.is_set()
                   and self.rec.now() < self.end - 1.0):
                kind = self.rng.choice(self.cfg.faults)
                dur = self.rng.uniform(*self.cfg.fault_s)
                dur = min(dur, max(0.2, self.end - self.rec.now() - 0.5))
                ev = self.inject(kind)
                if ev is None:
                    self.stop_event.wait(0.2)
                    continue
                self.injected += 1
                self.stop_event.wait(dur)
                self.heal(ev)
                self.stop_event.wait(self.rng.uniform(*self.cfg.gap_s))
        except BaseException as e:  # noqa: BLE001 - reported by the run
            self.error = e
            self.rec.anomaly(f"nemesis failed: {type(e).__name__}: {e}")
        finally:
            with contextlib.suppress(BaseException):
                self.heal(None)

    # ------------------------------------------------------------------ targets
    def _leader(self) -> ServerProc | None:
        got = self.cluster.agreed_leader()
        return got[0] if got else None

    def _pick(self, want_leader: bool) -> ServerProc | None:
        live = self.cluster.live()
        if not live:
            return None
        if want_leader:
            leader = self._leader()
            if leader is not None and leader in live:
                return leader
            return None
        return self.rng.choice(live)

    # ------------------------------------------------------------------ inject / heal
    def inject(self, kind: str) -> dict | None:
        c = self.cluster
        if kind in ("kill", "kill-leader"):
            target = self._pick(kind == "kill-leader" or self.rng.random() < 0.5)
            if target is None:
                return None
            c.expected_down.add(target.node_id)
            target.kill(signal.SIGKILL)
            target.wait_exit(10)
            return self.rec.event(kind=kind, node=target.node_id, action="SIGKILL")
        if kind == "pause-leader":
            target = self._pick(True)
            if target is None:
                return None
            c.paused.add(target.node_id)
            target.kill(signal.SIGSTOP)
            return self.rec.event(kind=kind, node=target.node_id, action="SIGSTOP")
        if kind == "wipe":
            target = self._pick(self.rng.random() < 0.5)
            if target is None:
                return None
            c.expected_down.add(target.node_id)
            target.kill(signal.SIGKILL)
            target.wait_exit(10)
            return self.rec.event(kind=kind, node=target.node_id, action="SIGKILL+wipe")
        if kind == "transfer":
            live = self.cluster.live()
            leader = self._leader()
            others = [n for n in live if n is not leader]
            if not others:
                return None
            target = self.rng.choice(others)
            try:
                r = target.req("POST", "/api/v1/cluster/election", timeout=5)
                status = r.status
            except (OSError, http.client.HTTPException) as e:
                status = f"{type(e).__name__}"
            return self.rec.event(kind=kind, node=target.node_id, action="election",
                                  status=status)
        if kind == "net":
            return self._net_faults()
        if kind == "net-harsh":
            return self._net_harsh()
        if kind in PARTITIONS:
            return self._partition(kind)
        raise ValueError(f"unknown fault {kind!r}")

    def _net_faults(self) -> dict:
        rng = self.rng
        ids = [n.node_id for n in self.cluster.nodes]
        links = []
        # one random node's outgoing links get a harsh profile, everything else a mild one
        victim = rng.choice(ids)
        links.append({"src": victim, "dst": "*", "delay_ms": rng.randint(10, 60),
                      "jitter_ms": rng.randint(5, 30), "dup": round(rng.uniform(0.05, 0.3), 2),
                      "reorder": round(rng.uniform(0.1, 0.4), 2),
                      "reorder_ms": rng.randint(20, 120),
                      "drop": round(rng.choice([0, 0, 0.05, 0.2]), 2)})
        links.append({"src": "*", "dst": "*", "delay_ms": rng.randint(0, 15),
                      "jitter_ms": rng.randint(0, 10), "dup": round(rng.uniform(0, 0.1), 2),
                      "reorder": round(rng.uniform(0, 0.2), 2), "reorder_ms": 40, "drop": 0})
        write_control(self.cluster.control, {"seed": rng.randrange(1 << 30), "links": links})
        return self.rec.event(kind="net", node=victim, links=links)

    def _net_harsh(self) -> dict:
        rng = self.rng
        et = self.cfg.election_ms
        links = [{"src": "*", "dst": "*", "delay_ms": rng.randint(0, et // 2),
                  "jitter_ms": rng.randint(0, et // 3), "dup": round(rng.uniform(0.1, 0.4), 2),
                  "reorder": round(rng.uniform(0.1, 0.4), 2),
                  "reorder_ms": rng.randint(2 * et, 5 * et),
                  "drop": round(rng.uniform(0, 0.15), 2)}]
        write_control(self.cluster.control, {"seed": rng.randrange(1 << 30), "links": links})
        return self.rec.event(kind="net-harsh", node="*", links=links)

    def _partition(self, kind: str) -> dict | None:
        net = self.cluster.net
        if net is None:
            raise ValueError(f"fault {kind!r} needs network namespaces")
        c, rng = self.cluster, self.rng
        slots = {n.node_id: c.slot_of[n.node_id] for n in c.nodes}
        ids = sorted(slots)
        cuts: dict[int, dict[str, dict[int, int]]] = defaultdict(lambda: {"in": {}, "out": {}})
        if kind == "isolate-leader":
            leader = self._leader()
            if leader is None:
                return None
            me = slots[leader.node_id]
            for s in slots.values():
                if s != me:
                    cuts[me]["in"][s] = 100
                    cuts[me]["out"][s] = 100
            detail: Any = leader.node_id
        elif kind == "halves":
            shuffled = ids[:]
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(ids) // 2)
            a, b = shuffled[:cut], shuffled[cut:]
            for x in a:
                for y in b:
                    cuts[slots[x]]["in"][slots[y]] = 100
                    cuts[slots[y]]["in"][slots[x]] = 100
            detail = [a, b]
        elif kind == "oneway":
            leader = self._leader()
            src = leader.node_id if leader is not None and rng.random() < 0.7 else rng.choice(ids)
            # src's packets never reach the others; it still hears them
            for nid, s in slots.items():
                if nid != src:
                    cuts[slots[src]]["out"][s] = 100
            detail = f"{src} -> others dropped"
        else:  # lossy
            victim = rng.choice(ids)
            loss = rng.choice([20, 35, 50])
            for nid, s in slots.items():
                if nid != victim:
                    cuts[slots[victim]]["in"][s] = loss
                    cuts[slots[victim]]["out"][s] = loss
            detail = f"{victim} {loss}% loss"
        net.apply(dict(cuts))
        return self.rec.event(kind=kind, node=detail, cuts={str(k): v for k, v in cuts.items()})

    def heal(self, ev: dict | None) -> None:
        """Undo `ev` (None: undo everything), then measure the time to an agreed leader."""
        c = self.cluster
        kind = ev["kind"] if ev else None
        if ev is None or kind in NET_FAULTS:
            write_control(c.control, {"seed": self.cfg.seed, "links": self.cfg.start_links})
        if (ev is None or kind in PARTITIONS) and c.net is not None:
            c.net.heal()
        for n in list(c.nodes):
            if n.node_id in c.paused and (ev is None or ev.get("node") == n.node_id):
                n.kill(signal.SIGCONT)
                c.paused.discard(n.node_id)
                if ev is not None:
                    self.probe(n)
        if ev is not None and kind == "isolate-leader":
            self.probe(next(n for n in c.nodes if n.node_id == ev["node"]))
        if ev is not None and kind == "wipe":
            self._replace(ev["node"])
        for n in list(c.nodes):
            if not n.alive() and n.node_id in c.expected_down and (
                    ev is None or ev.get("node") == n.node_id):
                n.restart()
                c.expected_down.discard(n.node_id)
        if ev is None:
            return
        t_heal = time.monotonic()  # every fault undone: a leader is due within the bound
        ev["healed_at"] = round(self.rec.now(), 4)
        try:
            wait_until(lambda: c.agreed_leader() is not None, 15, "an agreed leader")
            took = time.monotonic() - t_heal
        except TimeoutError:
            took = float("inf")
        ev["leader_after_heal_s"] = round(took, 3)
        self.heal_times.append(took)
        # the next fault only once every member is back, to keep a quorum possible
        deadline = 30
        try:
            wait_until(lambda: all(n.ready() for n in c.nodes) and c.all_voters(), deadline,
                       "every member ready and voting", interval=0.05)
        except TimeoutError as e:
            self.rec.anomaly(f"after healing {ev['kind']} on {ev['node']}: {e}")

    def probe(self, node: ServerProc) -> None:
        """At once, strong reads and writes of every key on `node` (in parallel): a woken
        leader must not answer them from its stale view."""
        jobs: list[threading.Thread] = []
        for key in self.keys:
            self._probe_seq += 1
            value = f"c{PROBE_CLIENT}-{self._probe_seq}"
            jobs.append(threading.Thread(target=self.prober.read, args=(node, key), daemon=True))
            jobs.append(threading.Thread(target=self.prober.write, args=(node, key, value),
                                         daemon=True))
            jobs.append(threading.Thread(target=self.prober.read, args=(node, key), daemon=True))
        for j in jobs:
            j.start()
        self._probes += jobs

    def join_probes(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for j in self._probes:
            j.join(max(0.0, deadline - time.monotonic()))

    def _replace(self, old_id: str) -> None:
        """Remove the wiped member, then start a fresh data dir under a new node id."""
        c = self.cluster
        old = next(n for n in c.nodes if n.node_id == old_id)
        others = [n for n in c.nodes if n is not old]

        def removed() -> bool:
            for n in others:
                if not n.alive():
                    continue
                try:
                    r = n.req("DELETE", f"/api/v1/cluster/nodes/{old_id}", timeout=5)
                except (OSError, http.client.HTTPException):
                    continue
                if r.status in (204, 404):
                    return True
            return False

        wait_until(removed, 20, f"removal of {old_id}", interval=0.2)
        slot = c.slot_of[old_id]
        new = c.make(slot, peers=[c.addr_of(n) for n in others])
        c.replace(old, new)  # old stays in expected_down: it is retired, not restarted
        new.start()
        self.rec.event(kind="join", node=new.node_id, replaces=old_id)


class Script(threading.Thread):
    """Runs `cfg.script(cluster, rec)`, a scripted procedure, in place of the nemesis (its own
    thread). An exception is recorded as an anomaly (so a violation); `stop` is set when the
    script returns, which ends the load. Each `rec.event(kind="step", name=...)` counts as
    one injected fault in the report."""

    def __init__(self, cfg: RunConfig, cluster: Cluster, rec: Recorder,
                 stop: threading.Event) -> None:
        super().__init__(name="fault-script", daemon=True)
        self.cfg = cfg
        self.cluster = cluster
        self.rec = rec
        self.stop_event = stop
        self.finished = False
        self.injected = 0
        self.heal_times: list[float] = []
        self.leader_bound = 3 * 2 * cfg.election_ms / 1000

    def run(self) -> None:
        try:
            assert self.cfg.script is not None
            self.cfg.script(self.cluster, self.rec)
            self.finished = True
        except BaseException as e:  # noqa: BLE001 - reported by the run
            self.rec.anomaly(f"procedure failed: {type(e).__name__}: {e}")
            self.finished = True
        finally:
            self.injected = sum(1 for e in self.rec.events if e.get("kind") == "step")
            self.stop_event.set()

    def join_probes(self, timeout: float) -> None:  # noqa: ARG002 - the nemesis's interface
        return


def write_control(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------- checks
@dataclass
class Report:
    name: str
    seed: int
    run_dir: str
    ops: int = 0
    writes_ok: int = 0
    writes_unknown: int = 0
    reads: int = 0
    faults: int = 0
    fault_kinds: dict = field(default_factory=dict)
    terms: int = 0
    max_leader_after_heal_s: float = 0.0
    lin_steps: int = 0
    violations: list[str] = field(default_factory=list)
    expect_violation: bool = False
    seconds: float = 0.0
    frames: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def as_expected(self) -> bool:
        if self.expect_violation:
            return any("not linearizable" in v for v in self.violations)
        return self.ok

    def line(self) -> str:
        verdict = "OK" if self.ok else f"FAILED ({len(self.violations)} violations)"
        if self.expect_violation:
            verdict = ("violation found, as expected" if self.as_expected
                       else "FAILED (the expected violation was not found)")
        kinds = ",".join(f"{k}x{v}" for k, v in sorted(self.fault_kinds.items())) or "-"
        fr = self.frames
        frames = (f", frames: {fr.get('delayed', 0)} delayed, {fr.get('reordered', 0)} "
                  f"reordered, {fr.get('duplicated', 0)} duplicated, {fr.get('dropped', 0)} "
                  f"dropped" if any(fr.values()) else "")
        return (f"[faults] {self.name} seed={self.seed}: {self.ops} ops checked "
                f"({self.writes_ok} acked writes, {self.writes_unknown} unknown, {self.reads} "
                f"reads), {self.faults} faults injected ({kinds}{frames}), {self.terms} terms, "
                f"max leader-after-heal {self.max_leader_after_heal_s:.2f}s, "
                f"{self.seconds:.1f}s: {verdict}")


def check_leaders(samples: list[dict]) -> list[str]:
    """At most one leader per term, from every node's own state and its view of the leader."""
    claims: dict[int, set[str]] = defaultdict(set)
    for s in samples:
        if s["state"] == "leader":
            claims[s["term"]].add(s["node"])
        if s.get("leader"):
            claims[s["term"]].add(s["leader"])
    return [f"term {t} had {len(ls)} leaders: {sorted(ls)}" for t, ls in sorted(claims.items())
            if len(ls) > 1]


def check_final_values(ops: list[dict], finals: dict[str, Any]) -> list[str]:
    """Every acknowledged write is present: the final value of each key is its initial value
    only if no write was acknowledged, else a written value whose writer no acknowledged write
    strictly follows in real time (an unknown writer may have landed last: no conclusion)."""
    out = []
    writes = [o for o in ops if o["kind"] == lin.WRITE]
    for key, value in finals.items():
        acked = [o for o in writes if o["key"] == key and o["outcome"] == "ok"]
        if value == INIT:
            if acked:
                out.append(f"key {key}: {len(acked)} acknowledged writes lost (final value is "
                           f"the initial one), e.g. op {acked[0]['id']} {acked[0]['value']!r}")
            continue
        writer = next((o for o in writes if o["key"] == key and o["value"] == value), None)
        if writer is None:
            out.append(f"key {key}: final value {value!r} was never written")
            continue
        if writer["ret"] is None:
            continue
        later = [o for o in acked if o["invoke"] > writer["ret"]]
        if later:
            o = later[0]
            out.append(f"key {key}: acknowledged write {o['value']!r} (op {o['id']}, "
                       f"[{o['invoke']:.3f}, {o['ret']:.3f}]) lost: the final value {value!r} "
                       f"was written before it, by op {writer['id']} ([{writer['invoke']:.3f}, "
                       f"{writer['ret']:.3f}])")
    return out


def stored_logs(nodes: list[ServerProc]) -> tuple[dict[str, dict], list[str]]:
    """Open each stopped node's RocksDB log; compare committed entries and replayed state."""
    from prisn.fsm.deployments import DeploymentStore
    from prisn.storage import LogStorage

    logs: dict[str, dict] = {}
    problems: list[str] = []
    for n in nodes:
        path = n.data_dir / "raft"
        if not path.exists():
            continue
        try:
            st = LogStorage(str(path))
        except Exception as e:  # noqa: BLE001 - reported
            problems.append(f"{n.node_id}: cannot open its log: {e}")
            continue
        try:
            boot = st.load()
        finally:
            st.close()
        entries = {e[0]: (e[1], e[2], bytes(e[3])) for e in boot.entries}
        logs[n.node_id] = {"commit": boot.commit, "first": boot.snapshot_index + 1,
                           "last": boot.entries[-1][0] if boot.entries else boot.snapshot_index,
                           "entries": entries}
    ids = sorted(logs)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            la, lb = logs[a], logs[b]
            upto = min(la["commit"], lb["commit"])
            lo = max(la["first"], lb["first"])
            for idx in range(lo, upto + 1):
                ea, eb = la["entries"].get(idx), lb["entries"].get(idx)
                if ea is None or eb is None:
                    problems.append(f"committed entry {idx} missing on "
                                    f"{a if ea is None else b}")
                    break
                if ea != eb:
                    problems.append(f"committed entry {idx} differs: {a} has term {ea[0]}, "
                                    f"{b} has term {eb[0]}")
                    break
    hashes = {}
    for nid in ids:
        lg = logs[nid]
        if lg["first"] != 1:
            continue
        store = DeploymentStore()
        for idx in range(1, lg["commit"] + 1):
            term_kind_data = lg["entries"].get(idx)
            if term_kind_data is None:
                break
            store.apply(idx, term_kind_data[1], term_kind_data[2])
        hashes[nid] = (lg["commit"], store.state_hash())
        lg["hash"] = hashes[nid][1]
    by_commit: dict[int, set[str]] = defaultdict(set)
    for _nid, (commit, h) in hashes.items():
        by_commit[commit].add(h)
    for commit, hs in by_commit.items():
        if len(hs) > 1:
            problems.append(f"state-machine hashes differ at commit {commit}: {sorted(hs)}")
    return logs, problems


# ---------------------------------------------------------------------------------- the run
def runs_root() -> Path:
    return Path(os.environ.get("PRISN_FAULTS_DIR") or tempfile.gettempdir()) / "prisn-faults"


def run(cfg: RunConfig) -> Report:
    """One seeded run; returns its report (the caller asserts `report.ok`)."""
    root = runs_root() / f"{cfg.name}-s{cfg.seed}-{os.getpid()}-{int(time.time())}"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    control = root / "faults.json"
    write_control(control, {"seed": cfg.seed, "links": cfg.start_links})
    report = Report(cfg.name, cfg.seed, str(root), expect_violation=cfg.expect_violation)
    print(f"[faults] {cfg.name} seed={cfg.seed} starting; run dir {root}", flush=True)
    started = time.monotonic()
    net: Netns | None = None
    cluster: Cluster | None = None
    rec = Recorder()
    try:
        if cfg.netns:
            net = Netns(cfg.seed, cfg.nodes)
            net.setup()
        cluster = Cluster(cfg, root, control, net)
        if cfg.form is not None:
            cfg.form(cluster)
        else:
            cluster.start()
        _run_workload(cfg, cluster, rec, report)
    except BaseException as e:
        report.violations.append(f"run aborted: {type(e).__name__}: {e}")
        raise
    finally:
        try:
            if cluster is not None:
                codes = cluster.stop_all(graceful=True)
                for nid, code in codes.items():
                    if code not in (0, -signal.SIGKILL) and nid not in _killed(rec):
                        report.violations.append(f"{nid} exited with {code} on SIGTERM: "
                                                 f"{_tail(cluster, nid)}")
                if report.ok:
                    logs, problems = stored_logs(cluster.nodes)
                    report.violations += problems
                    rec.event(kind="stored-logs", nodes={k: {x: v[x] for x in (
                        "commit", "first", "last", "hash") if x in v} for k, v in logs.items()})
        finally:
            if net is not None:
                net.teardown()
            report.seconds = round(time.monotonic() - started, 1)
            report.frames = _frame_stats(control)
            _save(root, rec, report)
            RUNS.append({"line": report.line(), "ok": report.as_expected, "dir": str(root)})
            print(report.line(), flush=True)
            if report.as_expected and not os.environ.get("PRISN_FAULTS_KEEP"):
                shutil.rmtree(root, ignore_errors=True)
            else:
                print(f"[faults] kept history and data dirs in {root} (seed {cfg.seed})",
                      flush=True)
    return report


def _killed(rec: Recorder) -> set[str]:
    return {e["node"] for e in rec.events if e.get("action") in ("SIGKILL", "SIGKILL+wipe")}


def _tail(cluster: Cluster, nid: str) -> str:
    for n in cluster.nodes + cluster.retired:
        if n.node_id == nid:
            return n.tail(10)
    return ""


def _run_workload(cfg: RunConfig, cluster: Cluster, rec: Recorder, report: Report) -> None:
    keys = [f"reg{i}" for i in range(cfg.keys)]
    leader = wait_until(cluster.agreed_leader, 20, "a leader")[0]
    for k in keys:
        r = leader.req("POST", "/api/v1/deployments",
                       {"name": k, "source": "x", "env": {"V": INIT}}, timeout=10)
        if r.status != 201:
            raise AssertionError(f"creating {k}: {r.status} {r.body!r}")
    rec.t0 = time.monotonic()
    stop_clients = threading.Event()
    stop_monitor = threading.Event()
    stop_nemesis = threading.Event()
    monitor = Monitor(cluster, rec, stop_monitor)
    monitor.start()
    nemesis: Nemesis | Script = (Nemesis(cfg, cluster, rec, cfg.duration, stop_nemesis, keys)
                                 if cfg.script is None else
                                 Script(cfg, cluster, rec, stop_nemesis))
    clients = [Client(i, cfg, cluster, rec, keys, stop_clients) for i in range(cfg.clients)]
    for c in clients:
        c.start()
    nemesis.start()
    try:
        stop_nemesis.wait(cfg.duration)
    finally:
        stop_nemesis.set()
        nemesis.join(60)
        stop_clients.set()
        for c in clients:
            c.join(cfg.client_timeout_s + 5)
        nemesis.join_probes(cfg.client_timeout_s + 5)
    v = report.violations
    if nemesis.is_alive():
        v.append("nemesis did not finish healing within 60s")
    elif isinstance(nemesis, Script) and not nemesis.finished:
        v.append(f"the procedure did not finish within {cfg.duration:g}s")
    # ----------------------------------------------------------- once healed
    t_heal = time.monotonic()
    try:
        wait_until(lambda: cluster.agreed_leader() is not None, 15, "a leader after healing")
        nemesis.heal_times.append(time.monotonic() - t_heal)
    except TimeoutError as e:
        v.append(str(e))
    bound = nemesis.leader_bound
    slow = [t for t in nemesis.heal_times if t > bound]
    if slow:
        v.append(f"no agreed leader within three election timeouts ({bound:.2f}s) after "
                 f"{len(slow)} of {len(nemesis.heal_times)} heals: {[round(t, 2) for t in slow]}")
    report.max_leader_after_heal_s = round(max(nemesis.heal_times, default=0.0), 3)
    finals: dict[str, Any] = {}
    try:
        _converge(cfg, cluster)
        finals = _final_reads(cfg, cluster, rec, keys, v)
        _compare_listings(cluster, v)
    except (TimeoutError, OSError, http.client.HTTPException) as e:
        v.append(f"no convergence after healing: {e}")
    stop_monitor.set()
    monitor.join(10)
    monitor.poll_once()
    # ----------------------------------------------------------- checks
    v += [f"anomaly: {a}" for a in rec.anomalies]
    v += check_leaders(rec.samples)
    ops = [lin.Op(o["key"], o["kind"], o["value"], o["invoke"], o["ret"], client=o["client"],
                  node=o["node"], id=o["id"]) for o in rec.ops]
    res = lin.check(ops, init=INIT, budget=cfg.lin_budget)
    report.lin_steps = sum(r.steps for r in res.per_key.values())
    if res.ok is not True:
        v.append("history is not linearizable:\n" + res.summary() if res.ok is False
                 else "linearizability undecided (search budget):\n" + res.summary())
    v += check_final_values(rec.ops, finals)
    report.ops = len(rec.ops)
    report.writes_ok = sum(1 for o in rec.ops if o["kind"] == lin.WRITE and o["outcome"] == "ok")
    report.writes_unknown = sum(1 for o in rec.ops if o["outcome"] == "unknown")
    report.reads = sum(1 for o in rec.ops if o["kind"] == lin.READ)
    report.faults = nemesis.injected
    kinds: dict[str, int] = defaultdict(int)
    for e in rec.events:
        if e.get("kind") in PROCESS_FAULTS + NET_FAULTS + PARTITIONS:
            kinds[e["kind"]] += 1
        elif e.get("kind") == "step":
            kinds[e["name"]] += 1
    report.fault_kinds = dict(kinds)
    report.terms = len({s["term"] for s in rec.samples})
    if report.reads == 0 or report.writes_ok == 0:
        v.append(f"workload made no progress ({report.writes_ok} acked writes, "
                 f"{report.reads} reads)")


def _converge(cfg: RunConfig, cluster: Cluster) -> None:
    """Every member up, agreeing on one leader and applied up to that leader's commit."""

    def converged() -> bool:
        got = cluster.agreed_leader()
        if got is None:
            return False
        st = _status(got[0], 1.0)
        if st is None:
            return False
        commit = st["commit_index"]
        for n in cluster.nodes:
            s = _status(n, 1.0)
            if s is None or s.get("leader") != got[0].node_id or s["applied_index"] < commit:
                return False
        return True

    wait_until(converged, cfg.converge_s, "every node converged (leader, applied index)",
               interval=0.1)


def _final_reads(cfg: RunConfig, cluster: Cluster, rec: Recorder, keys: list[str],
                 v: list[str]) -> dict[str, Any]:
    """A strong read of every key on every node, added to the history."""
    finals: dict[str, Any] = {}
    for key in keys:
        for n in cluster.nodes:
            t0 = rec.now()
            r = wait_until(lambda n=n, key=key: _strong_get(n, key), 15,
                           f"strong read of {key} on {n.node_id}", interval=0.1)
            t1 = rec.now()
            value = (r.json().get("env") or {}).get("V") if r.status == 200 else None
            rec.op({"client": -1, "node": n.node_id, "key": key, "kind": lin.READ,
                    "value": value, "invoke": t0, "ret": t1, "end": t1, "status": r.status,
                    "outcome": "ok", "err": "", "final": True})
            if key in finals and finals[key] != value:
                v.append(f"final strong reads of {key} differ: {finals[key]!r} vs {value!r} "
                         f"on {n.node_id}")
            finals.setdefault(key, value)
    return finals


def _strong_get(n: ServerProc, key: str) -> Response | None:
    try:
        r = n.req("GET", f"/api/v1/deployments/{key}", headers=STRONG, timeout=5)
    except (OSError, http.client.HTTPException):
        return None
    return r if r.status != 503 else None


def _compare_listings(cluster: Cluster, v: list[str]) -> None:
    listings = {}
    for n in cluster.nodes:
        r = n.req("GET", "/api/v1/deployments?limit=1000", headers=STRONG, timeout=5)
        if r.status != 200:
            v.append(f"listing on {n.node_id}: {r.status}")
            continue
        listings[n.node_id] = r.json()["items"]
    ref_id = next(iter(listings), None)
    for nid, items in listings.items():
        if items != listings[ref_id]:
            v.append(f"deployment listings differ between {ref_id} and {nid}")


def _frame_stats(control: Path) -> dict:
    total: dict[str, int] = defaultdict(int)
    d = Path(str(control) + ".stats")
    if d.is_dir():
        for f in d.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                for k, val in json.loads(f.read_text()).items():
                    if k != "held":
                        total[k] += int(val)
    return dict(total)


def _save(root: Path, rec: Recorder, report: Report) -> None:
    with contextlib.suppress(OSError):
        with open(root / "history.jsonl", "w") as f:
            for o in rec.ops:
                f.write(json.dumps(o) + "\n")
        with open(root / "samples.jsonl", "w") as f:
            for s in rec.samples:
                f.write(json.dumps(s) + "\n")
        (root / "events.json").write_text(json.dumps(rec.events, indent=1, default=str))
        (root / "report.json").write_text(json.dumps(asdict(report), indent=1, default=str))
