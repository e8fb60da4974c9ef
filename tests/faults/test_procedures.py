"""Every documented operator procedure, run as a test (issue 12, "Proof").

Each test is one run of the fault harness (tests/faults/harness.py): a 3-node cluster, a steady
load of two clients (writes and strong reads on any node, a linearizability-checked history)
and a monitor sampling every node; instead of the nemesis, a script (`Operator`, in the
harness's script thread) performs the procedures of docs/operations.md,
docs/troubleshooting.md and deploy/*/README.md step by step, with the commands and flags the
docs write: `prisn --server ... cluster status|health|remove|election` (the real CLI, as a
subprocess), `curl`-equivalent HTTP calls where the docs use curl, SIGTERM for "stop",
SIGKILL for power loss, and the documented `prisn server` command lines and env file.

The run's post-run checks then apply (tests/faults/README.md): the history is linearizable, no
acknowledged write is lost, at most one leader per term, the committed logs and state hashes
agree, no node exited on its own, every node exits 0 on SIGTERM. On top of that every step
checks what the doc promises (exit codes of the CLI and of each stopped node, member states,
the cluster id) and ends only once writes were acknowledged after it (`MIN_ACKED`); while a
node is down, writes must be acknowledged too. The test asserts that every step ran.

Seeds: PRISN_FAULT_SEED=<n> replaces each test's seed (the clients' choices).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.faults import linearizability as lin
from tests.faults.harness import (
    FAULT_ENV,
    Cluster,
    Recorder,
    RunConfig,
    _status,
    run,
    wait_until,
)
from tests.procs import ServerProc, free_port

REPO = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = REPO / "deploy" / "systemd" / "prisn.env.example"
MIN_ACKED = 3  # writes that must be acknowledged after each step (and while a node is down)
STEP_S = 30.0  # the longest any wait inside a step may take
CLI_TIMEOUT = 60


def _seed(default: int) -> int:
    return int(os.environ.get("PRISN_FAULT_SEED") or default)


@dataclasses.dataclass
class Step:
    name: str
    t0: float
    t1: float = 0.0
    acked: int = 0  # writes invoked and acknowledged within [t0, t1]


def acked(rec: Recorder, since: float, until: float = float("inf")) -> int:
    """Writes invoked at or after `since` and acknowledged by `until` (run-relative seconds)."""
    return sum(1 for o in list(rec.ops) if o["kind"] == lin.WRITE and o["outcome"] == "ok"
               and o["invoke"] >= since and o["ret"] <= until)


class Operator:
    """Performs the documented procedures on the run's cluster (runs in the script thread).

    Every wait polls a condition with a deadline and fails at once when a member (or a node in
    `watch`) exits by itself."""

    def __init__(self, cluster: Cluster, rec: Recorder) -> None:
        self.c = cluster
        self.rec = rec
        self.steps: list[Step] = []
        self.watch: list[ServerProc] = []  # running nodes that are not members right now
        # ids this operator stopped (the monitor adds a dead node to expected_down too)
        self.down: set[str] = set()
        self.cluster_ids_seen: set[str] = set()

    # ------------------------------------------------------------------ steps and waits
    @contextlib.contextmanager
    def step(self, name: str, writes: bool = True) -> Iterator[Step]:
        """One procedure step; with `writes`, it ends once MIN_ACKED writes invoked after its
        body were acknowledged (the cluster takes writes again)."""
        st = Step(name, self.rec.now())
        self.rec.event(kind="step", name=name)
        yield st
        if writes:
            self.writes_acked(f"writes after step {name}")
        st.t1 = self.rec.now()
        st.acked = acked(self.rec, st.t0, st.t1)
        self.rec.event(kind="step-done", name=name, acked=st.acked)
        self.steps.append(st)

    def check_alive(self) -> None:
        for n in [*self.c.nodes, *self.watch]:
            if n.proc is not None and not n.alive() and n.node_id not in self.down:
                raise AssertionError(f"{n.node_id} exited by itself (rc {n.proc.returncode}): "
                                     f"{n.tail(20)}")

    def wait(self, cond: Callable[[], Any], what: str, timeout: float = STEP_S) -> Any:
        def polled() -> Any:
            self.check_alive()
            return cond()
        return wait_until(polled, timeout, what, interval=0.05)

    def writes_acked(self, what: str, n: int = MIN_ACKED) -> None:
        since = self.rec.now()
        self.wait(lambda: acked(self.rec, since) >= n, f"{n} acknowledged writes ({what})")

    def hold(self, seconds: float) -> None:
        """Keep the load running for `seconds` (an observation window, not a wait for a
        condition), failing at once if a node exits."""
        end = self.rec.now() + seconds
        self.wait(lambda: self.rec.now() >= end, f"{seconds:g}s of load", seconds + 5)

    # ------------------------------------------------------------------ the operator's tools
    def cli(self, node: ServerProc, *args: str, expect: int | None = 0
            ) -> subprocess.CompletedProcess:
        """`prisn --server <node> ARGS` as a subprocess; asserts exit code `expect`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRISN_")}
        p = subprocess.run([sys.executable, "-m", "prisn.cli", "--server",
                            f"127.0.0.1:{node.http_port}", *args], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=CLI_TIMEOUT)
        self.rec.event(kind="cli", node=node.node_id, args=list(args), rc=p.returncode,
                       out=p.stdout[-400:], err=p.stderr[-400:])
        if expect is not None:
            assert p.returncode == expect, (f"`prisn {' '.join(args)}` on {node.node_id} "
                                            f"exited {p.returncode} (expected {expect}): "
                                            f"{p.stdout}{p.stderr}")
        return p

    def status(self, node: ServerProc) -> dict:
        """`prisn -o json cluster status` on `node`."""
        return json.loads(self.cli(node, "-o", "json", "cluster", "status").stdout)

    def health(self, node: ServerProc) -> None:
        """`prisn cluster health` on `node` exits 0 (polled: a busy machine may cost an
        election right after a restart)."""
        self.wait(lambda: self.cli(node, "cluster", "health", expect=None).returncode == 0,
                  f"`prisn cluster health` exit 0 on {node.node_id}")

    def stop(self, node: ServerProc) -> None:
        """SIGTERM (`systemctl stop prisn`); the node must exit 0."""
        self.down.add(node.node_id)
        self.c.expected_down.add(node.node_id)
        node.kill(signal.SIGTERM)
        rc = node.wait_exit(30)
        self.rec.event(kind="stop", node=node.node_id, rc=rc)
        assert rc == 0, f"{node.node_id} exited {rc} on SIGTERM: {node.tail(20)}"

    def power_off(self, nodes: list[ServerProc], action: str = "power-loss") -> None:
        """SIGKILL all of `nodes` at once (their final exit codes are still checked)."""
        for n in nodes:
            self.down.add(n.node_id)
            self.c.expected_down.add(n.node_id)
        for n in nodes:
            n.kill(signal.SIGKILL)
        for n in nodes:
            n.wait_exit(10)
            self.rec.event(kind="kill", node=n.node_id, action=action)

    def start(self, node: ServerProc) -> None:
        node.start()
        self.down.discard(node.node_id)
        self.c.expected_down.discard(node.node_id)
        self.rec.event(kind="start", node=node.node_id, args=node.args[1:])

    def wait_ready(self, node: ServerProc) -> None:
        """`until curl -sf http://<node>/ready; do sleep 1; done`."""
        self.wait(node.ready, f"{node.node_id} /ready 200")

    def leader(self) -> ServerProc:
        return self.wait(self.c.agreed_leader, "an agreed leader")[0]

    def leads(self, node: ServerProc) -> bool:
        got = self.c.agreed_leader()
        return got is not None and got[0] is node

    def members(self, node: ServerProc) -> dict[str, dict]:
        st = _status(node, 2.0)
        return {} if st is None else {x["id"]: x for x in st["nodes"]}

    def cluster_ids(self) -> set[str]:
        ids = {self.wait(lambda n=n: _status(n, 2.0), f"status of {n.node_id}")["cluster_id"]
               for n in self.c.nodes}
        self.cluster_ids_seen |= ids
        return ids

    def all_voters(self, what: str) -> None:
        self.wait(self.c.all_voters, what, 40)

    def remove(self, asker: ServerProc, node_id: str,
               rejoiner: ServerProc | None = None) -> None:
        """`prisn cluster remove ID`, handling its answers as operations.md says: 503 is an
        unknown outcome (check `prisn cluster status`, retry if still listed, unless it is a
        wiped voter, `rejoiner`, whose log says it joined again), 409 another change in
        progress (retry)."""
        seen = len(rejoiner.log_path.read_bytes()) if rejoiner is not None else 0
        attempts = [0]

        def rejoined() -> bool:
            return (rejoiner is not None
                    and b"joined cluster" in rejoiner.log_path.read_bytes()[seen:])

        def done() -> bool:
            if attempts[0]:  # the last answer left the outcome unknown
                if rejoined():
                    return True
                listed = node_id in {x["id"] for x in self.status(asker)["nodes"]}
                if not listed or rejoined():
                    return True
            attempts[0] += 1
            p = self.cli(asker, "cluster", "remove", node_id, expect=None)
            if p.returncode == 0:
                return True
            if "HTTP 503" not in p.stderr and "HTTP 409" not in p.stderr:
                raise AssertionError(f"`prisn cluster remove {node_id}` exited "
                                     f"{p.returncode}: {p.stdout}{p.stderr}")
            self.rec.event(kind="remove-retry", node=node_id, err=p.stderr[-300:])
            return False
        self.wait(done, f"removal of {node_id}")

    def withdraw(self, node: ServerProc) -> None:
        """Clients stop using `node` (it is no member now), but it is still watched."""
        self.c.nodes = [n for n in self.c.nodes if n is not node]
        self.watch.append(node)

    def readmit(self, node: ServerProc) -> None:
        self.watch.remove(node)
        self.c.add(node)


def followers(op: Operator) -> list[ServerProc]:
    leader = op.leader()
    return [n for n in op.c.nodes if n is not leader]


def _run(name: str, seed: int, script: Callable[[Operator], None],
         form: Callable[[Cluster], None] | None = None, duration: float = 120.0) -> Operator:
    """One harness run whose load lasts as long as `script` (at most `duration` seconds)."""
    box: list[Operator] = []

    def drive(cluster: Cluster, rec: Recorder) -> None:
        box.append(Operator(cluster, rec))
        script(box[0])

    cfg = RunConfig(name, seed, faults=(), duration=duration, clients=2, keys=2,
                    think_ms=(5, 20), converge_s=20, form=form, script=drive)
    report = run(cfg)
    steps = ", ".join(f"{s.name}: {s.acked} acked" for s in (box[0].steps if box else []))
    print(f"[procedures] {name} seed={seed}: {steps}", flush=True)
    assert report.ok, (f"{name} seed={seed} failed; history, logs and data dirs kept in "
                       f"{report.run_dir}:\n" + "\n".join(report.violations))
    assert box, "the procedure never started"
    return box[0]


# ------------------------------------------------------------------ operations.md: membership
def _membership(op: Operator) -> None:
    c = op.c
    # "Add a node": an empty data dir, a unique --node-id, --peers naming a running member
    with op.step("add-node"):
        first = c.nodes[0]
        new = c.make(3, peers=[c.addr_of(first)])  # --node-id n4 --peers <n1>:<raft port>
        op.start(new)
        c.add(new)
        op.wait_ready(new)
        op.all_voters(f"{new.node_id} promoted to voter on every member")
        st = op.status(c.nodes[1])  # `prisn cluster status`: STATE follower, its ADDRESS
        row = next(x for x in st["nodes"] if x["id"] == new.node_id)
        assert row["state"] == "follower" and row["address"] == c.addr_of(new), row
        op.health(new)

    # "Forced election": `prisn cluster election ID --wait` asked of another node, then the
    # two curl forms (POST on the target itself; {"target": ID} on any node)
    with op.step("election-cli"):
        target = new if not op.leads(new) else followers(op)[0]
        asker = next(n for n in c.nodes if n is not target)
        out = op.cli(asker, "cluster", "election", target.node_id, "--wait").stdout
        assert f"{target.node_id} is now the leader" in out, out
        op.wait(lambda: op.leads(target), f"{target.node_id} the agreed leader")
    with op.step("election-http-self"):
        target = followers(op)[0]
        r = target.req("POST", "/api/v1/cluster/election", timeout=10)
        assert r.status == 202, (r.status, r.body)
        op.wait(lambda: op.leads(target), f"{target.node_id} the agreed leader")
    with op.step("election-http-target"):
        target = followers(op)[-1]
        asker = next(n for n in followers(op) if n is not target)
        r = asker.req("POST", "/api/v1/cluster/election", {"target": target.node_id},
                      timeout=10)
        assert r.status == 202, (r.status, r.body)
        op.wait(lambda: op.leads(target), f"{target.node_id} the agreed leader")

    # "Planned restart and upgrades": one node at a time, SIGTERM (exit 0), writes go on
    # while it is down, the same command again, `until curl /ready`, `prisn cluster health`
    # the leader last, as an operator would; on SIGTERM it hands leadership over first
    leader = op.leader()
    for n in [*followers(op), leader]:
        with op.step(f"rolling-restart-{n.node_id}"):
            was_leader = op.leads(n)
            seen = len(n.log_path.read_bytes())
            op.stop(n)
            if was_leader:
                said = n.log_path.read_bytes()[seen:].decode(errors="replace")
                assert "leadership handed over to" in said, said[-2000:]
            op.writes_acked(f"while {n.node_id} is down")
            op.start(n)
            op.wait_ready(n)
            op.health(n)


def test_add_election_rolling_restart():
    """operations.md on a running 3-node cluster: add a node, three forced elections (CLI
    and both curl forms), a rolling restart of all four. (Removal: the next test.)"""
    op = _run("proc-membership", _seed(12_001), _membership)
    names = [s.name for s in op.steps]
    assert names[:4] == ["add-node", "election-cli", "election-http-self",
                         "election-http-target"], names
    assert sorted(names[4:]) == [f"rolling-restart-n{i}" for i in range(1, 5)], names


# ------------------------------------------------------------------ replace a node's disk
REJOIN_WATCH_S = 12.0  # issue 12 item 1: the leader crashed ~10 s after the wiped node started


def _not_listed(op: Operator, node_id: str) -> bool:
    """No member lists `node_id` any more, in any state."""
    return all(node_id not in op.members(n) for n in op.c.nodes)


def _remove_and_replace_disk(op: Operator) -> None:
    c, rec = op.c, op.rec
    # operations.md "Remove a node": the leader itself (it hands over first), asked of a
    # follower; then stop the removed node's process. It is no longer a member.
    with op.step("remove-leader"):
        # a leader started with --peers, as every node of the static form is (the Quick
        # Start's first node has none, so it never asks to join)
        old = op.leader()
        if "--peers" not in old.args:
            old = next(n for n in followers(op) if "--peers" in n.args)
            op.cli(c.nodes[0], "cluster", "election", old.node_id, "--wait")
            op.wait(lambda: op.leads(old), f"{old.node_id} the agreed leader")
        op.remove(followers(op)[0], old.node_id)
        op.withdraw(old)
        op.all_voters(f"the two others without {old.node_id}")
        op.wait(lambda: _not_listed(op, old.node_id), f"{old.node_id} listed by no member")
        # troubleshooting.md "A removed node still runs": removal does not stop it, and it
        # must stay out while it runs (a join is retried every election timeout)
        op.hold(1.0)
        assert _not_listed(op, old.node_id), {n.node_id: op.members(n) for n in c.nodes}
        op.stop(old)
        op.watch.remove(old)
        c.retired.append(old)
        assert _not_listed(op, old.node_id), {n.node_id: op.members(n) for n in c.nodes}
        op.health(c.nodes[0])
    # "Replace a node's disk": remove it (done), wipe its data dir, start it again as in "Add
    # a node" (same --node-id, --peers naming a running member)
    with op.step("replace-disk"):
        shutil.rmtree(old.data_dir)
        fresh = c.make(c.slot_of[old.node_id], node_id=old.node_id,
                       peers=[c.addr_of(c.nodes[0])])
        op.start(fresh)
        t_rejoin = rec.now()
        c.add(fresh)
        op.wait_ready(fresh)
        op.all_voters(f"{fresh.node_id} a voter again")
        assert len(op.cluster_ids()) == 1
        op.health(fresh)
    # the other order the doc describes: a voter started with an empty data dir *before* it
    # was removed is refused by the leader (both logs) and joins by itself once removed. Its
    # usual command must name a member to ask (--peers): the Quick Start's first node, started
    # with --bootstrap alone, founds a new cluster on an empty data dir (operations.md says
    # so), so it is not the one wiped here, leader or not (a stopped leader hands over first)
    with op.step("replace-disk-before-removal"):
        old = next(n for n in c.nodes if n is not fresh and "--peers" in n.args)
        op.stop(old)
        op.withdraw(old)
        shutil.rmtree(old.data_dir)
        op.start(old)  # its usual command, same --node-id
        op.wait(lambda: "is a voter of cluster" in old.log_path.read_text(errors="replace"),
                f"{old.node_id} refused as a wiped voter (its log)")
        op.wait(lambda: any(f"refused the join of {old.node_id!r}" in
                            n.log_path.read_text(errors="replace") for n in c.nodes),
                f"the leader's log refusing {old.node_id}")
        assert not old.ready()
        op.remove(op.leader(), old.node_id, rejoiner=old)
        op.wait_ready(old)
        t_rejoin = rec.now()
        op.readmit(old)
        op.all_voters(f"{old.node_id} a voter again")
        assert len(op.cluster_ids()) == 1
        op.health(old)
    with op.step("load-after-rejoin"):
        op.hold(max(0.0, t_rejoin + REJOIN_WATCH_S - rec.now()))


def test_remove_and_replace_disk():
    """operations.md/troubleshooting.md: the leader removed and stopped; its disk replaced
    (wiped, started again under the same --node-id); another node wiped first (refused until
    removed, then joins by itself)."""
    op = _run("proc-remove-replace-disk", _seed(12_002), _remove_and_replace_disk)
    assert [s.name for s in op.steps] == ["remove-leader", "replace-disk",
                                          "replace-disk-before-removal", "load-after-rejoin"]


# ------------------------------------------------------------------ static --peers start
def _form_static(cluster: Cluster) -> None:
    """clustering.md/troubleshooting.md "Static member list": the same --peers list on every
    node, itself included, every node started (the lowest address last)."""
    peers = [cluster.raft_addr(s) for s in range(3)]
    cluster.nodes = [cluster.make(s, peers=peers) for s in range(3)]
    for n in sorted(cluster.nodes, key=cluster.addr_of, reverse=True):
        n.start()
    for n in cluster.nodes:
        n.wait_ready(40)
    wait_until(cluster.all_voters, 40, "every node a voter")


def _static_then_power_loss(op: Operator, backup: Path) -> None:
    c = op.c
    with op.step("static-peers-start"):
        ids = op.cluster_ids()
        assert len(ids) == 1, ids
        op.health(c.nodes[0])
    # operations.md "Backup and restore": stop one follower (the others keep serving), copy
    # its whole data dir (`tar -C /var/lib -czf prisn-$(date +%F).tgz prisn`), start it again
    with op.step("backup"):
        n = followers(op)[0]
        op.stop(n)
        op.rec.event(kind="backup", node=n.node_id, args=n.args)
        subprocess.run(["tar", "-C", str(n.data_dir.parent), "-czf", str(backup),
                        n.data_dir.name], check=True, timeout=60)
        op.writes_acked(f"while {n.node_id} is stopped for the backup")
        op.start(n)
        op.wait_ready(n)
    # operations.md "Restarting after every node stopped" (power loss): start them again
    # with their usual commands; nothing acknowledged is lost (the history checks)
    with op.step("restart-after-power-loss"):
        op.power_off(list(c.nodes))
        for n in sorted(c.nodes, key=c.addr_of, reverse=True):
            op.start(n)
        for n in c.nodes:
            op.wait_ready(n)
        op.all_voters("every node a voter after the restart")
        assert op.cluster_ids() == ids, "the restart founded another cluster"
        op.health(c.nodes[-1])


def _restore(tmp: Path, backup: Path, op: Operator) -> None:
    """operations.md "Restore", after the run (the cluster is gone; a restore loses what was
    written after the copy, so it is outside the checked history): the copy unpacked as the
    data dir of a node with the same --node-id, started with --force-new-cluster, serves the
    state as of the copy in a new cluster; then without the flag, another node added back."""
    from tests.procs import cluster_node

    ev = next(e for e in op.rec.events if e.get("kind") == "backup")
    nid, t_copy = ev["node"], ev["t"]
    old_cid = next(iter(op.cluster_ids_seen))
    timing = ev["args"][ev["args"].index("--heartbeat-interval"):][:6]
    node = cluster_node(tmp, nid, extra=[*timing, "--force-new-cluster"])
    node.data_dir.parent.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(node.data_dir.parent), "-xzf", str(backup)], check=True,
                   timeout=60)
    joiner = None
    try:
        node.start().wait_ready(40)
        st = node.status()
        assert st["leader"] == nid and st["cluster_id"] != old_cid, st
        written = {o["value"]: o["invoke"] for o in op.rec.ops if o["kind"] == lin.WRITE}
        for key in ("reg0", "reg1"):
            r = node.req("GET", f"/api/v1/deployments/{key}", headers={
                "X-Prisn-Consistency": "strong"})
            assert r.status == 200, (key, r.status, r.body)
            v = r.json()["env"]["V"]
            assert v == "init" or written.get(v, float("inf")) < t_copy, (key, v, t_copy)
        r = node.req("PUT", "/api/v1/deployments/reg0", {"source": "x", "env": {"V": "rst"}})
        assert r.status == 200, (r.status, r.body)
        # 3. remove --force-new-cluster, add the others back (one here) with wiped data dirs
        assert node.stop() == 0
        node.args.remove("--force-new-cluster")
        node.start().wait_ready(40)
        joiner = cluster_node(tmp, "back", peers=[node.raft_addr], extra=timing).start()
        joiner.wait_ready(40)
        wait_until(lambda: {x["id"]: x["state"] for x in node.status()["nodes"]} == {
            nid: "leader", "back": "follower"}, 40, "the other node added back")
        assert joiner.status()["cluster_id"] == st["cluster_id"]
    finally:
        for n in (joiner, node):
            if n is not None:
                assert n.stop() == 0, n.tail(20)


def test_static_peers_start_backup_and_restart_after_power_loss(tmp_path):
    """The static --peers form (same list everywhere); a backup of a stopped follower; every
    node killed at once and started again with the same command; then the backup restored."""
    backup = tmp_path / "prisn-backup.tgz"
    op = _run("proc-static-peers", _seed(12_003), lambda op: _static_then_power_loss(op, backup),
              form=_form_static)
    assert [s.name for s in op.steps] == ["static-peers-start", "backup",
                                          "restart-after-power-loss"]
    _restore(tmp_path / "restore", backup, op)


# ------------------------------------------------------------------ deploy/systemd env file
def env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """The KEY=value lines of an EnvironmentFile (comments and blanks skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


BOOTSTRAP_NODE = 1  # deploy/systemd/README.md: PRISN_BOOTSTRAP is ignored (with a warning)


def _form_env_file(cluster: Cluster) -> None:
    """deploy/systemd/README.md "Forming a new cluster": prisn.env.example on every node,
    changed only where it differs per node (id, advertise address; on one host also the
    listen addresses and data dir), the same PRISN_PEERS everywhere; `prisn server` run with
    those variables only (what the unit's ExecStart does)."""
    base = env_file()
    assert base["PRISN_CLUSTER"] == "true" and base["PRISN_BOOTSTRAP"] == "false", base
    assert len(base["PRISN_PEERS"].split(",")) == 3, base["PRISN_PEERS"]
    cfg = cluster.cfg
    addrs = [cluster.raft_addr(s) for s in range(3)]
    nodes = []
    for s, addr in enumerate(addrs):
        nid = f"n{s + 1}"
        hp = free_port()
        env = {**base, "PRISN_NODE_ID": nid, "PRISN_ADVERTISE_ADDR": addr,
               "PRISN_PEERS": ",".join(addrs), "PRISN_RAFT_ADDR": addr,
               "PRISN_BIND": f"127.0.0.1:{hp}",
               "PRISN_DATA_DIR": str(cluster.root / nid / "data"),
               "PRISN_HEARTBEAT_INTERVAL": f"{cfg.heartbeat_ms}ms",
               "PRISN_ELECTION_TIMEOUT": f"{cfg.election_ms}ms",
               "PRISN_WRITE_TIMEOUT": f"{cfg.write_timeout_s:g}s",
               FAULT_ENV: str(cluster.control)}
        if s == BOOTSTRAP_NODE:
            env["PRISN_BOOTSTRAP"] = "true"
        n = ServerProc(nid, cluster.root / nid / "data", hp, int(addr.rpartition(":")[2]),
                       ["server"], env)
        cluster.slot_of[nid] = s
        nodes.append(n)
    cluster.nodes = nodes
    for n in reversed(nodes):
        n.start()
    for n in nodes:
        n.wait_ready(40)
    wait_until(cluster.all_voters, 40, "every node a voter")


def _env_file_then_full_stop(op: Operator) -> None:
    c = op.c
    with op.step("env-file-start"):
        ids = op.cluster_ids()
        assert len(ids) == 1, ids
        log = c.nodes[BOOTSTRAP_NODE].log_path.read_text(errors="replace")
        assert "--bootstrap ignored" in log, log[-2000:]
        op.health(c.nodes[0])
    # every node stopped (`systemctl stop prisn` everywhere: SIGTERM, exit 0), then started
    with op.step("restart-after-every-node-stopped"):
        for n in c.nodes:
            op.down.add(n.node_id)
            c.expected_down.add(n.node_id)
            n.kill(signal.SIGTERM)
        for n in c.nodes:
            rc = n.wait_exit(30)
            assert rc == 0, f"{n.node_id} exited {rc} on SIGTERM: {n.tail(20)}"
        for n in c.nodes:
            op.start(n)
        for n in c.nodes:
            op.wait_ready(n)
        op.all_voters("every node a voter after the restart")
        assert op.cluster_ids() == ids, "the restart founded another cluster"
        op.health(c.nodes[-1])


def test_systemd_env_file_procedure():
    """deploy/systemd: the same PRISN_PEERS on every node (PRISN_BOOTSTRAP=true on one, which
    must be ignored), then every node stopped and started again."""
    op = _run("proc-env-file", _seed(12_004), _env_file_then_full_stop, form=_form_env_file)
    assert [s.name for s in op.steps] == ["env-file-start", "restart-after-every-node-stopped"]


# ------------------------------------------------------------------ loss of a majority
def _majority_loss(op: Operator) -> None:
    c, rec = op.c, op.rec
    # Two of three disks gone. The survivor is the leader at that moment: it holds every
    # committed entry, so the procedure must keep every acknowledged write (the history
    # checks). (A follower survivor may lack some: operations.md says so.)
    op.writes_acked("before the loss", n=30)
    with op.step("lose-majority", writes=False):
        survivor = op.leader()
        lost = [n for n in c.nodes if n is not survivor]
        for n in lost:
            op.withdraw(n)
        op.power_off(lost, action="SIGKILL, disk lost")
        for n in lost:
            op.watch.remove(n)
            shutil.rmtree(n.data_dir)
        t_dead = rec.now()
        pre_commit = op.wait(lambda: _status(survivor, 2.0), "the survivor's status")[
            "commit_index"]
        op.wait(lambda: (_status(survivor, 2.0) or {}).get("leader") in (None, ""),
                "the survivor no longer leads (no quorum)")
    # 1. stop every surviving node
    with op.step("recover-1-stop", writes=False):
        op.stop(survivor)
    # 2. start it briefly with its usual command; commit_index answers without a leader
    with op.step("recover-2-pick", writes=False):
        op.start(survivor)
        st = op.wait(lambda: _status(survivor, 2.0), "the survivor's status (no leader)")
        assert not st.get("leader"), st
        # (a restarted node's commit_index may trail what it had learned: it is persisted
        # lazily, so the figure compared here is a lower bound)
        rec.event(kind="commit-index", before_loss=pre_commit, after_restart=st["commit_index"])
        assert st["commit_index"] > 0 and st["cluster_id"], st
        op.stop(survivor)
    # 3. start it with --force-new-cluster added
    with op.step("recover-3-force-new-cluster"):
        t_forced = rec.now()
        old_cid = st["cluster_id"]
        forced = dataclasses.replace(survivor, args=[*survivor.args, "--force-new-cluster"],
                                     proc=None)
        c.replace(survivor, forced)
        op.start(forced)
        op.wait(lambda: "--force-new-cluster: starting a NEW cluster" in
                forced.log_path.read_text(errors="replace"), "the loud warning")
        op.wait(lambda: op.leads(forced), "the forced node leads")
        new_cid = _status(forced, 2.0)["cluster_id"]
        assert new_cid != old_cid
        assert set(op.members(forced)) == {forced.node_id}
        # without a majority, nothing was acknowledged from the loss until now
        late = acked(rec, t_dead, t_forced)
        assert late == 0, f"{late} writes acknowledged without a majority"
    # 4. "Remove --force-new-cluster from its configuration right away". Forgotten, a restart
    # with it on the same data dir is ignored with a warning (it does not found yet another
    # cluster: the data dir remembers that it took effect)...
    with op.step("recover-4-flag-left"):
        op.stop(forced)
        op.start(forced)
        op.wait(lambda: "--force-new-cluster already took effect" in
                forced.log_path.read_text(errors="replace"), "the flag ignored, with a warning")
        op.wait(lambda: op.leads(forced), "the forced node leads again")
        assert _status(forced, 2.0)["cluster_id"] == new_cid
    # ... and without it (the documented step) the node stays in the new cluster
    with op.step("recover-4-drop-flag"):
        op.stop(forced)
        plain = dataclasses.replace(survivor, proc=None)
        c.replace(forced, plain)
        op.start(plain)
        op.wait(lambda: op.leads(plain), "the recovered node leads")
        assert _status(plain, 2.0)["cluster_id"] == new_cid
    # 5. wipe every other node's data dir and add them one by one with --peers <chosen>
    for n in lost:
        with op.step(f"recover-5-add-{n.node_id}"):
            fresh = c.make(c.slot_of[n.node_id], node_id=n.node_id, peers=[c.addr_of(plain)])
            op.start(fresh)
            c.add(fresh)
            op.wait_ready(fresh)
            op.all_voters(f"{fresh.node_id} a voter of the new cluster")
            assert op.cluster_ids() == {new_cid}
    op.health(c.nodes[0])


def test_recovery_from_the_loss_of_a_majority():
    """operations.md "Recovery from the loss of a majority", steps 1-5, under load."""
    op = _run("proc-majority-loss", _seed(12_005), _majority_loss)
    assert [s.name for s in op.steps] == [
        "lose-majority", "recover-1-stop", "recover-2-pick", "recover-3-force-new-cluster",
        "recover-4-flag-left", "recover-4-drop-flag", "recover-5-add-n2", "recover-5-add-n3"]
