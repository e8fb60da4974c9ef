"""Table-driven tests of the peer-input checks (`prisn.raft.validate`): each malformed
shape is named, each well-formed one passes ("")."""

from __future__ import annotations

import pytest

from prisn.messages import AppendEntries, EntryKind, InstallSnapshot
from prisn.raft.boot import Membership
from prisn.raft.membership import encode_config
from prisn.raft.validate import MAX_SNAPSHOT_SIZE, append_problem, install_problem

CMD, CONF, NOOP = int(EntryKind.COMMAND), int(EntryKind.CONFIG), int(EntryKind.NOOP)
GOOD_CONF = encode_config(Membership(cluster="c1", voters={"a": "A"}))


def ae(entries: list, prev_index: int = 4, prev_term: int = 2, term: int = 3,
       commit: int = 0) -> AppendEntries:
    return AppendEntries(src="l", dst="f", cluster="c1", term=term, prev_index=prev_index,
                         prev_term=prev_term, entries=entries, commit=commit)


@pytest.mark.parametrize("msg,problem", [
    (ae([]), ""),                                                   # a heartbeat
    (ae([[5, 2, CMD, b"x"], [6, 3, NOOP, b""]]), ""),               # terms may grow
    (ae([[5, 3, CONF, GOOD_CONF]]), ""),
    (ae([], prev_index=-1), "negative index"),
    (ae([], prev_term=4), "prev_term above"),
    (ae([], commit=-1), "negative index"),
    (ae([(5, 2, CMD, b"x")]), "is not [index, term, kind, data]"),  # a tuple, not a list
    (ae([[5, 2, CMD]]), "is not [index, term, kind, data]"),
    (ae([[6, 2, CMD, b"x"]]), "must be contiguous"),
    (ae([[5, 2, CMD, b"x"], [7, 2, CMD, b"y"]]), "entry 6 has index 7"),
    (ae([[True, 2, CMD, b"x"]]), "must be contiguous"),             # a bool is no index
    (ae([[5, 1, CMD, b"x"]]), "terms never decrease"),              # below prev_term
    (ae([[5, 3, CMD, b"x"], [6, 2, CMD, b"y"]]), "terms never decrease"),
    (ae([[5, 4, CMD, b"x"]]), "exceed the message's term 3"),
    (ae([[5, 2, 99, b"x"]]), "unknown kind"),
    (ae([[5, 2, CMD, "x"]]), "data is str"),
    (ae([[5, 2, CONF, b"\xa0"]]), "invalid configuration"),         # an empty map
])
def test_append_problem(msg: AppendEntries, problem: str) -> None:
    got = append_problem(msg)
    assert (got == "") if not problem else (problem in got), got


def snap(**kw) -> InstallSnapshot:
    base = dict(src="l", dst="f", cluster="c1", term=3, index=10, snap_term=2,
                snap_id="ab" * 32, size=100, offset=0, data=b"x" * 10)
    base.update(kw)
    return InstallSnapshot(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("msg,problem", [
    (snap(), ""),
    (snap(offset=90), ""),                                  # the last chunk
    (snap(size=MAX_SNAPSHOT_SIZE), ""),
    (snap(snap_id="AB" * 32), "bad snapshot id"),           # lowercase only
    (snap(snap_id="ab" * 31), "bad snapshot id"),
    (snap(index=0), "bad snapshot index"),
    (snap(snap_term=4), "bad snapshot index"),              # above the message's term
    (snap(snap_term=-1), "bad snapshot index"),
    (snap(size=0), "outside 1.."),
    (snap(size=MAX_SNAPSHOT_SIZE + 1), "outside 1.."),
    (snap(offset=-1), "is outside the snapshot"),
    (snap(offset=91), "is outside the snapshot"),           # past the end
])
def test_install_problem(msg: InstallSnapshot, problem: str) -> None:
    got = install_problem(msg)
    assert (got == "") if not problem else (problem in got), got
