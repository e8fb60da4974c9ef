"""benchmarks/bench_workloads.py's code path end to end, small: one deploy + SIGKILL trial and
3 services at rest on a real 3-node cluster. Checks what was measured, never how fast."""

from __future__ import annotations

from pathlib import Path

from benchmarks import bench_workloads


def test_bench_workloads_runs_every_part(tmp_path: Path) -> None:
    args = bench_workloads.parse_args(["--trials", "1", "--services", "3", "--window", "1",
                                       "--settle", "0", "--node-down-after", "2s"])
    doc = bench_workloads.run(args, tmp_path)
    (trial,) = doc["trials"]
    assert trial["new_node"] != trial["victim"]
    assert 0 < trial["deploy_s"] and 0 < trial["failover_s"]
    rest = doc["at_rest"]
    assert sum(n["instances"] for n in rest["nodes"]) == 3
    assert all(n["server_rss_mb"] > 0 for n in rest["nodes"])
    assert rest["raft_entries_per_min"] >= 0
    assert doc["left_behind"] == 0
    text = bench_workloads.render(doc)
    assert "SIGKILL of its node" in text and "Raft entries per minute" in text
