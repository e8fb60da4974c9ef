"""`prisn server` workload flags: --node-down-after, --stop-grace, --no-workloads (and their
PRISN_* variables), their checks, and the fencing timings derived from them."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from prisn.cli import cli
from prisn.config import ServerConfig


def config(args: list[str], env: dict[str, str] | None = None,
           monkeypatch: pytest.MonkeyPatch | None = None) -> ServerConfig | str:
    """The ServerConfig `prisn server ARGS` would run with, or its usage error."""
    seen: list[ServerConfig] = []
    import prisn.server

    def fake_run(cfg: ServerConfig) -> int:
        seen.append(cfg)
        return 0

    assert monkeypatch is not None
    monkeypatch.setattr(prisn.server, "run", fake_run)
    r = CliRunner().invoke(cli, ["server", "--data-dir", "/tmp/x", *args], env=env or {})
    return seen[0] if seen else r.output


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config([], monkeypatch=monkeypatch)
    assert isinstance(cfg, ServerConfig)
    assert (cfg.node_down_after, cfg.stop_grace, cfg.no_workloads) == (5.0, 10.0, False)
    assert cfg.fence_after == 2.5 and cfg.fence_grace == pytest.approx(2.2)


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(["--node-down-after", "2s", "--stop-grace", "500ms", "--no-workloads"],
                 monkeypatch=monkeypatch)
    assert isinstance(cfg, ServerConfig)
    assert (cfg.node_down_after, cfg.stop_grace, cfg.no_workloads) == (2.0, 0.5, True)
    assert cfg.fence_after == 1.0 and cfg.fence_grace == pytest.approx(0.5)  # capped
    cfg = config([], {"PRISN_NODE_DOWN_AFTER": "30s", "PRISN_STOP_GRACE": "1m",
                      "PRISN_NO_WORKLOADS": "1"}, monkeypatch)
    assert isinstance(cfg, ServerConfig)
    assert (cfg.node_down_after, cfg.stop_grace, cfg.no_workloads) == (30.0, 60.0, True)


@pytest.mark.parametrize("args,needle", [
    (["--node-down-after", "500ms"], "at least 4 election timeouts"),
    (["--node-down-after", "soon"], "--node-down-after"),
    (["--stop-grace", "-1s"], "--stop-grace"),
])
def test_bad_values_are_usage_errors(args: list[str], needle: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = config(args, monkeypatch=monkeypatch)
    assert isinstance(out, str) and needle in out


def test_fence_timings_leave_the_margin() -> None:
    """The fence fires, and its stop grace ends, before the leader may replace: fence_after
    + one maximal election timeout of detection + the grace <= node_down_after."""
    for nda in (0.6, 1.0, 2.0, 5.0, 30.0):
        for et in (0.15, 0.5):
            if nda < 4 * et:
                continue
            for grace in (0.1, 10.0):
                c = ServerConfig(node_id="n", data_dir="/tmp", node_down_after=nda,
                                 election_timeout=et, stop_grace=grace)
                assert c.fence_after >= 2 * et  # an election alone never fences
                assert c.fence_after + 2 * et + c.fence_grace <= nda + 1e-9
