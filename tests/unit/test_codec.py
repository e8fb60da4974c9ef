"""The CBOR envelope codec (`transport.codec`): round trips for every registered message type,
garbage never raising anything but `DecodeError`, size cap before parsing, strict envelope and
field checks, CBOR tags, the counting `Decoder`, and no pickle anywhere."""

from __future__ import annotations

import datetime
import logging
import pickle
import random
from dataclasses import MISSING, fields
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import transport.codec as codec
from prisn.messages import (
    REGISTRY,
    WIRE_VERSION,
    Msg,
    Propose,
    Reply,
    StoreAppend,
    Tick,
    to_map,
)
from tests.strategies import STRATEGIES, TYPES, annotation, strategy_for
from transport.codec import DecodeError, Decoder, decode, encode

SETTINGS = settings(derandomize=True, deadline=None, max_examples=40,
                    suppress_health_check=[HealthCheck.too_slow])


# one plain valid value per annotation, and values of the wrong kind for it
SAMPLE: dict[str, Any] = {"int": 7, "bool": True, "str": "s", "bytes": b"b", "list": [1],
                          "dict": {"k": 1}}
WRONG: dict[str, list[Any]] = {
    "int": [True, False, "1", b"1", [1], {"a": 1}, 1.0, None],
    "bool": [1, 0, "true", b"\x01", [True], 1.0, None],
    "str": [b"s", 1, True, ["s"], None],
    "bytes": ["b", 1, [1], True, None],
    "list": ["x", b"x", 1, {"a": 1}, None],
    "dict": [[1], "x", 1, None],
}


def sample(cls: type[Msg]) -> Msg:
    return cls(**{f.name: SAMPLE[annotation(f)] for f in fields(cls)})


def required_fields(cls: type[Msg]) -> list[str]:
    return [f.name for f in fields(cls)
            if f.default is MISSING and f.default_factory is MISSING]


def assert_refused(frame: bytes, match: str | None = None) -> None:
    with pytest.raises(DecodeError, match=match):
        decode(frame)


def assert_only_decode_errors(frame: bytes) -> None:
    """Decoding arbitrary bytes gives a message or a DecodeError, nothing else."""
    try:
        msg = decode(frame)
    except DecodeError:
        return
    assert type(msg) in REGISTRY.values()


# --------------------------------------------------------------------------- round trips
def test_every_annotation_has_a_strategy() -> None:
    for cls in REGISTRY.values():
        for f in fields(cls):
            assert annotation(f) in STRATEGIES, f"{cls.__name__}.{f.name}: {f.type!r}"
            assert annotation(f) in codec.FIELD_KINDS


@pytest.mark.parametrize("type_name", TYPES)
@SETTINGS
@given(data=st.data())
def test_round_trip_every_registered_type(type_name: str, data: st.DataObject) -> None:
    cls = REGISTRY[type_name]
    msg = data.draw(strategy_for(cls))
    frame = encode(msg)
    back = decode(frame)
    assert type(back) is cls and back == msg
    # bool and int fields keep their exact Python type (True must not come back as 1)
    for f in fields(cls):
        assert type(getattr(back, f.name)) is type(getattr(msg, f.name))
    assert encode(back) == frame  # stable


@pytest.mark.parametrize("type_name", TYPES)
def test_optional_fields_may_be_omitted(type_name: str) -> None:
    cls = REGISTRY[type_name]
    full = to_map(sample(cls))
    minimal = {k: v for k, v in full.items()
               if k in ("v", "t") or k in required_fields(cls)}
    msg = decode(cbor2.dumps(minimal))
    assert type(msg) is cls
    for f in fields(cls):
        if f.name not in minimal:
            default = f.default if f.default is not MISSING else f.default_factory()
            assert getattr(msg, f.name) == default


def test_registry_type_names_match_classes() -> None:
    for name, cls in REGISTRY.items():
        assert cls.T == name
        assert decode(encode(sample(cls))).T == name


# --------------------------------------------------------------------------- garbage
@SETTINGS
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_decode_error(frame: bytes) -> None:
    assert_only_decode_errors(frame)


@SETTINGS
@given(st.binary(max_size=64))
def test_random_bytes_after_a_cbor_map_header(tail: bytes) -> None:
    # start like an envelope so the parser gets deeper than the first byte
    assert_only_decode_errors(b"\xa3av\x01at" + tail)


@pytest.mark.parametrize("type_name", TYPES)
def test_every_truncation_of_a_valid_frame_is_refused(type_name: str) -> None:
    frame = encode(sample(REGISTRY[type_name]))
    for n in range(len(frame)):
        assert_refused(frame[:n])


@pytest.mark.parametrize("type_name", TYPES)
def test_mutated_frames_only_raise_decode_error(type_name: str) -> None:
    rng = random.Random(f"mutate-{type_name}")
    frame = encode(sample(REGISTRY[type_name]))
    for _ in range(300):
        b = bytearray(frame)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            pos = rng.randrange(len(b))
            if op < 0.6:
                b[pos] = rng.randrange(256)
            elif op < 0.8:
                del b[pos]
            else:
                b.insert(pos, rng.randrange(256))
        assert_only_decode_errors(bytes(b))


@pytest.mark.parametrize("frame", [
    b"", b"\x00", b"\xff", b"\x1b" + b"\xff" * 8,  # huge uint header, no body
    b"\x5b" + b"\x7f" + b"\xff" * 7,  # byte string claiming 2**63 bytes
    b"\x81" * 100_000 + b"\x00",  # absurdly deep nesting
    b"\xbf" * 50_000,  # indefinite maps, never closed
    cbor2.dumps([1, 2, 3]), cbor2.dumps("text"), cbor2.dumps(None),
])
def test_pathological_frames_are_refused(frame: bytes) -> None:
    assert_refused(frame)


# --------------------------------------------------------------------------- size cap
def test_frame_over_max_bytes_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_decoder = cbor2.CBORDecoder

    def spy(fp: Any, **kw: Any) -> Any:
        calls.append(len(fp.getvalue()))
        return real_decoder(fp, **kw)

    monkeypatch.setattr(codec.cbor2, "CBORDecoder", spy)
    frame = encode(Propose(rid=1, data=b"x" * 100))
    with pytest.raises(DecodeError, match="exceeds"):
        decode(frame, max_bytes=len(frame) - 1)
    assert calls == []  # refused on length alone
    assert decode(frame, max_bytes=len(frame)) == Propose(rid=1, data=b"x" * 100)
    assert calls == [len(frame)]

    d = Decoder("t", max_bytes=16)
    assert d.try_decode(frame) is None and d.dropped == 1
    assert calls == [len(frame)]


def test_default_cap_applies() -> None:
    big = encode(Propose(rid=1, data=b"\0" * codec.DEFAULT_MAX_BYTES))
    assert_refused(big, "exceeds")


# --------------------------------------------------------------------------- envelope checks
def envelope(cls: type[Msg] = Tick, **changes: Any) -> dict[str, Any]:
    d = to_map(sample(cls))
    d.update(changes)
    return d


def test_unknown_type_refused() -> None:
    assert_refused(cbor2.dumps(envelope(t="no.such")), "unknown message type")
    assert_refused(cbor2.dumps(envelope(t=1)), "unknown message type")
    assert_refused(cbor2.dumps(envelope(t=b"sys.tick")), "unknown message type")
    d = envelope()
    del d["t"]
    assert_refused(cbor2.dumps(d), "unknown message type")


@pytest.mark.parametrize("version", [0, 2, WIRE_VERSION + 100, -1, "1", b"\x01", None, [1]])
def test_wrong_version_refused(version: Any) -> None:
    assert_refused(cbor2.dumps(envelope(v=version)), "wire version")


def test_missing_version_refused() -> None:
    d = envelope()
    del d["v"]
    assert_refused(cbor2.dumps(d), "wire version")


@pytest.mark.parametrize("version", [True, 1.0])
def test_version_of_another_type_equal_to_one_refused(version: Any) -> None:
    assert_refused(cbor2.dumps(envelope(v=version)), "wire version")


@pytest.mark.parametrize("type_name", TYPES)
def test_missing_required_field_refused(type_name: str) -> None:
    cls = REGISTRY[type_name]
    for name in required_fields(cls):
        d = envelope(cls)
        del d[name]
        assert_refused(cbor2.dumps(d), f"missing field {name}")


@pytest.mark.parametrize("type_name", TYPES)
def test_unknown_field_ignored(type_name: str) -> None:
    """A newer peer's extra fields are ignored (tests/unit/test_wire_compat.py for more)."""
    cls = REGISTRY[type_name]
    for extra in ({"zz": 1}, {"T": cls.T}, {1: 1}, {"Src": ""}):
        assert decode(cbor2.dumps({**envelope(cls), **extra})) == decode(
            cbor2.dumps(envelope(cls)))


@pytest.mark.parametrize("type_name", TYPES)
def test_wrong_field_type_refused(type_name: str) -> None:
    check_wrong_field_types(REGISTRY[type_name])


def check_wrong_field_types(cls: type[Msg]) -> None:
    for f in fields(cls):
        for bad in WRONG[annotation(f)]:
            frame = cbor2.dumps(envelope(cls, **{f.name: bad}))
            with pytest.raises(DecodeError, match=f"{cls.T}.{f.name}: expected"):
                decode(frame)


def test_bool_and_int_kept_apart_both_ways() -> None:
    # bool where an int is expected
    assert_refused(cbor2.dumps(envelope(Reply, rid=True)), "raft.reply.rid: expected int")
    assert_refused(cbor2.dumps(envelope(Reply, code=False)), "raft.reply.code: expected int")
    # int where a bool is expected
    assert_refused(cbor2.dumps(envelope(Reply, ok=1)), "raft.reply.ok: expected bool")
    assert_refused(cbor2.dumps(envelope(Reply, ok=0)), "raft.reply.ok: expected bool")
    back = decode(cbor2.dumps({"v": 1, "t": "raft.reply", "rid": 0, "ok": False}))
    assert back == Reply(rid=0, ok=False) and back.ok is False  # type: ignore[attr-defined]


def test_companion_a_lax_int_check_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wrong-type check can fail: with int fields that also accept bool it does."""
    spec = codec._spec(Reply)
    lax = tuple((n, (int, bool) if k == (int,) else k, r) for n, k, r in spec)
    monkeypatch.setitem(codec._SPECS, Reply, lax)
    with pytest.raises(pytest.fail.Exception):
        check_wrong_field_types(Reply)


# --------------------------------------------------------------------------- CBOR tags
@pytest.mark.parametrize("tag", [6, 99, 1000, 40000, 2**32 + 5])
def test_unknown_tags_refused(tag: int) -> None:
    frame = cbor2.dumps(envelope(Reply, reason=cbor2.CBORTag(tag, "x")))
    assert_refused(frame)
    frame = cbor2.dumps(cbor2.CBORTag(tag, envelope(Reply)))  # tag around the envelope
    assert_refused(frame)


@pytest.mark.parametrize("cls,field,value", [
    (Reply, "reason", datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC)),  # tag 0
    (Reply, "reason", cbor2.CBORTag(1, 1_700_000_000)),  # epoch datetime
    (Reply, "rid", cbor2.CBORTag(1, 5)),
    (Reply, "reason", cbor2.CBORTag(4, [-1, 15])),  # decimal fraction
    (Reply, "rid", cbor2.CBORTag(30, [1, 3])),  # rational
    (Reply, "reason", cbor2.CBORTag(37, b"\x00" * 16)),  # uuid
    (Propose, "data", cbor2.CBORTag(37, b"\x00" * 16)),
    (StoreAppend, "entries", cbor2.CBORTag(258, [1, 2])),  # set
    (Reply, "reason", cbor2.CBORTag(35, "a+")),  # regexp
])
def test_natively_decoded_tags_fail_the_field_type_check(cls: type[Msg], field: str,
                                                          value: Any) -> None:
    frame = cbor2.dumps(envelope(cls, **{field: value}))
    with pytest.raises(DecodeError):
        decode(frame)


def test_bignum_tag_is_just_an_int() -> None:
    big = 2**80
    frame = cbor2.dumps(envelope(Reply, rid=big))
    assert frame != cbor2.dumps(envelope(Reply, rid=1))
    assert decode(frame).rid == big  # type: ignore[attr-defined]


@pytest.mark.parametrize("entries_cbor", [
    bytes.fromhex("d81c81d81d00"),  # shareable([sharedref(0)]): a list containing itself
    cbor2.dumps([[1, 1, 0, datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)]]),
    cbor2.dumps([cbor2.CBORTag(258, [1])]),
], ids=["self-referencing-list", "datetime-in-entry", "set"])
def test_tags_nested_in_list_fields_refused(entries_cbor: bytes) -> None:
    head = cbor2.dumps({"v": 1, "t": "raft.append", "cluster": "c", "term": 1, "prev_index": 0,
                        "prev_term": 0, "commit": 0})
    # splice `entries` into the map by hand so the raw tag bytes survive
    assert head[0] == 0xA7
    frame = bytes([0xA8]) + head[1:] + cbor2.dumps("entries") + entries_cbor
    assert_refused(frame)


def test_trailing_bytes_after_the_envelope_refused() -> None:
    assert_refused(encode(Tick()) + b"\x00")


# --------------------------------------------------------------------------- Decoder
def test_try_decode_counts_drops_and_returns_none(caplog: pytest.LogCaptureFixture) -> None:
    d = Decoder("unit")
    good = encode(Propose(rid=3, data=b"p"))
    with caplog.at_level(logging.WARNING, logger="prisn.codec"):
        assert d.try_decode(b"\xff\x00garbage") is None
        assert d.try_decode(cbor2.dumps(envelope(t="no.such"))) is None
        assert d.try_decode(good) == Propose(rid=3, data=b"p")
        assert d.try_decode(b"") is None
    assert d.dropped == 3
    warnings = [r for r in caplog.records if r.name == "prisn.codec"]
    assert warnings and "unit" in warnings[0].getMessage()
    assert len(warnings) <= 3  # rate-limited, never more than one per drop


def test_decoders_count_independently() -> None:
    a, b = Decoder("a"), Decoder("b")
    a.try_decode(b"x")
    assert (a.dropped, b.dropped) == (1, 0)


# --------------------------------------------------------------------------- no pickle
class _Boom:
    """Unpickling this calls `_record`: proof that something unpickled it."""

    calls: list[str] = []

    def __reduce__(self) -> Any:
        return (_record, ("unpickled",))


def _record(what: str) -> None:
    _Boom.calls.append(what)


def test_pickle_is_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[str] = []
    for name in ("loads", "load"):
        monkeypatch.setattr(pickle, name, lambda *a, _n=name, **k: used.append(_n))
    monkeypatch.setattr(pickle, "Unpickler", lambda *a, **k: used.append("Unpickler"))
    _Boom.calls.clear()
    payload = pickle.dumps(_Boom(), protocol=pickle.HIGHEST_PROTOCOL)
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        assert_refused(pickle.dumps(_Boom(), protocol=proto))
        assert_refused(pickle.dumps({"v": 1, "t": "sys.tick"}, protocol=proto))
    # a pickle inside a bytes field stays opaque bytes
    msg = decode(encode(Propose(rid=1, data=payload)))
    assert msg == Propose(rid=1, data=payload)
    assert used == [] and _Boom.calls == []
