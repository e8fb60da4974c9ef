"""Hypothesis strategies and fuzz settings shared by the codec, decoder and HTTP fuzz tests:
a strategy for every registered message type, weird CBOR values and map mutations. Test
modules import them from here, never from each other."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import cbor2
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st

from prisn.messages import REGISTRY, Msg

TYPES = sorted(REGISTRY)


# --------------------------------------------------------------------------- strategies
# Values that may sit inside a list/dict field: anything the CBOR codec round-trips exactly
# (no floats: NaN != NaN).
_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.binary(max_size=8)


_nested = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=4),
    max_leaves=12,
)


# annotation -> strategy; a new annotation in prisn.messages must be added here (test below)
STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "int": st.integers(),  # unbounded: big values travel as CBOR bignums (tags 2/3)
    "bool": st.booleans(),
    "str": st.text(max_size=20),
    "bytes": st.binary(max_size=64),
    "list": st.lists(_nested, max_size=5),
    "dict": st.dictionaries(st.text(max_size=6), _nested, max_size=5),
}


def annotation(f: Any) -> str:
    return f.type if isinstance(f.type, str) else f.type.__name__


def strategy_for(cls: type[Msg]) -> st.SearchStrategy[Msg]:
    return st.builds(cls, **{f.name: STRATEGIES[annotation(f)] for f in fields(cls)})


# ---------------------------------------------------------------------- settings
_LONG = int(os.environ.get("PRISN_FUZZ_EXAMPLES", "0") or 0)


FUZZ_SEED = int(os.environ.get("PRISN_FUZZ_SEED", "0") or 0) or random.SystemRandom().randrange(
    1, 2**32)


def fuzz(ci_examples: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Hypothesis settings for one fuzz test: derandomized with `ci_examples` examples in
    CI; with PRISN_FUZZ_EXAMPLES set, that many examples from the seed FUZZ_SEED."""
    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        common: dict[str, Any] = dict(deadline=None, database=None, print_blob=True,
                                      suppress_health_check=list(HealthCheck),
                                      phases=[p for p in Phase if p is not Phase.explain])
        if _LONG:
            return seed(FUZZ_SEED)(settings(max_examples=_LONG, derandomize=False,
                                            **common)(f))
        return settings(max_examples=ci_examples, derandomize=True, **common)(f)
    return wrap


# ---------------------------------------------------------------------- mutations
class _Weird:
    """CBOR values a well-behaved encoder never sends where we expect plain data."""

    VALUES: list[Any] = [
        None, True, False, 0, -1, 1, 2**63, -(2**64), 2**200, 1.5, -0.0, math.inf, -math.inf,
        math.nan, "", "x" * 300, "\udcff" * 0 + "é", b"", b"\x00" * 40, [], {}, [[[[[]]]]],
        {"a": {"b": {"c": {}}}}, {1: 2}, {b"k": 1}, [None] * 20, cbor2.CBORTag(1, 0),
        cbor2.CBORTag(0, "2020-01-01T00:00:00Z"), cbor2.CBORTag(258, [1, 2]),
        cbor2.CBORTag(12345, b"x"), cbor2.CBORSimpleValue(99), cbor2.undefined,
    ]


weird = st.sampled_from(range(len(_Weird.VALUES))).map(_Weird.VALUES.__getitem__) | st.integers() | st.text(max_size=10) | st.binary(
    max_size=10) | st.floats() | st.recursive(
    st.none() | st.integers(-3, 3) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=3) | st.integers(-2, 2), inner, max_size=3), max_leaves=10)


@st.composite
def mutate_map(draw: st.DrawFn, m: dict[Any, Any]) -> dict[Any, Any]:
    """A structure-aware mutation of a decoded CBOR map: replace, drop or add entries, with
    values of any type (type swaps), possibly several times."""
    m = dict(m)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["swap", "drop", "add", "swap", "nest"]))
        keys = list(m)
        if op == "swap" and keys:
            m[draw(st.sampled_from(keys))] = draw(weird)
        elif op == "drop" and keys:
            del m[draw(st.sampled_from(keys))]
        elif op == "nest" and keys:
            k = draw(st.sampled_from(keys))
            m[k] = [m[k]] if draw(st.booleans()) else {"x": m[k]}
        else:
            m[draw(st.text(max_size=6) | st.integers() | st.binary(max_size=3))] = draw(weird)
    return m
