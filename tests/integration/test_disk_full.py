"""A node whose log cannot be written stops (exit 1) instead of running on as 'healthy'."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.procs import single_node, wait_for


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_stops_the_node_with_exit_1(tmp_path, tiny_disk):
    n = single_node(tmp_path)
    n.data_dir = tiny_disk / "data"
    n.args[n.args.index("--data-dir") + 1] = str(n.data_dir)
    n.start().wait_ready()
    assert n.req("POST", "/api/v1/deployments", {"name": "small", "source": "x"}).status == 201
    statuses = []
    for i in range(40):  # 40 x 256 KiB > 4 MiB: the disk fills
        if not n.alive():
            break
        try:
            statuses.append(n.req("POST", "/api/v1/deployments",
                                  {"name": f"big{i}", "source": "x" * (256 << 10)},
                                  timeout=10).status)
        except OSError:
            break
    assert wait_for(lambda: not n.alive(), 20, "the node to stop"), n.tail()
    assert n.wait_exit() == 1, n.tail()
    assert "raft stopped" in n.tail(80) or "store" in n.tail(80).lower()
    assert all(s in (201, 503, 507) for s in statuses), statuses
