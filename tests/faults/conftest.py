"""Prints one line per fault run (seed, operations checked, faults injected, verdict)."""

from __future__ import annotations

from tests.faults.harness import RUNS


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    if not RUNS:
        return
    terminalreporter.section("prisn fault runs")
    for r in RUNS:
        terminalreporter.write_line(r["line"])
        if not r["ok"]:
            terminalreporter.write_line(f"    kept: {r['dir']}")
