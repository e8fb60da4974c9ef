"""Checks for deploy/prometheus: alert rules, their promtool tests, the example
scrape config and the Grafana dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
ALERTS = PROM / "alerts.yml"
ALERTS_TEST = PROM / "alerts_test.yml"
CONFIG = PROM / "prometheus.yml"
DASHBOARD = PROM / "grafana-dashboard.json"

ALERT_NAMES = (
    "PrisnNoLeader",
    "PrisnQuorumLost",
    "PrisnReplicationLag",
    "PrisnMultipleLeaders",
    "PrisnFrequentLeaderChanges",
    "PrisnFollowerOutOfContact",
    "PrisnLogDiskErrors",
    "PrisnSnapshotFailures",
    "PrisnNodeNotReady",
    "PrisnCrashLooping",
    "PrisnUnschedulable",
    "PrisnCronMissed",
)
SEVERITIES = {
    "PrisnNoLeader": "critical",
    "PrisnQuorumLost": "critical",
    "PrisnReplicationLag": "warning",
    "PrisnMultipleLeaders": "critical",
    "PrisnFrequentLeaderChanges": "warning",
    "PrisnFollowerOutOfContact": "warning",
    "PrisnLogDiskErrors": "critical",
    "PrisnSnapshotFailures": "warning",
    "PrisnNodeNotReady": "warning",
    "PrisnCrashLooping": "warning",
    "PrisnUnschedulable": "warning",
    "PrisnCronMissed": "warning",
}
SEED_ALERTS = ("PrisnNoLeader", "PrisnQuorumLost", "PrisnReplicationLag")

# The metrics prisn exports (CLUSTERING.md / the server's contract).
PLAIN_METRICS = {
    "raft_state",
    "raft_term",
    "raft_commit_index",
    "raft_applied_index",
    "raft_peers",
    "raft_replication_lag_seconds",
    "raft_leader_changes_total",
    "raft_proposals_committed_total",
    "raft_proposals_failed_total",
    "raft_peer_last_contact_seconds",
    "prisn_api_requests_total",
    "prisn_deployments_total",
    "prisn_ready",
    "prisn_disk_error",
    "prisn_log_disk_errors_total",
    "prisn_snapshot_failures_total",
    "prisn_snapshots_taken_total",
    "prisn_build_info",
    "prisn_instances",
    "prisn_instance_restarts_total",
    "prisn_scheduler_unplaced_instances",
    "prisn_executions_total",
    "prisn_cron_fires_total",
    "prisn_cron_missed_total",
    "prisn_scheduler_lag_seconds",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
}
HISTOGRAMS = {
    "prisn_log_fsync_seconds",
    "prisn_api_request_duration_seconds",
    "prisn_snapshot_duration_seconds",
    "prisn_runner_start_seconds",
    "prisn_execution_duration_seconds",
}
PRISN_METRICS = (
    PLAIN_METRICS
    | HISTOGRAMS
    | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)
# Series Prometheus itself attaches to every scrape target.
SCRAPE_METRICS = {"up"}

GRAFANA_VARS = re.compile(
    r"\$(?:__rate_interval|__interval|__range)\b|\$\{__(?:rate_interval|interval|range)\}"
)

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}


# ---------------------------------------------------------------- helpers


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL (or Grafana-templated) expression."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)  # dashboard variables
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        before = s[m.start() - 1] if m.start() else " "
        if before.isdigit() or before == ".":
            continue  # exponent or duration suffix of a number
        rest = s[m.end() :].lstrip()
        if rest.startswith("("):
            continue  # function or aggregation
        if m.group(0).lower() in _KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def selectors(expr: str, name: str) -> list[str]:
    """The label-matcher text ('' if none) of every selector of metric `name`."""
    return [
        m.group(1) or ""
        for m in re.finditer(
            rf"(?<![\w:]){re.escape(name)}(?![\w:])(?!\s*\()\s*(\{{[^}}]*\}})?", expr
        )
    ]


def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not installed")
    return exe


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def load_yaml(path: Path):
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed")
    return yaml.safe_load(path.read_text())


def alert_rules() -> dict[str, dict]:
    doc = load_yaml(ALERTS)
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def dashboard_queries(dash: dict) -> list[tuple[str, str]]:
    """[(where, expr)] for every panel target and templating query."""
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((f"panel {p.get('title')!r}", t["expr"]))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if var.get("type") == "query" and q:
            out.append((f"variable {var.get('name')!r}", q))
    return out


# --------------------------------------------------- the extractor itself


def test_metric_name_extractor() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{job="prisn", x=~"$y"}[$__rate_interval])))'
    ) == {"a_bucket"}
    assert metric_names("(count(raft_state == 2) or vector(0)) == 0") == {"raft_state"}
    assert metric_names("foo - bar offset 5m > 1e3") == {"foo", "bar"}
    # Grafana's label_values(metric, label): the label name reads as an
    # identifier too, which is why variable queries discount "instance".
    assert metric_names('label_values(raft_state{job="prisn"}, instance)') == {
        "raft_state",
        "instance",
    }
    assert selectors('a{job="x"} - a + b', "a") == ['{job="x"}', ""]


# ------------------------------------------------------------ alert rules


def test_promtool_check_rules() -> None:
    proc = run_promtool("check", "rules", str(ALERTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(ALERT_NAMES)} rules found" in proc.stdout


def test_promtool_test_rules() -> None:
    proc = run_promtool("test", "rules", ALERTS_TEST.name, cwd=PROM)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_seed_expressions_fail_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests catch the seed's broken expressions: `sum(x == 2) == 0`
    never fires (empty result), `count(up) < 2` counts down targets, and the
    apply-lag-only rule misses a lagging follower."""
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed")
    promtool()
    doc = yaml.safe_load(ALERTS.read_text())
    seed = {
        "PrisnNoLeader": 'sum(raft_state{job="prisn"} == 2) == 0',
        "PrisnQuorumLost": 'count(up{job="prisn"}) < 2',
        "PrisnReplicationLag": "raft_commit_index - raft_applied_index > 100",
    }
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in seed:
                rule["expr"] = seed[rule["alert"]]
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(doc))
    shutil.copy(ALERTS_TEST, tmp_path / "alerts_test.yml")
    proc = run_promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    for name in SEED_ALERTS:
        assert f"alertname: {name}" in out, f"no test caught the seed's {name}\n{out}"


def test_naive_expressions_fail_the_new_alert_tests(tmp_path: Path) -> None:
    """The unit tests of the issue-16 alerts catch plausible wrong expressions: a lag-only
    out-of-contact rule misses a dead follower of an idle cluster (its lag in entries stays
    0), a >= 1 leaders rule fires on a healthy cluster, a rule on the disk-error gauge alone
    misses an error the node already recovered from, and a not-ready rule without `up`
    misses a node that is down."""
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed")
    promtool()
    doc = yaml.safe_load(ALERTS.read_text())
    naive = {
        "PrisnFollowerOutOfContact": 'raft_replication_lag_seconds{job="prisn"} > 10',
        "PrisnMultipleLeaders": 'count by (job) (raft_state{job="prisn"} == 2) >= 1',
        "PrisnLogDiskErrors": 'max by (job, instance) (prisn_disk_error{job="prisn"}) == 1',
        "PrisnNodeNotReady": 'prisn_ready{job="prisn"} == 0',
        "PrisnSnapshotFailures": 'prisn_snapshot_failures_total{job="prisn"} > 0',
        "PrisnFrequentLeaderChanges": 'raft_leader_changes_total{job="prisn"} > 3',
    }
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in naive:
                rule["expr"] = naive[rule["alert"]]
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(doc))
    shutil.copy(ALERTS_TEST, tmp_path / "alerts_test.yml")
    proc = run_promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    for name in naive:
        assert f"alertname: {name}" in out, f"no test caught the naive {name}\n{out}"


def test_alert_rules_shape() -> None:
    rules = alert_rules()
    assert set(rules) == set(ALERT_NAMES)
    for name, severity in SEVERITIES.items():
        assert rules[name]["labels"]["severity"] == severity, name
    assert rules["PrisnNodeNotReady"]["for"] == "5m"
    assert "count by (job) (raft_state" in rules["PrisnMultipleLeaders"]["expr"]
    for rule in rules.values():
        assert rule.get("for"), rule["alert"]
        assert rule["annotations"].get("summary"), rule["alert"]


def test_alerts_use_known_metrics_scoped_to_job() -> None:
    for name, rule in alert_rules().items():
        used = metric_names(rule["expr"])
        assert used, name
        unknown = used - PRISN_METRICS - SCRAPE_METRICS
        assert not unknown, f"{name} uses unknown metrics {unknown}"
        for metric in used:
            for sel in selectors(rule["expr"], metric):
                assert 'job="prisn"' in sel, f'{name}: {metric}{sel} is not scoped to job="prisn"'


def test_alert_unit_tests_cover_firing_and_quiet() -> None:
    doc = load_yaml(ALERTS_TEST)
    assert doc["rule_files"] == ["alerts.yml"]
    cases: dict[str, dict[str, int]] = {n: {"fire": 0, "quiet": 0} for n in ALERT_NAMES}
    for test in doc["tests"]:
        for check in test.get("alert_rule_test", []):
            kind = "fire" if check.get("exp_alerts") else "quiet"
            cases[check["alertname"]][kind] += 1
    for name, seen in cases.items():
        assert seen["fire"] >= 2 and seen["quiet"] >= 2, f"{name}: {seen}"


# ------------------------------------------------------------ scrape config


def test_promtool_check_config() -> None:
    proc = run_promtool("check", "config", str(CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cfg = load_yaml(CONFIG)
    assert "alerts.yml" in cfg["rule_files"]
    assert [j["job_name"] for j in cfg["scrape_configs"]] == ["prisn"]


def test_commented_kubernetes_variant_is_valid(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed")
    promtool()
    lines = CONFIG.read_text().splitlines()
    start = next(
        i for i, line in enumerate(lines) if re.match(r"^\s*#\s*- job_name: prisn\s*$", line)
    )
    block = []
    for line in lines[start:]:
        if not line.strip().startswith("#"):
            break
        block.append(re.sub(r"^(\s*)# ?", r"\1", line))
    jobs = yaml.safe_load("\n".join(block))
    assert jobs[0]["kubernetes_sd_configs"]
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["scrape_configs"] = jobs
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    proc = run_promtool("check", "config", str(tmp_path / "prometheus.yml"))
    if "kubernetes_sd_configs not found" not in proc.stdout + proc.stderr:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return
    # Some distribution builds of promtool (Debian's) leave Kubernetes service
    # discovery out. Check the rest of the job (relabelling etc.) with a
    # static target in its place, then report the skip.
    for job in jobs:
        job.pop("kubernetes_sd_configs")
        job["static_configs"] = [{"targets": ["prisn-0.prisn:7331"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    proc = run_promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pytest.skip("promtool built without kubernetes_sd_configs; checked the job without it")


# ---------------------------------------------------------------- dashboard


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_structure(dashboard) -> None:
    assert dashboard["title"] and dashboard["uid"]
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        assert p["type"] in {"stat", "timeseries", "gauge", "table", "row", "bargauge"}, p["type"]
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"], p["title"]


def test_dashboard_uses_only_prisn_metrics(dashboard) -> None:
    queries = dashboard_queries(dashboard)
    assert queries
    for where, expr in queries:
        used = metric_names(expr) - ({"instance"} if where.startswith("variable") else set())
        assert used, f"{where}: no metric in {expr!r}"
        unknown = used - PRISN_METRICS
        assert not unknown, f"{where} uses unknown metrics {unknown}: {expr}"


def test_dashboard_metric_check_can_fail() -> None:
    fake = {"panels": [{"title": "x", "targets": [{"expr": "rate(raft_commits_total[5m])"}]}]}
    ((_, expr),) = dashboard_queries(fake)
    assert metric_names(expr) - PRISN_METRICS == {"raft_commits_total"}


def test_dashboard_covers_required_views(dashboard) -> None:
    exprs = [e for _, e in dashboard_queries(dashboard)]
    used = set().union(*(metric_names(e) for e in exprs))
    for metric in (
        "raft_state",
        "raft_term",
        "raft_commit_index",
        "raft_applied_index",
        "raft_replication_lag_seconds",
        "prisn_api_requests_total",
    ):
        assert metric in used, metric

    def p99_of(hist: str) -> bool:
        return any(
            re.search(r"histogram_quantile\(\s*0\.99\s*,", e)
            and f"{hist}_bucket" in e
            and "le" in e
            for e in exprs
        )

    assert p99_of("prisn_log_fsync_seconds")
    assert p99_of("prisn_api_request_duration_seconds")
    # Replication lag is shown per peer.
    lag = [
        t
        for p in dashboard["panels"]
        for t in p.get("targets", [])
        if "raft_replication_lag_seconds" in t.get("expr", "")
    ]
    assert any("{{peer}}" in t.get("legendFormat", "") or "peer" in t["expr"] for t in lag)


def test_dashboard_queries_are_valid_promql(dashboard, tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed")
    promtool()
    rules = []
    for i, (where, expr) in enumerate(dashboard_queries(dashboard)):
        if where.startswith("variable"):
            continue  # label_values() is Grafana syntax, not PromQL
        rules.append({"record": f"dashboard:query_{i}", "expr": GRAFANA_VARS.sub("5m", expr)})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run_promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # And the same check rejects a broken query.
    rules.append({"record": "dashboard:broken", "expr": "sum(rate(raft_term[5m])"})
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert run_promtool("check", "rules", str(path)).returncode != 0


def test_static_targets_pass_the_host_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The static job scrapes nodeN:7331; a node set up as deploy/systemd/prisn.env.example
    (advertising nodeN:7332, auth off) accepts that Host, so no scrape gets a 421."""
    from actors.api.guard import RequestGuard, own_names

    cfg = load_yaml(CONFIG)
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "prisn"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    env = dict(line.split("=", 1) for line in
               (ROOT / "deploy" / "systemd" / "prisn.env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    for target in targets:
        host = target.rpartition(":")[0]
        advertise = env["PRISN_ADVERTISE_ADDR"].replace("node1", host)
        monkeypatch.setattr("socket.gethostname", lambda host=host: host)
        guard = RequestGuard.build(own=own_names(env["PRISN_BIND"], env["PRISN_RAFT_ADDR"],
                                                 advertise))
        assert guard.host_allowed(target), target
        assert not guard.host_allowed("evil.example:7331")


def test_dashboard_shows_every_alert(dashboard) -> None:
    """Each alert's metrics (beyond `up`) are on some panel, so an operator paged by it
    finds the series on the dashboard."""
    used = set().union(*(metric_names(e) for _, e in dashboard_queries(dashboard)))
    for name, rule in alert_rules().items():
        wanted = metric_names(rule["expr"]) - SCRAPE_METRICS
        if wanted:  # PrisnQuorumLost reads `up` alone
            assert wanted & used, f"{name}: none of {wanted} is on the dashboard"
    for metric in ("prisn_ready", "prisn_log_disk_errors_total", "prisn_disk_error",
                   "prisn_snapshot_failures_total", "raft_peer_last_contact_seconds",
                   "raft_leader_changes_total"):
        assert metric in used, metric
