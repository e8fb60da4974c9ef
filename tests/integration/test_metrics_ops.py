"""The operator metrics of issue 16 item 3 on a live `prisn server` process.

- process and platform collectors (`process_*`, `python_info`) and
  `prisn_build_info{version, python, wire_version}` = 1;
- `prisn_snapshot_duration_seconds` is a histogram observed per local snapshot, and a
  snapshot that cannot be written counts in `prisn_snapshot_failures_total`;
- `prisn_ready` is 1 on a ready node and 0 on one that knows no leader;
- `promtool check metrics` stays clean on that exposition;
- with `--log-format json` the snapshot events are records with their fields.
(`prisn_log_disk_errors_total` is checked with a real full disk in test_disk_full.py.)
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess

from prometheus_client.parser import text_string_to_metric_families

from prisn import __version__
from prisn.messages import WIRE_VERSION
from tests.procs import ServerProc, cluster_node, free_port, single_node, wait_for

PROMTOOL = shutil.which("promtool")


def scrape(n: ServerProc) -> dict[str, dict[tuple, float]]:
    """{family name: {sorted label items: value}} of every sample on /metrics."""
    r = n.req("GET", "/metrics")
    assert r.status == 200
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(r.body.decode()):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def one(m: dict, name: str, **labels: str) -> float | None:
    return m.get(name, {}).get(tuple(sorted(labels.items())))


def test_process_build_snapshot_and_ready_metrics(tmp_path):
    n = single_node(tmp_path, extra=["--snapshot-threshold", "5", "--snapshot-interval", "0",
                                     "--log-format", "json"])
    n.start().wait_ready(30)
    try:
        m = scrape(n)
        assert one(m, "prisn_ready") == 1
        assert one(m, "prisn_build_info", version=__version__, python=platform.python_version(),
                   wire_version=str(WIRE_VERSION)) == 1
        assert one(m, "process_resident_memory_bytes") > 1 << 20
        assert one(m, "process_open_fds") > 0
        assert one(m, "process_cpu_seconds_total") > 0
        assert one(m, "process_start_time_seconds") > 0
        assert [k for k in m["python_info"] if ("implementation", platform.python_implementation())
                in k]
        assert one(m, "prisn_snapshot_duration_seconds_count") == 0
        assert one(m, "prisn_log_disk_errors_total") == 0
        # a local snapshot is observed in the histogram
        for i in range(6):
            assert n.req("POST", "/api/v1/deployments", {"name": f"a{i}", "source": "x"}
                         ).status == 201
        wait_for(lambda: (one(scrape(n), "prisn_snapshot_duration_seconds_count") or 0) >= 1,
                 30, "a snapshot observed")
        m = scrape(n)
        assert one(m, "prisn_snapshots_taken_total") >= 1
        assert one(m, "prisn_snapshot_duration_seconds_sum") > 0
        assert one(m, "prisn_snapshot_duration_seconds_bucket", le="+Inf") >= 1
        assert one(m, "prisn_snapshot_failures_total") == 0
        # the snapshot directory becomes unusable: the next snapshot fails and is counted
        snaps = n.data_dir / "snapshots"
        shutil.rmtree(snaps)
        snaps.write_text("not a directory")
        for i in range(6):
            assert n.req("POST", "/api/v1/deployments", {"name": f"b{i}", "source": "x"}
                         ).status == 201
        wait_for(lambda: (one(scrape(n), "prisn_snapshot_failures_total") or 0) >= 1, 30,
                 "a snapshot failure counted")
        assert n.req("GET", "/health").status == 200  # a failed snapshot does not stop the node
        if PROMTOOL is not None:
            text = n.req("GET", "/metrics").body
            proc = subprocess.run([PROMTOOL, "check", "metrics"], input=text,
                                  capture_output=True, timeout=60)
            findings = (proc.stdout + proc.stderr).decode().strip()
            assert proc.returncode == 0 and findings == "", findings
    finally:
        n.stop()
    # the JSON log carries both snapshot events with their fields
    recs = [json.loads(line) for line in n.log_path.read_text().splitlines()]
    written = [r for r in recs if r.get("event") == "snapshot_written"]
    assert written and written[0]["index"] >= 5 and written[0]["bytes"] > 0, recs
    failed = [r for r in recs if r.get("event") == "snapshot_failed"]
    assert failed and failed[0]["level"] == "error" and failed[0]["exception"], recs


def test_ready_gauge_is_0_without_a_leader(tmp_path):
    lonely = cluster_node(tmp_path, "n2", peers=[f"127.0.0.1:{free_port()}"])  # nobody there
    lonely.start()
    try:
        wait_for(lambda: lonely.req("GET", "/health", timeout=2).status == 200, 30, "serving")
        assert lonely.req("GET", "/ready").status == 503
        assert one(scrape(lonely), "prisn_ready") == 0
    finally:
        lonely.stop()
