"""Execution and cron metrics (issue 15): `ExecutionTable.stats()` through
`DeploymentStore.execution_stats` and `actors.metrics.ExecutionsCollector`, exposed in a
registry that `promtool check metrics` accepts."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from actors.metrics import ExecutionsCollector
from tests.execfeed import T0, cmd, fire, miss, setup, update


def scrape(f) -> str:  # type: ignore[no-untyped-def]
    r = CollectorRegistry()
    r.register(ExecutionsCollector(f.store.execution_stats))
    return generate_latest(r).decode()


def test_stats_count_statuses_fires_misses_lag_and_durations() -> None:
    f, _j, c = setup()
    st = f.store.execution_stats()
    assert st["by_status"] == dict.fromkeys(st["by_status"], 0) and len(st["by_status"]) == 6
    assert (st["fires"], st["missed"], st["lag"], st["count"]) == (0, 0, None, 0)
    f.run(cmd("execution.create", id="e1", ns="default", name="j"))
    update(f, "e1", "Running", node="n1", started_at="2026-06-01T12:00:00.000Z")
    update(f, "e1", "Completed", exit_code=0, completed_at="2026-06-01T12:00:02.000Z")
    code, e = fire(f, c, T0 + 10, None)
    assert code == 201
    assert fire(f, c, T0 + 10, None)[0] == 200  # the same fire again counts once
    update(f, e["id"], "Running", node="n1", started_at="2026-06-01T12:00:10.750Z")
    assert miss(f, c, T0 + 11, T0 + 13, T0 + 10, count=3)[0] == 200
    st = f.store.execution_stats()
    assert st["by_status"]["Completed"] == 1 and st["by_status"]["Running"] == 1
    assert (st["fires"], st["missed"], st["lag"]) == (1, 3, 0.75)
    assert st["count"] == 1 and st["sum"] == 2.0
    assert dict(st["buckets"])[1.0] == 0 and dict(st["buckets"])[5.0] == 1
    text = scrape(f)
    assert 'prisn_executions_total{status="Running"} 1.0' in text
    assert "prisn_cron_fires_total 1.0" in text and "prisn_cron_missed_total 3.0" in text
    assert "prisn_scheduler_lag_seconds 0.75" in text
    assert 'prisn_execution_duration_seconds_bucket{le="5.0"} 1.0' in text
    assert "prisn_execution_duration_seconds_count 1.0" in text


def test_exposition_passes_promtool_check_metrics() -> None:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not installed")
    f, _j, c = setup()
    for text in (scrape(f), None):  # before any execution, then with one of each kind
        if text is None:
            code, e = fire(f, c, T0 + 1, None)
            update(f, e["id"], "Running", node="n1", started_at=
                   "2026-06-01T12:00:02.000Z")
            update(f, e["id"], "Failed", exit_code=1, completed_at="2026-06-01T12:00:03.000Z")
            text = scrape(f)
        p = subprocess.run([exe, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "prisn_executions_total" in text
