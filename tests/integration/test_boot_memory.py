"""What a node keeps after `Node.start` returns (in-process, single node, no peers)."""

from __future__ import annotations

import gc
import time

from prisn.config import ServerConfig
from prisn.raft.boot import BootState
from prisn.server import Node
from prisn.storage import LogStorage
from tests.procs import free_port


def _boot_states() -> list[BootState]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, BootState)]


def _run(tmp_path, check) -> None:
    node = Node(ServerConfig(node_id="n1", data_dir=str(tmp_path),
                             bind=f"127.0.0.1:{free_port()}"))
    try:
        node.start()
        check(node)
    finally:
        node.stop()


def _wait_applied(node: Node, index: int) -> None:
    deadline = time.monotonic() + 10
    while node.store.applied_index < index:
        assert time.monotonic() < deadline, f"applied {node.store.applied_index} < {index}"
        time.sleep(0.01)


def test_the_boot_state_and_its_entries_do_not_outlive_start(tmp_path) -> None:
    """Every entry loaded at boot belongs to the raft core's log once `start` returns: nothing
    else may pin the boot state (its entry list would then outlive log compaction), and the
    fsm knows what was committed before the process started (it sends no results for it)."""
    first: dict[str, int] = {}

    def bootstrapped(node: Node) -> None:
        _wait_applied(node, 2)  # the founding configuration and the leader's no-op
        assert node.fsm is not None and node.fsm.boot_commit == 0
        first["applied"] = node.store.applied_index

    _run(tmp_path, bootstrapped)
    assert first["applied"] >= 2
    st = LogStorage(str(tmp_path / "raft"))
    try:
        stored = st.load()
        st_commit = stored.commit
    finally:
        st.close()
    assert len(stored.entries) >= 2
    del stored

    def restarted(node: Node) -> None:
        assert node.fsm is not None and node.fsm.boot_commit == st_commit
        _wait_applied(node, first["applied"])
        assert _boot_states() == []

    _run(tmp_path, restarted)
