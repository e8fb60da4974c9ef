"""benchmarks/bench_jobs.py's code path end to end in its `--quick` size: 5 on-demand runs,
10 `@every 1s` cron jobs for 5 s and one leader SIGKILL on a real 3-node cluster. Checks
what was measured and the report's shape, never how fast."""

from __future__ import annotations

from pathlib import Path

from benchmarks import bench_jobs


def test_bench_jobs_quick_runs_every_part(tmp_path: Path) -> None:
    args = bench_jobs.parse_args(["--quick"])
    doc = bench_jobs.run(args, tmp_path)
    od = doc["on_demand"]
    assert od["runs"] == 5 and od["not_completed"] == 0
    for key in ("post_ms", "start_ms", "completed_ms"):
        assert od[key]["p50"] is not None and od[key]["p50"] <= od[key]["max"]
    cron = doc["cron"]
    assert cron["jobs"] == 10 and cron["scheduled_times"] >= 4
    assert cron["expected_fires"] == 10 * cron["scheduled_times"]
    assert cron["fires"] > 0 and cron["duplicates"] == 0
    assert cron["api_lateness_ms"]["p50"] is not None
    assert cron["process_lateness_ms"]["p50"] is not None
    assert len(cron["nodes"]) == 3 and sum(n["leader"] for n in cron["nodes"]) == 1
    assert sum(n["ran"] for n in cron["nodes"]) == cron["fires"]
    fo = doc["failover"]
    (r,) = fo["rounds"]
    assert r["victim"] != r["new_leader"]
    # the guarantee the benchmark reports: never two executions (or runs) for one time
    assert fo["all"]["more"] == 0 and fo["all"]["ran_twice"] == 0
    assert fo["all"]["one"] + fo["all"]["none"] == fo["all"]["times"]
    assert fo["all"]["one"] == fo["executions"]
    assert not bench_jobs.failed(doc)
    text = bench_jobs.render(doc)
    for part in ("POST -> process started", "started_at - scheduled_at", "server CPU",
                 "kill -> new leader", "exactly one execution per scheduled time: yes"):
        assert part in text
