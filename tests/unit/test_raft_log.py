"""RaftLog view and quorum math (properties with hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from prisn.raft.log import RaftLog
from prisn.raft.progress import quorum_index, quorum_size

terms_st = st.lists(st.integers(min_value=1, max_value=4), min_size=0, max_size=40).map(sorted)


def build(terms: list[int]) -> RaftLog:
    return RaftLog(0, 0, [[i + 1, t, 0, b""] for i, t in enumerate(terms)])


@given(terms_st, st.integers(min_value=1, max_value=41))
def test_truncate_then_append_stays_contiguous(terms, cut):
    log = build(terms)
    cut = min(cut, log.last_index + 1)
    log.truncate_from(cut)
    assert log.last_index == cut - 1
    log.append([[cut, 9, 0, b"x"]])
    assert [e[0] for e in log.entries()] == list(range(1, cut + 1))


@given(terms_st, terms_st)
def test_backtracking_converges_to_match_point(leader_terms, follower_terms):
    """§5.3 with the hint: repeated (reject_hint, find_le_term) reach an index where both
    logs agree, never overshooting it, in at most one round trip per distinct term."""
    lead, fol = build(leader_terms), build(follower_terms)
    nxt = lead.last_index + 1
    rounds = 0
    while True:
        prev = nxt - 1
        pt = lead.term_at(prev)
        if fol.term_at(prev) == pt:
            break
        hi, ht = fol.reject_hint(prev, pt)
        k = lead.find_le_term(hi, ht)
        assert k < prev
        nxt = k + 1
        rounds += 1
    true_match = max([i for i in range(0, min(lead.last_index, fol.last_index) + 1)
                      if all(lead.term_at(j) == fol.term_at(j) for j in range(1, i + 1))])
    assert prev <= true_match or lead.term_at(prev) == fol.term_at(prev)
    assert rounds <= len(set(leader_terms)) + len(set(follower_terms)) + 1


def test_slice_caps():
    log = RaftLog(0, 0, [[i, 1, 0, b"x" * 100] for i in range(1, 11)])
    assert len(log.slice(1, 10, max_count=3)) == 3
    assert len(log.slice(1, 10, max_bytes=250)) == 2
    assert len(log.slice(1, 10, max_bytes=10)) == 1  # never empty
    assert log.term_at(0) == 0 and log.term_at(11) is None


@given(st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=7))
def test_quorum_index_is_majority_held(matches):
    n = len(matches)
    q = quorum_index(matches, n)
    assert sum(1 for m in matches if m >= q) >= quorum_size(n)
    assert sum(1 for m in matches if m >= q + 1) < quorum_size(n)
