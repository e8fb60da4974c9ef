"""The harness's post-run checks on synthetic data: leaders per term, lost writes, stored logs."""

from __future__ import annotations

from pathlib import Path

from prisn.fsm.commands import CommandFactory, encode_entry
from prisn.messages import EntryKind, StoreAppend
from prisn.storage import LogStorage
from tests.faults.harness import INIT, check_final_values, check_leaders, stored_logs
from tests.procs import ServerProc


def s(node, term, state, leader=None):
    return {"node": node, "term": term, "state": state, "leader": leader}


def test_one_leader_per_term_accepted():
    samples = [s("n1", 2, "leader", "n1"), s("n2", 2, "follower", "n1"),
               s("n2", 3, "candidate"), s("n2", 4, "leader", "n2"), s("n1", 4, "follower", "n2"),
               s("n1", 2, "leader", "n1")]  # a paused old leader still says so: same term
    assert check_leaders(samples) == []


def test_two_leaders_in_one_term_rejected():
    assert check_leaders([s("n1", 5, "leader", "n1"), s("n2", 5, "leader", "n2")]) == [
        "term 5 had 2 leaders: ['n1', 'n2']"]
    # a follower's view counts too
    assert check_leaders([s("n1", 5, "leader", "n1"), s("n3", 5, "follower", "n2")])


def w(i, key, value, invoke, ret, outcome="ok"):
    return {"id": i, "key": key, "kind": "write", "value": value, "invoke": invoke,
            "ret": ret if outcome == "ok" else None, "outcome": outcome}


def test_final_values():
    ops = [w(0, "k", "a", 0, 1), w(1, "k", "b", 2, 3), w(2, "k", "x", 2.5, None, "unknown")]
    assert check_final_values(ops, {"k": "b"}) == []
    assert check_final_values(ops, {"k": "x"}) == []  # an unknown write may land last
    lost = check_final_values(ops, {"k": "a"})
    assert len(lost) == 1 and "'b'" in lost[0] and "lost" in lost[0]
    assert "never written" in check_final_values(ops, {"k": "zz"})[0]
    assert "lost" in check_final_values(ops, {"k": INIT})[0]
    assert check_final_values([w(0, "k", "a", 0, 1, "unknown")], {"k": INIT}) == []


def _log(path: Path, entries: list, commit: int) -> None:
    st = LogStorage(str(path))
    try:
        st.write([StoreAppend(src="t", dst="logstore", seq=1, term=entries[-1][1], vote="",
                              commit=commit, truncate_from=0, entries=entries)])
    finally:
        st.close()


def test_stored_logs_compare_committed_entries(tmp_path):
    cmds = CommandFactory(clock=lambda: 0.0, new_id=lambda: "id")
    e1 = [1, 1, EntryKind.COMMAND, encode_entry("n1", 1, cmds.create(
        {"name": "a", "source": "x"}, key="k1"))]
    e2 = [2, 1, EntryKind.COMMAND, encode_entry("n1", 2, cmds.patch(
        "a", {"replicas": 3}, key="k2"))]
    e2_other = [2, 2, EntryKind.NOOP, b""]
    nodes = []
    for nid, entries, commit in (("a", [e1, e2], 2), ("b", [e1, e2], 2), ("c", [e1, e2_other], 1)):
        data = tmp_path / nid / "data"
        (data / "raft").mkdir(parents=True)
        _log(data / "raft", entries, commit)
        nodes.append(ServerProc(nid, data, 0, 0, []))
    logs, problems = stored_logs(nodes[:2])
    assert problems == [] and logs["a"]["hash"] == logs["b"]["hash"]
    # c differs only beyond its commit index: not a violation
    assert stored_logs([nodes[0], nodes[2]])[1] == []
    # ... but it is when c claims entry 2 committed
    _log(tmp_path / "c" / "data" / "raft", [e2_other], 2)
    problems = stored_logs([nodes[0], nodes[2]])[1]
    assert problems and "entry 2 differs" in problems[0]
