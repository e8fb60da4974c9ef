"""Exactly one execution per scheduled time (issue 15), on a real cluster under a nemesis.

`run_cron_proof` starts three real `prisn server` processes (one per network namespace when
they work here, else on loopback), creates an ``@every 1s`` cron job running a one-line
shell script, and cycles a seeded nemesis through the leader until the job's log has handled
`target` scheduled times:
- ``kill``: SIGKILL the leader, hold it down a moment, restart it with the same command;
- ``pause``: SIGSTOP the leader for longer than the longest election timeout, then SIGCONT
  (it wakes believing it leads, with a stale view and a clock that jumped);
- ``partition``: nft drops both ways between the leader's namespace and the others (netns
  only: skipped, and said so, when namespaces do not work here);
- ``quorum``: SIGKILL the leader and SIGSTOP a follower for 2-5 s: no leader at all for that
  long, so the next leader catches up over several scheduled times at once (the three
  above heal within an election timeout, faster than the 1 s period, and so never make a
  leader fire across a gap);
- ``outage`` (once, at half the target, when `outage_s` is given): the same for
  `outage_s` seconds, past the 60 s starting deadline, so times are recorded ``late``.
Each fault is healed, and every member is back and voting, before the next one.

Then, with strong reads on every node, `check_cron` proves the guarantee on that node's
view: every scheduled time after the deployment's creation and up to its
``cron.handled_through`` has exactly one execution with that ``scheduled_at``, or lies in
exactly one miss record; never both, never neither, never two executions.

Threads: the caller's only (the nemesis runs inline, between progress polls).
"""

from __future__ import annotations

import http.client
import json
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.faults import netns
from tests.faults.harness import Cluster, RunConfig
from tests.helpers import wait_until
from tests.procs import ServerProc

STRONG = {"X-Prisn-Consistency": "strong"}
ELECTION_MS = 300  # the flag; the randomized timeout is up to twice it
HEARTBEAT_MS = 60
NDA = 2.0  # --node-down-after: an execution on a dead or paused node becomes Lost
WAIT = 45.0
KINDS = ("kill", "pause", "partition", "quorum")
NAME = "cronproof"
# the job: one cheap bash process per fire, leaving one empty file per run it really was
SCRIPT = ': > "$MARKS/$PRISN_INSTANCE@$PRISN_NODE@$$"\n'
NET_ERRORS = (OSError, http.client.HTTPException, ValueError)


def epoch(ts: str) -> int:
    """Whole epoch seconds of an RFC 3339 UTC timestamp (floor)."""
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() // 1)


@dataclass
class CronCheck:
    """The verdict on one node's view. `window`: the scheduled times checked (first, last);
    `violations` empty means exactly once held over all of them."""

    node: str
    window: tuple[int, int]
    fires: int = 0
    missed: dict[str, int] = field(default_factory=dict)  # reason -> times
    records: int = 0
    pruned: bool = False
    violations: list[str] = field(default_factory=list)

    @property
    def times(self) -> int:
        return max(0, self.window[1] - self.window[0] + 1)


def check_cron(node: str, since: int, cron: dict[str, Any], scheduled: list[int],
               period: int = 1) -> CronCheck:
    """Exactly once for an ``@every <period>s`` job over ``(since, handled_through]``.

    `cron` is the deployment read's ``cron`` object, `scheduled` the ``scheduled_at`` of
    every execution of the job (read after `cron`, so it may hold newer fires: those past
    ``handled_through`` are not judged). If the miss records were pruned (``missed`` above
    the sum of the kept counts), the window starts at the oldest kept record instead.
    Pure."""
    mark = None if cron["handled_through"] is None else epoch(cron["handled_through"])
    first = (since // period + 1) * period
    out = CronCheck(node, (first, first - period if mark is None else mark))
    v = out.violations
    ranges = [(epoch(m["first"]), epoch(m["last"]), m["count"], m["reason"])
              for m in cron["misses"]]
    out.records = len(ranges)
    out.pruned = cron["missed"] != sum(r[2] for r in ranges)
    if out.pruned:
        if not ranges or cron["missed"] < sum(r[2] for r in ranges):
            v.append(f"missed total {cron['missed']} does not match the kept records "
                     f"({len(ranges)}, {sum(r[2] for r in ranges)} times)")
            return out
        first = ranges[0][0]
        out.window = (first, out.window[1])
    counts = Counter(scheduled)
    for t, n in sorted(counts.items()):
        if n > 1:
            v.append(f"{n} executions for scheduled time {t}")
        if t % period:
            v.append(f"execution for {t}, not a scheduled time")
        if t < (since // period + 1) * period:
            v.append(f"execution for {t}, at or before the creation {since}")
    covered: dict[int, int] = {}
    prev_last = None
    for f, la, n, reason in ranges:
        if f > la or n != (la - f) // period + 1 or f % period or la % period:
            v.append(f"miss record {f}..{la} count {n} is not a run of scheduled times")
        if prev_last is not None and f <= prev_last:
            v.append(f"miss record {f}..{la} overlaps or precedes the one ending {prev_last}")
        if mark is None or la > mark or f < (since // period + 1) * period:
            v.append(f"miss record {f}..{la} outside (creation {since}, mark {mark}]")
        prev_last = la
        out.missed[reason] = out.missed.get(reason, 0) + n
        for t in range(f, la + 1, period):
            covered[t] = covered.get(t, 0) + 1
    lo, hi = out.window
    for t in range(lo, hi + 1, period):
        fired, missed = counts.get(t, 0), covered.get(t, 0)
        if fired + missed != 1:
            v.append(f"scheduled time {t}: {fired} execution(s), in {missed} miss record(s)")
        out.fires += fired == 1 and not missed
    return out


def check_runs(executions: list[dict[str, Any]], runs: list[str]) -> list[str]:
    """The processes behind the records (no retries asked): each execution ran at most once
    (one ``x.<id>.<attempt>@<node>@<pid>`` mark file), on the node it names; a Completed one
    exactly once; no process ran for an execution the log does not hold. `runs` is read
    once no execution is unfinished. Pure."""
    v: list[str] = []
    by_id = {e["id"]: e for e in executions}
    seen: dict[str, list[tuple[str, str]]] = {}
    for name in runs:
        iid, _, rest = name.partition("@")
        node = rest.partition("@")[0]
        parts = iid.split(".")
        if len(parts) != 3 or parts[0] != "x":
            v.append(f"run mark {name!r} is not an execution's")
            continue
        seen.setdefault(parts[1], []).append((parts[2], node))
    for exec_id, ran in sorted(seen.items()):
        e = by_id.get(exec_id)
        if e is None:
            v.append(f"a process ran for {exec_id}, which the log does not hold")
        elif len(ran) > 1:
            v.append(f"execution {exec_id} ({e['scheduled_at']}) ran {len(ran)} times: {ran}")
        elif ran[0] != (str(e["attempt"]), e["node"]):
            v.append(f"execution {exec_id} ran as {ran[0]}, the log says attempt "
                     f"{e['attempt']} on {e['node']}")
    for e in executions:
        if e["status"] == "Completed" and e["id"] not in seen:
            v.append(f"execution {e['id']} is Completed but no process of it ran")
    return v


# ---------------------------------------------------------------------------------- the run
class CronCluster(Cluster):
    """The fault suite's cluster with the workload flags the cron job needs."""

    @property
    def extra(self) -> list[str]:
        return [*super().extra, "--node-down-after", f"{NDA:g}s", "--stop-grace", "1s"]


@dataclass
class ProofReport:
    seed: int
    netns: bool
    skipped: list[str]
    events: Counter
    checks: list[CronCheck]
    statuses: Counter
    runs: int
    run_violations: list[str]
    seconds: float
    log: list[str]

    def line(self) -> str:
        c = self.checks[0]
        return (f"cron exactly-once seed={self.seed} {'netns' if self.netns else 'loopback'}:"
                f" {c.times} scheduled times {c.window[0]}..{c.window[1]}, {c.fires} fired, "
                f"missed {dict(sorted(c.missed.items()))} in {c.records} record(s)"
                f"{' (pruned)' if c.pruned else ''}; executions {dict(self.statuses)}, "
                f"{self.runs} processes; "
                f"nemesis {dict(self.events)}"
                + (f"; skipped: {'; '.join(self.skipped)}" if self.skipped else "")
                + f"; {self.seconds:.0f}s")


def _get(node: ServerProc, path: str, strong: bool = False, timeout: float = 5.0) -> Any:
    r = node.req("GET", path, headers=STRONG if strong else None, timeout=timeout)
    if r.status != 200:
        raise AssertionError(f"GET {path} on {node.node_id}: {r.status} {r.body[:300]!r}")
    return r.json()


def _handled(cluster: Cluster) -> int | None:
    """The job's mark as some live node has applied it (a local read; progress only)."""
    for n in cluster.live():
        try:
            m = _get(n, f"/api/v1/deployments/{NAME}", timeout=2)["cron"]["handled_through"]
        except (*NET_ERRORS, AssertionError, KeyError):
            continue
        return None if m is None else epoch(m)
    return None


def _leader(cluster: Cluster, timeout: float = WAIT) -> ServerProc:
    return wait_until(cluster.agreed_leader, timeout, "an agreed leader")[0]


def _settle(cluster: Cluster) -> None:
    wait_until(lambda: all(n.ready() for n in cluster.nodes) and cluster.all_voters(), WAIT,
               "every member ready and voting", interval=0.05)


def _fault(kind: str, cluster: Cluster, net: netns.Netns | None, rng: random.Random,
           log: list[str], t0: float, outage_s: float | None = None) -> None:
    """Inject one `kind` fault on the current leader and heal it (every member back)."""
    leader = _leader(cluster)
    at = f"{time.monotonic() - t0:6.1f}s"
    if kind == "kill":
        leader.kill(signal.SIGKILL)
        leader.wait_exit(15)
        cluster.expected_down.add(leader.node_id)
        _leader(cluster)  # the others elect one before it comes back
        hold = rng.uniform(0.5, 2.0)
        time.sleep(hold)  # the fault's length (the schedule), not a wait for a condition
        leader.restart()
        cluster.expected_down.discard(leader.node_id)
        leader.wait_ready(WAIT)
    elif kind == "pause":
        cluster.paused.add(leader.node_id)
        leader.kill(signal.SIGSTOP)
        # longer than the longest randomized election timeout (2 x the flag), so it is deposed
        hold = rng.uniform(4 * ELECTION_MS / 1000 + 0.3, 4 * ELECTION_MS / 1000 + 2.0)
        time.sleep(hold)  # the fault's length, not a wait for a condition
        leader.kill(signal.SIGCONT)
        cluster.paused.discard(leader.node_id)
    elif kind in ("quorum", "outage"):
        follower = rng.choice([n for n in cluster.nodes if n is not leader])
        leader.kill(signal.SIGKILL)
        leader.wait_exit(15)
        cluster.expected_down.add(leader.node_id)
        cluster.paused.add(follower.node_id)
        follower.kill(signal.SIGSTOP)
        hold = rng.uniform(2.0, 5.0) if outage_s is None else outage_s
        time.sleep(hold)  # the fault's length, not a wait for a condition
        follower.kill(signal.SIGCONT)
        cluster.paused.discard(follower.node_id)
        leader.restart()
        cluster.expected_down.discard(leader.node_id)
        leader.wait_ready(WAIT)
        hold_note = f"+{follower.node_id} stopped"
        log.append(f"{at} {kind} {leader.node_id} killed {hold_note} {hold:.1f}s")
        _settle(cluster)
        return
    elif kind == "partition":
        assert net is not None
        me = cluster.slot_of[leader.node_id]
        others = {cluster.slot_of[n.node_id]: 100 for n in cluster.nodes if n is not leader}
        net.apply({me: {"in": others, "out": others}})
        hold = rng.uniform(2.0, 4.0)
        try:
            time.sleep(hold)  # the fault's length, not a wait for a condition
        finally:
            net.heal()
    else:
        raise ValueError(kind)
    log.append(f"{at} {kind} {leader.node_id} {hold:.1f}s")
    _settle(cluster)


def run_cron_proof(tmp: Path, seed: int, target: int, cap_s: float,
                   kinds: tuple[str, ...] = KINDS,
                   outage_s: float | None = None) -> ProofReport:
    """See the module doc: `target` scheduled times handled under the nemesis (at most
    `cap_s` seconds of it; with `outage_s`, one leaderless stretch that long at half the
    target), then the strong-read checks on every node."""
    started = time.monotonic()
    rng = random.Random(f"{seed}:cron-nemesis")
    why_not = netns.available()
    if why_not is None:
        netns.sweep_stale()
    use_ns = why_not is None
    skipped: list[str] = []
    if "partition" in kinds and not use_ns:
        kinds = tuple(k for k in kinds if k != "partition")
        skipped.append(f"partition nemesis skipped: network namespaces unavailable "
                       f"({why_not})")
    net = netns.Netns(seed, 3) if use_ns else None
    cfg = RunConfig("cron-exactly-once", seed, faults=(), netns=use_ns,
                    election_ms=ELECTION_MS, heartbeat_ms=HEARTBEAT_MS, write_timeout_s=2.0)
    control = tmp / "faults.json"
    control.write_text(json.dumps({"links": []}))
    script = tmp / "scripts" / "tick.sh"
    script.parent.mkdir()
    script.write_text(SCRIPT)
    marks = tmp / "runs"
    marks.mkdir()
    cluster = CronCluster(cfg, tmp, control, net)
    events: Counter = Counter()
    log: list[str] = []
    try:
        if net is not None:
            net.setup()
        cluster.start()
        r = _leader(cluster).req("POST", "/api/v1/deployments", {
            "name": NAME, "type": "cronjob", "source": str(script),
            "schedule": "@every 1s", "env": {"MARKS": str(marks)}}, timeout=15)
        assert r.status == 201, r.body
        dep = r.json()
        since = epoch(dep["created_at"])
        first = wait_until(lambda: _handled(cluster), WAIT, "the first fire")
        t0 = time.monotonic()
        order: list[str] = []
        while (mark := _handled(cluster) or first) - since < target:
            if time.monotonic() - t0 > cap_s:
                raise AssertionError(f"only {mark - since} of {target} scheduled times "
                                     f"handled in {cap_s:g}s of nemesis")
            if outage_s is not None and not events["outage"] and mark - since >= target // 2:
                _fault("outage", cluster, net, rng, log, t0, outage_s)
                events["outage"] += 1
                continue
            if not order:
                order = list(kinds)
                rng.shuffle(order)
            kind = order.pop()
            _fault(kind, cluster, net, rng, log, t0)
            events[kind] += 1
            time.sleep(rng.uniform(1.0, 3.0))  # the gap between faults (the schedule)
        # quiet now: every node applies past the nemesis's end before the final reads
        end = int(time.time()) + 2
        for n in cluster.nodes:
            wait_until(lambda n=n: (m := _get(n, f"/api/v1/deployments/{NAME}", True)[
                "cron"]["handled_through"]) and epoch(m) >= end, WAIT,
                f"{n.node_id} handled the times past the nemesis", interval=0.1)
        # paused (replicas 0: no more fires), and every execution finished, the records and
        # the processes' marks can be compared
        r = _leader(cluster).req("POST", f"/api/v1/deployments/{NAME}/scale",
                                 {"replicas": 0}, timeout=15)
        assert r.status == 200, r.body
        path = f"/api/v1/executions?deployment_id={dep['id']}&limit=1000"
        wait_until(lambda: all(e["status"] not in ("Pending", "Running")
                               for e in _get(cluster.nodes[0], path, strong=True)["items"]),
                   WAIT, "every execution finished", interval=0.2, ignore=NET_ERRORS)
        runs = sorted(p.name for p in marks.iterdir())
        checks, statuses = [], Counter()
        run_violations: list[str] = []
        for n in cluster.nodes:
            d = _get(n, f"/api/v1/deployments/{NAME}", strong=True)
            page = _get(n, path, strong=True)
            assert page["total"] == page["count"], "more executions than one page"
            items = page["items"]
            checks.append(check_cron(n.node_id, since, d["cron"],
                                     [epoch(e["scheduled_at"]) for e in items]))
            if not statuses:
                statuses = Counter(e["status"] for e in items)
                run_violations = check_runs(items, runs)
        r = _leader(cluster).req("DELETE", f"/api/v1/deployments/{NAME}", timeout=15)
        assert r.status == 204, r.body
    finally:
        cluster.stop_all(graceful=False)
        if net is not None:
            net.teardown()
    return ProofReport(seed, use_ns, skipped, events, checks, statuses, len(runs),
                       run_violations, time.monotonic() - started, log)
