"""An evolvable wire at codec level (`transport.codec`): a peer speaking a newer minor wire
version (extra fields on known messages, message types this node does not know) is understood
as far as this node can, and garbage is still refused.

The cluster-level half (three real nodes, one of them rewritten to speak minor 1) is
tests/integration/test_wire_compat.py.
"""

from __future__ import annotations

import random
from dataclasses import MISSING, fields
from typing import Any

import cbor2
import pytest

import prisn.messages as messages
import transport.codec as codec
from prisn.messages import REGISTRY, WIRE_VERSION, AppendEntries, Msg, VoteRequest, to_map
from transport.codec import (
    DecodeError,
    Decoder,
    UnknownType,
    VersionMismatch,
    decode,
    decode_versioned,
    encode,
)
from transport.faults import UNKNOWN_TYPE, WireRewrite

TYPES = sorted(REGISTRY)
SAMPLE: dict[str, Any] = {"int": 7, "bool": True, "str": "s", "bytes": b"b", "list": [1],
                          "dict": {"k": 1}}
# plain CBOR values a newer peer may put in fields this node does not know
PLAIN_EXTRAS: list[dict[Any, Any]] = [
    {"x_new": 1}, {"x_new": "s"}, {"x_new": b"\x00"}, {"x_new": None}, {"x_new": True},
    {"x_new": 1.5}, {"x_new": [1, [2, {"a": b""}]]}, {"x_new": {"k": {1: [None]}}},
    {"x_a": 1, "x_b": [], "x_c": {}}, {7: "int key"}, {b"k": "bytes key"},
]


def annotation(f: Any) -> str:
    return f.type if isinstance(f.type, str) else f.type.__name__


def sample(cls: type[Msg]) -> Msg:
    return cls(**{f.name: SAMPLE[annotation(f)] for f in fields(cls)})


def newer(msg: Msg, minor: int = 1, **extra: Any) -> bytes:
    """`msg` as a node of the same major and minor `minor` with extra fields would send it."""
    return cbor2.dumps({**to_map(msg), "m": minor, **extra})


# --------------------------------------------------------------------------- the minor version
def test_minor_zero_is_not_written_frames_are_byte_identical() -> None:
    """Today's frames: no "m" key; pinned bytes of one peer message."""
    msg = VoteRequest(src="n1", dst="n2", cluster="c", term=3, last_index=9, last_term=2)
    frame = encode(msg)
    assert "m" not in cbor2.loads(frame)
    assert frame.hex() == (  # pinned: the bytes of a node without minor versions
        "aa617601617469726166742e766f746563737263626e3163647374626e3267636c75737465726163"
        "647465726d036a6c6173745f696e64657809696c6173745f7465726d0263707265f4687472616e73"
        "666572f4")
    assert frame == cbor2.dumps(
        {"v": 1, "t": "raft.vote", "src": "n1", "dst": "n2", "cluster": "c", "term": 3,
         "last_index": 9, "last_term": 2, "pre": False, "transfer": False})
    assert decode_versioned(frame) == (msg, 0)


def test_a_node_with_a_minor_writes_it_and_reads_its_own_frames(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "WIRE_MINOR", 3)
    msg = sample(AppendEntries)
    frame = encode(msg)
    assert cbor2.loads(frame)["m"] == 3
    assert decode_versioned(frame) == (msg, 3)


@pytest.mark.parametrize("minor", [1, 2, 1000, 2**70])
def test_any_minor_of_this_major_is_accepted(minor: int) -> None:
    msg = sample(VoteRequest)
    assert decode_versioned(newer(msg, minor)) == (msg, minor)


@pytest.mark.parametrize("minor", [-1, True, "1", b"1", 1.0, None, [1]])
def test_a_minor_that_is_not_a_natural_number_is_malformed(minor: Any) -> None:
    with pytest.raises(DecodeError, match="minor wire version") as e:
        decode(newer(sample(VoteRequest), minor))
    assert e.value.reason == "malformed"


@pytest.mark.parametrize("major", [0, 2, WIRE_VERSION + 100])
def test_another_major_is_a_version_mismatch_naming_the_sender(major: int) -> None:
    frame = cbor2.dumps({**to_map(sample(VoteRequest)), "v": major, "m": 4, "x_new": 1})
    with pytest.raises(VersionMismatch) as e:
        decode(frame)
    assert (e.value.reason, e.value.src, e.value.version, e.value.minor) == (
        "wire_version", "s", major, 4)


@pytest.mark.parametrize("major", [None, "1", True, 1.0, [1]])
def test_a_major_that_is_not_an_int_is_malformed_not_another_version(major: Any) -> None:
    d = to_map(sample(VoteRequest))
    d.pop("v") if major is None else d.update(v=major)
    with pytest.raises(DecodeError) as e:
        decode(cbor2.dumps(d))
    assert e.value.reason == "malformed"


# --------------------------------------------------------------------------- unknown fields
@pytest.mark.parametrize("type_name", TYPES)
def test_extra_plain_fields_of_a_newer_minor_are_ignored(type_name: str) -> None:
    msg = sample(REGISTRY[type_name])
    for extra in PLAIN_EXTRAS:
        assert decode_versioned(cbor2.dumps({**to_map(msg), "m": 1, **extra})) == (msg, 1)
        assert decode(cbor2.dumps({**to_map(msg), **extra})) == msg  # minor 0 too


@pytest.mark.parametrize("type_name", TYPES)
def test_only_required_fields_plus_extras_decode(type_name: str) -> None:
    """A newer node may drop nothing, but may add: required fields + extras is enough."""
    cls = REGISTRY[type_name]
    full = to_map(sample(cls))
    required = {f.name for f in fields(cls) if f.default is MISSING
                and f.default_factory is MISSING}
    minimal = {k: v for k, v in full.items() if k in ("v", "t") or k in required}
    assert type(decode(cbor2.dumps({**minimal, "m": 1, "x_new": [1]}))) is cls


@pytest.mark.parametrize("bad", [
    cbor2.undefined,  # a simple value, not data
    cbor2.CBORSimpleValue(99),
    [cbor2.CBORSimpleValue(99)],
    {"k": cbor2.undefined},
    {1.5: 1},  # a map key that is not a str/int/bytes
])
def test_extra_fields_that_are_not_plain_data_are_refused(bad: Any) -> None:
    try:
        frame = newer(sample(VoteRequest), 1, x_new=bad)
    except (TypeError, ValueError, cbor2.CBOREncodeError):
        pytest.skip("cbor2 cannot even write this value")
    with pytest.raises(DecodeError) as e:
        decode(frame)
    assert e.value.reason == "malformed"


@pytest.mark.parametrize("tagged", [
    cbor2.CBORTag(0, "2013-03-21T20:04:00Z"),  # datetime
    cbor2.CBORTag(1, 1),  # epoch datetime
    cbor2.CBORTag(4, [-2, 27315]),  # Decimal
    cbor2.CBORTag(258, [1]),  # set
    cbor2.CBORTag(12345, 1),  # unknown tag: the tag hook
    [cbor2.CBORTag(12345, 1)],
])
def test_tagged_values_in_extra_fields_are_refused(tagged: Any) -> None:
    frame = newer(sample(VoteRequest), 1, x_new=tagged)
    with pytest.raises(DecodeError) as e:
        decode(frame)
    assert e.value.reason == "malformed"


def test_extra_fields_nested_too_deep_are_refused() -> None:
    deep: Any = 1
    for _ in range(codec.MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(DecodeError, match="deeper"):
        decode(newer(sample(VoteRequest), 1, x_new=deep))


def test_known_fields_are_still_checked_when_extras_are_present() -> None:
    frame = cbor2.dumps({**to_map(sample(VoteRequest)), "m": 1, "x_new": 1, "term": "3"})
    with pytest.raises(DecodeError, match="raft.vote.term: expected int"):
        decode(frame)


def test_no_message_has_a_field_named_like_an_envelope_key() -> None:
    for cls in REGISTRY.values():
        assert not {"v", "m", "t"} & {f.name for f in fields(cls)}, cls


# --------------------------------------------------------------------------- unknown types
def test_an_unknown_type_is_dropped_and_counted_as_such() -> None:
    dec = Decoder("test")
    frame = cbor2.dumps({"v": WIRE_VERSION, "m": 1, "t": "x.future", "src": "n9", "x": [1]})
    with pytest.raises(UnknownType):
        decode(frame)
    assert dec.try_decode(frame) is None
    assert dec.try_decode_versioned(frame) is None
    assert (dec.dropped, dec.drops) == (2, {"unknown_type": 2})


def test_an_unknown_type_with_garbage_inside_is_malformed() -> None:
    frame = cbor2.dumps({"v": WIRE_VERSION, "t": "x.future", "x": cbor2.undefined})
    with pytest.raises(DecodeError) as e:
        decode(frame)
    assert not isinstance(e.value, UnknownType)


def test_decoder_counts_by_reason() -> None:
    dec = Decoder("test")
    good = encode(sample(VoteRequest))
    frames = [good, b"\xff", newer(sample(VoteRequest), 2, x_new=1),
              cbor2.dumps({**to_map(sample(VoteRequest)), "v": 2}),
              cbor2.dumps({"v": 1, "t": "x.future"})]
    got = [dec.try_decode_versioned(f) for f in frames]
    assert [g[1] if g else None for g in got] == [0, None, 2, None, None]
    assert dec.drops == {"malformed": 1, "wire_version": 1, "unknown_type": 1}
    assert dec.dropped == 3


# --------------------------------------------------------------------------- the test-only rewrite
def test_the_fault_layer_rewrite_makes_newer_frames_this_codec_understands() -> None:
    """The hook the cluster test uses: minor 1, extra fields, an unknown type every 3rd."""
    rw = WireRewrite({"minor": 1, "extra": {"x_new": [1, "a"], "x_map": {"k": None}},
                      "unknown_every": 3})
    rng = random.Random(5)
    dec = Decoder("test")
    for n in range(1, 13):
        msg = sample(REGISTRY[rng.choice(TYPES)])
        out = rw.rewrite(encode(msg), n)
        assert len(out) == (2 if n % 3 == 0 else 1)
        assert out[0] != encode(msg)
        assert decode_versioned(out[0]) == (msg, 1)
        if len(out) == 2:
            assert cbor2.loads(out[1])["t"] == UNKNOWN_TYPE
            assert dec.try_decode(out[1]) is None
    assert dec.drops == {"unknown_type": 4}


def test_the_current_minor_is_zero() -> None:
    """Raising it is a deliberate release step (docs/operations.md, Rolling upgrade)."""
    assert (messages.WIRE_VERSION, messages.WIRE_MINOR) == (1, 0)
    assert codec.WIRE_MINOR == messages.WIRE_MINOR
