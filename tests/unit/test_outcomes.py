"""Typed outcomes (issue 13 item 2): consensus and the state machine answer `Outcome`, only
`actors.api.outcomes` knows HTTP, and what reaches a peer or a table is the old code."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

from actors.api.errors import ApiError, Conflict, NotFound, Unavailable, consensus_error, error_body
from actors.api.outcomes import HTTP, error_string, http_status
from prisn.fsm.commands import CommandFactory, encode_entry
from prisn.fsm.deployments import DeploymentStore
from prisn.fsm.results import STORED_LABELS
from prisn.messages import EntryKind, ForwardReadIndex, ForwardResponse, ReadIndex
from prisn.outcomes import INTERNAL_BASE, Outcome
from prisn.raft.core import NOT_LEADER
from tests.raftsim.manual import OPTS, Cluster
from transport.codec import decode, encode

ROOT = Path(__file__).resolve().parents[2]

# outcome -> (its frozen value, HTTP status, error string): what the API answered before
EXPECTED: dict[Outcome, tuple[int, int, str]] = {
    Outcome.OK: (200, 200, "OK"),
    Outcome.CREATED: (201, 201, "Created"),
    Outcome.ACCEPTED: (202, 202, "Accepted"),
    Outcome.DELETED: (204, 204, "No Content"),
    Outcome.INVALID: (400, 400, "Bad Request"),
    Outcome.UNAUTHENTICATED: (401, 401, "Unauthorized"),
    Outcome.FORBIDDEN: (403, 403, "Forbidden"),
    Outcome.NOT_FOUND: (404, 404, "Not Found"),
    Outcome.METHOD_NOT_ALLOWED: (405, 405, "Method Not Allowed"),
    Outcome.CONFLICT: (409, 409, "Conflict"),
    Outcome.TOO_LARGE: (413, 413, "Request Entity Too Large"),
    Outcome.UNSUPPORTED_MEDIA: (415, 415, "Unsupported Media Type"),
    Outcome.MISDIRECTED: (421, 421, "Misdirected Request"),
    Outcome.KEY_REUSED: (422, 422, "Unprocessable Entity"),
    Outcome.RATE_LIMITED: (429, 429, "Too Many Requests"),
    Outcome.INTERNAL_ERROR: (500, 500, "Internal Server Error"),
    Outcome.UNAVAILABLE: (503, 503, "Service Unavailable"),
    Outcome.DISK_ERROR: (507, 507, "Insufficient Storage"),
    Outcome.NOT_LEADER: (1001, 503, "Service Unavailable"),
    Outcome.LEADERSHIP_LOST: (1002, 503, "Service Unavailable"),
    Outcome.OUTCOME_UNKNOWN: (1003, 503, "Service Unavailable"),
    Outcome.NO_LEADER: (1004, 503, "Service Unavailable"),
    Outcome.QUOTA_EXCEEDED: (1005, 507, "Insufficient Storage"),
}


def test_every_outcome_is_in_the_table() -> None:
    assert set(EXPECTED) == set(Outcome) == set(HTTP)


@pytest.mark.parametrize("outcome", list(Outcome), ids=lambda o: o.name)
def test_outcome_maps_to_its_http_status_and_error(outcome: Outcome) -> None:
    value, status, text = EXPECTED[outcome]
    assert int(outcome) == value  # frozen: peers and snapshots hold these numbers
    assert http_status(outcome) == status and type(http_status(outcome)) is int
    assert error_string(outcome) == text == error_string(status)
    assert error_body(outcome, "why") == {"error": text, "message": "why"}


@pytest.mark.parametrize("outcome", list(Outcome), ids=lambda o: o.name)
def test_wire_form(outcome: Outcome) -> None:
    """Internal outcomes leave the node as the code older nodes sent; the others as is."""
    wire = outcome.wire()
    assert wire.value < INTERNAL_BASE and not wire.internal
    assert outcome.internal == (outcome.value >= INTERNAL_BASE)
    if outcome.internal:
        assert wire.value == EXPECTED[outcome][1]  # 503 for consensus, 507 for a quota
    else:
        assert wire is outcome
    assert http_status(wire) == http_status(outcome)  # the API answers the same either way
    assert Outcome.from_wire(int(outcome)) is wire


@pytest.mark.parametrize("code", [0, 1, 100, 299, 418, 999, 1999, -503, 1 << 40])
def test_unknown_codes_read_as_unavailable(code: int) -> None:
    assert Outcome.from_wire(code) is Outcome.UNAVAILABLE
    assert Outcome.parse(code) is Outcome.UNAVAILABLE


def test_local_messages_keep_internal_outcomes() -> None:
    assert Outcome.parse(1001) is Outcome.NOT_LEADER
    assert Outcome.from_wire(1001) is Outcome.UNAVAILABLE


def test_stored_labels_agree_with_the_api() -> None:
    """A remembered failure (dedup table, snapshot) reads as a fresh one."""
    for outcome, label in STORED_LABELS.items():
        assert not outcome.internal
        assert label == error_string(outcome)


# (outcome of a refused consensus request) -> (error class, HTTP status, message if no reason)
CONSENSUS: dict[Outcome, tuple[type[ApiError], int]] = {
    Outcome.NOT_FOUND: (NotFound, 404),
    Outcome.CONFLICT: (Conflict, 409),
    Outcome.DISK_ERROR: (Unavailable, 507),
    Outcome.UNAVAILABLE: (Unavailable, 503),
    Outcome.NOT_LEADER: (Unavailable, 503),
    Outcome.LEADERSHIP_LOST: (Unavailable, 503),
    Outcome.OUTCOME_UNKNOWN: (Unavailable, 503),
    Outcome.NO_LEADER: (Unavailable, 503),
    Outcome.INVALID: (Unavailable, 503),  # as before: only peers' joins get it
}


@pytest.mark.parametrize("outcome", list(CONSENSUS), ids=lambda o: o.name)
def test_consensus_refusals_map_as_before(outcome: Outcome) -> None:
    cls, status = CONSENSUS[outcome]
    err = consensus_error(outcome, "because")
    assert type(err) is cls and err.status == status and err.message == "because"
    if status == 503 and outcome is not Outcome.INVALID:
        assert err.outcome is outcome  # the finer reason stays visible inside the API
    if status == 503:
        assert consensus_error(outcome, "").message == "no quorum available"


# ----------------------------------------------------------------------- consensus wire
def three() -> Cluster:
    c = Cluster(["a", "b", "c"])
    c.settle()
    c.elect("a")
    c.tick("a", OPTS.heartbeat_ticks)
    c.settle()
    c.queue.clear()
    return c


def test_not_leader_goes_to_a_peer_as_the_old_503() -> None:
    c = three()
    core = c.nodes["c"].core
    out = c.step("c", [ForwardReadIndex(src="b", dst="c", cluster=core._cluster,
                                        term=core._term, rid=5)])
    [resp] = [m for m in out if isinstance(m, ForwardResponse)]
    assert (resp.ok, resp.code, resp.reason) == (False, 503, NOT_LEADER)
    assert type(resp.code) is int
    old = ForwardResponse(src=resp.src, dst=resp.dst, cluster=resp.cluster, term=resp.term,
                          rid=5, ok=False, code=503, reason=NOT_LEADER)
    assert encode(resp) == encode(old)  # byte-identical to what older nodes send


@pytest.mark.parametrize("code", [503, 1002, 77])
def test_a_failed_forwarded_read_reaches_the_api_as_unavailable(code: int) -> None:
    """Whatever 5xx-like code a leader sends back (an old node's 503, a newer node's
    internal value by mistake, garbage), the origin's API sees a 503 failure."""
    c = three()
    c.step("b", [ReadIndex(rid=9)])
    [fwd] = [m for m in c.queue if isinstance(m, ForwardReadIndex)]
    c.queue.clear()
    core = c.nodes["b"].core
    c.step("b", [ForwardResponse(src="a", dst="b", cluster=core._cluster, term=core._term,
                                 rid=fwd.rid, ok=False, code=code, reason="leadership lost")])
    [r] = c.nodes["b"].replies
    assert (r.rid, r.ok, r.code) == (9, False, Outcome.UNAVAILABLE)
    assert http_status(Outcome.parse(decode(encode(r)).code)) == 503


def test_local_replies_carry_the_internal_outcome() -> None:
    c = three()
    c.step("a", [ReadIndex(rid=3)])
    for _ in range(2 * OPTS.election_ticks):  # nobody answers: leadership is lost
        c.tick("a")
        c.queue.clear()
    [r] = c.nodes["a"].replies
    assert r.code is Outcome.LEADERSHIP_LOST
    assert Outcome.parse(decode(encode(r)).code) is Outcome.LEADERSHIP_LOST  # local: kept


# ----------------------------------------------------------------------- state machine
def test_state_machine_results_are_outcomes_also_after_a_restore() -> None:
    ids = (f"id{n}" for n in itertools.count(1))
    cf = CommandFactory(clock=lambda: 1_700_000_000.5, new_id=lambda: next(ids))
    store = DeploymentStore()
    cmds = [cf.create({"name": "web", "source": "x"}, key="k1"),
            cf.create({"name": "web", "source": "x"}, key="k2"),
            cf.delete("nope", key="k3")]
    for i, cmd in enumerate(cmds, start=1):
        out = store.apply(i, EntryKind.COMMAND, encode_entry("n1", i, cmd))
        assert out is not None and type(out[0]) is Outcome
    again = DeploymentStore()
    again.restore(store.snapshot())
    for i, cmd in enumerate(cmds, start=4):  # retries: remembered answers from the snapshot
        out = again.apply(i, EntryKind.COMMAND, encode_entry("n1", i, cmd))
        assert out is not None and type(out[0]) is Outcome
        assert out[0] in (Outcome.CREATED, Outcome.CONFLICT, Outcome.NOT_FOUND)


# ----------------------------------------------------------------------- layering
def _sources() -> list[Path]:
    files = sorted([*(ROOT / "prisn" / "raft").glob("*.py"),
                    *(ROOT / "prisn" / "fsm").glob("*.py")])
    assert len(files) >= 8
    return files


@pytest.mark.parametrize("path", _sources(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_consensus_and_state_machine_know_no_http(path: Path) -> None:
    text = path.read_text()
    assert "HTTPStatus" not in text
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not any(a.name.split(".")[0] == "http" for a in node.names), path
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in ("http", "actors", "tornado"), path
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("_reply", "_respond", "failure")):
            # every answer names an Outcome, never a bare number
            codes = [a for a in node.args if isinstance(a, ast.Constant)
                     and type(a.value) is int]
            assert not codes, f"{path.name}:{node.lineno} answers with a bare code"
        elif isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple):
            # no (status, body) or (ok, status, ...) result with a bare HTTP-like number
            for item in node.value.elts[:2]:
                assert not (isinstance(item, ast.Constant) and type(item.value) is int
                            and 100 <= item.value <= 599), f"{path.name}:{node.lineno}"
