"""The linearizability checker on hand-written register histories (accepts and rejects)."""

from __future__ import annotations

import random

import pytest

from tests.faults.linearizability import READ, WRITE, Op, check, check_key, prune


def w(value, invoke, ret, key="k", client=0):
    return Op(key, WRITE, value, invoke, ret, client=client)


def r(value, invoke, ret, key="k", client=0):
    return Op(key, READ, value, invoke, ret, client=client)


# ------------------------------------------------------------------ accepted histories
def test_empty_and_sequential():
    assert check_key([]).ok is True
    h = [w("a", 0, 1), r("a", 2, 3), w("b", 4, 5), r("b", 6, 7)]
    res = check_key(h, init=None)
    assert res.ok is True
    assert [op.value for op in res.linearization] == ["a", "a", "b", "b"]


def test_read_of_initial_value():
    assert check_key([r("init", 0, 1), w("a", 2, 3), r("a", 4, 5)], init="init").ok is True


def test_concurrent_write_and_reads_either_order():
    # The write overlaps both reads: the first may see the old value, the second the new one.
    h = [w("a", 0, 1), w("b", 2, 10), r("a", 3, 4), r("b", 5, 6)]
    assert check_key(h).ok is True
    # ... and a read that overlaps the write may see the new value early.
    h = [w("a", 0, 1), w("b", 2, 10), r("b", 3, 4), r("b", 5, 6)]
    assert check_key(h).ok is True


def test_concurrent_writes_any_order():
    h = [w("a", 0, 5, client=1), w("b", 1, 6, client=2), r("a", 7, 8), r("a", 9, 10)]
    assert check_key(h).ok is True
    h = [w("a", 0, 5, client=1), w("b", 1, 6, client=2), r("b", 7, 8)]
    assert check_key(h).ok is True


def test_unknown_write_may_take_effect_late():
    # A timed-out write (ret None) may apply at any time after its invoke, even much later.
    h = [w("a", 0, 1), w("x", 2, None), r("a", 3, 4), w("b", 5, 6), r("b", 7, 8), r("x", 9, 10)]
    assert check_key(h).ok is True


def test_unknown_write_may_never_take_effect():
    h = [w("a", 0, 1), w("x", 2, None), r("a", 3, 4), r("a", 50, 51)]
    res = check_key(h)
    assert res.ok is True and res.pruned == 1


def test_unknown_reads_are_ignored():
    h = [w("a", 0, 1), r("zzz", 2, None), r("a", 3, 4)]
    assert check_key(h).ok is True


def test_history_split_by_key():
    h = [w("a", 0, 1, key="x"), w("b", 0, 1, key="y"), r("a", 2, 3, key="x"),
         r("b", 2, 3, key="y")]
    res = check(h)
    assert res.ok is True and set(res.per_key) == {"x", "y"} and res.ops == 4


def test_per_key_initial_values():
    h = [r("i1", 0, 1, key="x"), r("i2", 0, 1, key="y")]
    assert check(h, init={"x": "i1", "y": "i2"}).ok is True
    assert check(h, init="i1").ok is False


# ------------------------------------------------------------------ rejected histories
def test_rejects_stale_read_after_acknowledged_write():
    h = [w("a", 0, 1), w("b", 2, 3), r("a", 4, 5)]
    res = check_key(h)
    assert res.ok is False
    assert "cannot be placed" in res.reason


def test_rejects_stale_read_after_a_read_saw_the_new_value():
    # The write is still in flight, but once one read saw "b", a later read cannot see "a".
    h = [w("a", 0, 1), w("b", 2, 20), r("b", 3, 4), r("a", 5, 6)]
    assert check_key(h).ok is False


def test_rejects_read_of_a_value_never_written():
    res = check_key([w("a", 0, 1), r("ghost", 2, 3)])
    assert res.ok is False
    assert "never written" in res.reason


def test_rejects_read_of_initial_value_after_write_completed():
    assert check_key([w("a", 0, 1), r(None, 2, 3)], init=None).ok is False


def test_rejects_two_reads_in_impossible_order():
    # Writes a then b are sequential; reads, each after the other, see b then a.
    h = [w("a", 0, 1), w("b", 2, 10), r("b", 3, 4), r("a", 5, 6)]
    assert check_key(h).ok is False
    # Concurrent writes: two sequential reads cannot see b, then a, then b again.
    h = [w("a", 0, 10, client=1), w("b", 0, 10, client=2),
         r("b", 1, 2), r("a", 3, 4), r("b", 5, 6)]
    assert check_key(h).ok is False


def test_rejects_unknown_write_observed_before_its_invoke():
    h = [w("a", 0, 1), r("x", 2, 3), w("x", 4, None)]
    assert check_key(h).ok is False


def test_rejects_lost_acknowledged_write_after_unknown_one():
    # x (unknown) may apply late, but b was acknowledged after x was seen: a final read of x
    # would need x to apply twice.
    h = [w("x", 0, None), r("x", 1, 2), w("b", 3, 4), r("x", 5, 6)]
    assert check_key(h).ok is False


def test_rejects_in_one_key_only():
    h = [w("a", 0, 1, key="good"), r("a", 2, 3, key="good"),
         w("a", 0, 1, key="bad"), w("b", 2, 3, key="bad"), r("a", 4, 5, key="bad")]
    res = check(h)
    assert res.ok is False
    assert [v.key for v in res.violations()] == ["bad"]
    assert "NOT LINEARIZABLE" in res.summary()


# ------------------------------------------------------------------ mechanics
def test_prune_keeps_observed_unknown_writes():
    h = [w("a", 0, None), w("b", 0, None), r("b", 1, 2), r("q", 3, None)]
    kept, pruned = prune(h)
    assert [op.value for op in kept] == ["b", "b"] and pruned == 1


def test_op_validation():
    with pytest.raises(ValueError):
        Op("k", "cas", 1, 0, 1)
    with pytest.raises(ValueError):
        Op("k", READ, 1, 5, 1)


def test_budget_exhaustion_is_undecided():
    h = [w(i, 0, 100, client=i) for i in range(12)] + [r(99, 200, 201)]
    res = check_key(h, budget=50)
    assert res.ok is None and "budget" in res.reason


def _random_linearizable(rng: random.Random, n_clients: int, n_ops: int) -> list[Op]:
    """A history generated from a real register with random latencies: always linearizable."""
    ops = []
    value = "init"
    t = 0.0
    clock = []
    for i in range(n_ops):
        t += rng.random()
        lin = t
        if rng.random() < 0.5:
            value = f"v{i}"
            kind, v = WRITE, value
        else:
            kind, v = READ, value
        invoke = lin - rng.random() * 3
        ret = lin + rng.random() * 3
        if kind == WRITE and rng.random() < 0.1:
            ret = None
        clock.append((invoke, ret, kind, v, i % n_clients))
    for invoke, ret, kind, v, c in clock:
        ops.append(Op("k", kind, v, invoke, ret, client=c))
    return ops


@pytest.mark.parametrize("seed", range(20))
def test_random_linearizable_histories_accepted(seed):
    rng = random.Random(seed)
    h = _random_linearizable(rng, 5, 120)
    res = check_key(h, init="init")
    assert res.ok is True, (seed, res.reason)


@pytest.mark.parametrize("seed", range(20))
def test_random_histories_with_a_stale_read_rejected(seed):
    rng = random.Random(1000 + seed)
    h = _random_linearizable(rng, 5, 80)
    # Append, strictly after everything, two writes then a read of the first: stale.
    end = max(max(op.invoke, op.ret or 0) for op in h) + 1
    h += [w("late1", end, end + 1), w("late2", end + 2, end + 3), r("late1", end + 4, end + 5)]
    assert check_key(h, init="init").ok is False
