"""Prometheus against live nodes (issue 6, item 5 and the live scrape test).

- `promtool check metrics` finds nothing to report on the live /metrics of a leader and of a
  follower (skipped without promtool).
- A real Prometheus server (Debian's `prometheus`; skipped when absent), started here with
  a temporary config (scrape every 1s, job `prisn`, the three nodes' HTTP addresses, the
  shipped deploy/prometheus/alerts.yml as rule file), sees exactly one node with
  `raft_state == 2` among the up targets; after the leader is SIGKILLed it sees exactly one
  again, on another instance.

One three-node cluster for the module; the failover test kills its leader, so it runs last.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.procs import ServerProc, free_port, leader_of, start_cluster, wait_for

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
FAST = ["--write-timeout", "2s", "--election-timeout", "500ms"]  # robust on a busy machine
LEADER_UP = 'raft_state{job="prisn"} == 2 and on(instance) up{job="prisn"} == 1'


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    nodes = start_cluster(tmp_path_factory.mktemp("prom-cluster"), FAST)
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def instance(n: ServerProc) -> str:
    return f"127.0.0.1:{n.http_port}"


# ---------------------------------------------------------------------- promtool
@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_check_metrics_on_live_nodes(cluster):
    leader = leader_of(cluster)
    follower = next(n for n in cluster if n is not leader)
    # some traffic first, so that request, fsync and proposal series have samples
    assert follower.req("POST", "/api/v1/deployments", {"name": "m", "source": "x"}).status == 201
    assert leader.req("GET", "/api/v1/deployments/nope").status == 404
    for n in (leader, follower):
        text = n.req("GET", "/metrics").body
        assert b"raft_state " in text and b"prisn_api_requests_total" in text
        # on every role: the leader per peer, a follower its own lag (issue 12 item 11)
        assert b"raft_replication_lag_seconds{peer=" in text
        proc = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                              timeout=60)
        findings = (proc.stdout + proc.stderr).decode().strip()
        assert proc.returncode == 0 and findings == "", f"{n.node_id}: {findings}"
    # every family on /metrics is documented (the client's *_created series aside)
    doc = (ROOT / "docs" / "monitoring.md").read_text()
    families = set(re.findall(r"^# TYPE (\S+) ", text.decode(), re.M))
    assert {"raft_state", "prisn_api_requests_total", "prisn_log_fsync_seconds"} <= families
    missing = {f for f in families if not f.endswith("_created") and f"`{f}" not in doc}
    assert not missing, f"metrics missing in docs/monitoring.md: {sorted(missing)}"


# ---------------------------------------------------------------------- a real Prometheus
class Prometheus:
    """A `prometheus` server process with a temporary config, storage and log."""

    def __init__(self, tmp: Path, targets: list[str]) -> None:
        self.port = free_port()
        self.dir = tmp
        cfg = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": "prisn", "metrics_path": "/metrics",
                                "static_configs": [{"targets": targets}]}],
        }
        self.config = tmp / "prometheus.yml"
        self.config.write_text(json.dumps(cfg, indent=2))  # JSON is valid YAML
        self.log = tmp / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Prometheus:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [PROMETHEUS or "prometheus", f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.dir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT)
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def get(self, path: str) -> dict:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited ({self.proc.returncode}): {self.tail()}")
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())

    def query(self, promql: str) -> list[dict]:
        body = self.get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert body["status"] == "success", body
        return body["data"]["result"]

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited ({self.proc.returncode}): {self.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False


def _instances(result: list[dict]) -> set[str]:
    return {r["metric"]["instance"] for r in result}


def _scalar(result: list[dict]) -> float | None:
    return float(result[0]["value"][1]) if len(result) == 1 else None


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package)")
def test_prometheus_sees_one_leader_before_and_after_failover(cluster, tmp_path):
    """Runs last in this module: it SIGKILLs the leader."""
    prom = Prometheus(tmp_path, [instance(n) for n in cluster]).start()
    try:
        wait_for(prom.ready, 60, f"prometheus ready (log: {prom.log})")
        # all three targets up, and exactly one of them leads
        wait_for(lambda: _scalar(prom.query('count(up{job="prisn"} == 1)')) == 3, 30,
                 "3 targets up")
        leader = leader_of(cluster)
        wait_for(lambda: _instances(prom.query(LEADER_UP)) == {instance(leader)}, 30,
                 f"prometheus sees only {leader.node_id} as leader")
        assert _scalar(prom.query(f"count({LEADER_UP})")) == 1
        assert _scalar(prom.query('count(raft_state{job="prisn"} == 0)')) == 2
        # the shipped alert rules load and evaluate without error; with a leader and all
        # targets up none is pending or firing (PrisnNoLeader may be pending briefly from an
        # evaluation before the first scrape)
        def rules() -> dict[str, dict]:
            groups = prom.get("/api/v1/rules")["data"]["groups"]
            return {r["name"]: r for g in groups for r in g["rules"]}

        assert set(rules()) == {"PrisnNoLeader", "PrisnQuorumLost", "PrisnReplicationLag",
                                "PrisnMultipleLeaders", "PrisnFrequentLeaderChanges",
                                "PrisnFollowerOutOfContact", "PrisnLogDiskErrors",
                                "PrisnSnapshotFailures", "PrisnNodeNotReady",
                                "PrisnCrashLooping", "PrisnUnschedulable", "PrisnCronMissed"}
        quiet = wait_for(lambda: (lambda rs: rs if all(r["health"] == "ok" and r["state"] ==
                                                       "inactive" for r in rs.values())
                                  else None)(rules()), 20, "all alert rules ok and inactive")
        assert all(r["type"] == "alerting" for r in quiet.values())
        # kill the leader: its target goes down, another node leads, still exactly one
        leader.kill(signal.SIGKILL)
        leader.wait_exit()
        wait_for(lambda: _scalar(prom.query(f'up{{instance="{instance(leader)}"}}')) == 0, 30,
                 "the killed leader's target down")
        new = leader_of(cluster)
        assert new is not leader
        wait_for(lambda: _instances(prom.query(LEADER_UP)) == {instance(new)}, 30,
                 f"prometheus sees only {new.node_id} as leader")
        assert _scalar(prom.query(f"count({LEADER_UP})")) == 1
        assert _scalar(prom.query('count(up{job="prisn"} == 1)')) == 2
        # the dead target's series went stale: only the live ones report raft_state
        wait_for(lambda: _instances(prom.query('raft_state{job="prisn"}')) ==
                 {instance(n) for n in cluster if n.alive()}, 15, "stale series dropped")
        assert _scalar(prom.query('count(raft_state{job="prisn"} == 2)')) == 1
    finally:
        prom.stop()
